"""ModelBase: what every adapter offers on top of the protocol (run, site checks, summaries)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from ..core.interventions import Intervention
from ..core.run import RunResult, resolve, run
from ..core.site import Site


class ModelBase:
    """Shared behaviour of adapters. Subclasses set `module`, `name` and implement the protocol."""

    module: nn.Module
    name: str

    def sites(self) -> list[Site]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def n_heads_at(self, site: Site) -> int | None:
        return None

    def check(self, site: Site | str) -> Site:
        """The Site for `site` if this model has it; otherwise a SiteError naming the nearest ones."""
        return resolve(self, site)

    def run(self, inputs: Any, capture: Iterable[Site | str] | Site | str = (),
            interventions: Sequence[Intervention] | Intervention = (),
            grad: Callable[[Any], Tensor] | None = None, track_grad: bool = False) -> RunResult:
        """`mechscope.run` on this model (see `mechscope.core.run.run`)."""
        return run(self, inputs, capture=capture, interventions=interventions, grad=grad,
                   track_grad=track_grad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {len(self.sites())} sites)"

