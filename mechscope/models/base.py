"""ModelBase: what every adapter offers on top of the protocol (run, site checks, summaries)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from torch import Tensor, nn

from ..core.interventions import Intervention
from ..core.run import RunResult, resolve, run
from ..core.site import Site


@contextmanager
def without_first_blocks(parent: nn.Module, attr: str, layer: int):
    """Temporarily replace the ModuleList `parent.attr` by its blocks from `layer` on.

    The blocks keep their identity (hooks and taps on them still fire); only the loop over them
    is shortened, so the caller must supply the residual stream entering block `layer`.
    """
    blocks = getattr(parent, attr)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"cannot start at block {layer}: the model has blocks 0..{len(blocks) - 1}")
    setattr(parent, attr, nn.ModuleList(list(blocks)[layer:]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks)


class ModelBase:
    """Shared behaviour of adapters. Subclasses set `module`, `name` and implement the protocol."""

    module: nn.Module
    name: str

    def sites(self) -> list[Site]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def n_heads_at(self, site: Site) -> int | None:
        return None

    def start_at(self, layer: int) -> AbstractContextManager | None:
        """Skipping blocks needs to know where they are; adapters that do override this."""
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

