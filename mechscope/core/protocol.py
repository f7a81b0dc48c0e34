"""The adapter protocol: what core needs from a model, and nothing about any architecture."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from .site import Site
from .taps import Tap


@dataclass
class Prepared:
    """Inputs ready for the module: call `module(*args, **kwargs)`.

    `input_ids` (batch, pos) and `attention_mask` are kept for interventions and metrics when the
    model reads tokens; both are None for models of other inputs (images, vectors).
    """

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_ids: Tensor | None = None
    attention_mask: Tensor | None = None
    # The caller reads only the last position's logits (a sweep's metric): an adapter may skip the
    # unembedding of every other position and any key/value cache.
    last_logits_only: bool = False
    # ... and of those only these vocabulary columns (token ids): an adapter may compute just them
    # and leave every other logit NaN. Set only together with `last_logits_only`.
    logit_columns: Tensor | None = None

    @property
    def batch_size(self) -> int:
        if self.input_ids is not None:
            return int(self.input_ids.shape[0])
        first = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return int(first.shape[0])


@runtime_checkable
class Adapter(Protocol):
    """How one model exposes its sites. Adapters live in `mechscope.models`."""

    module: nn.Module

    def sites(self) -> list[Site]:
        """Every valid whole site (no head restriction), in forward order."""
        ...

    def tap(self, site: Site) -> Tap:
        """The tap for a whole site; raises SiteError (with nearest names) for unknown sites."""
        ...

    def prepare(self, inputs: Any) -> Prepared: ...

    def forward(self, prepared: Prepared) -> Any: ...

    def logits(self, output: Any) -> Tensor | None: ...

    def session(self, sites: set[Site]) -> AbstractContextManager:
        """Context entered around a run that touches `sites` (e.g. to expose attention internals)."""
        ...

    def grad_entry(self) -> Tap | None:
        """A tap early in the forward pass where gradients can be switched on for frozen models."""
        ...

    def n_heads_at(self, site: Site) -> int | None:
        """Number of heads on a per-head site (key/value heads for k and v), else None."""
        ...

    def start_at(self, layer: int) -> AbstractContextManager | None:
        """A context in which the forward pass skips blocks 0..layer-1 (the caller then sets
        resid_pre of `layer` with an intervention), or None if the adapter cannot skip blocks."""
        ...
