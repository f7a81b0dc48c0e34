"""The adapter protocol: what core needs from a model, and nothing about any architecture."""

from __future__ import annotations

from collections.abc import Iterable
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

    Example::

        model = ms.load("smollm2-135m")
        prepared = model.prepare(model.to_tokens(["hello"]))
        prepared.input_ids                       # (batch, pos)
        model.forward(prepared)
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
    # A run cut to a window of positions (`Adapter.window`): after it, the keys and values it has
    # (read and) stored, in the adapter's own form, for a later window to read.
    past: Any = None

    @property
    def batch_size(self) -> int:
        """The number of rows of the inputs."""
        if self.input_ids is not None:
            return int(self.input_ids.shape[0])
        first = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return int(first.shape[0])


@dataclass(frozen=True, eq=False)
class Window:
    """Positions start..stop-1 of some inputs, run on their own (`Adapter.window`).

    In a causal model, position i depends on positions <= i only, through the keys and values
    attention reads. A window reads those of positions 0..start-1 from `past` (an earlier run's
    `Prepared.past`; row i of this run reads row `rows[i]` of it, all rows when None) and
    computes only its own positions: where the earlier run's earlier positions are what this
    run would have computed, the result is the same as one pass over every position.

    Example::

        from mechscope.core import Window
        Window(start=5)                          # positions 5.. of the inputs, run on their own
        Window(start=5, past=first.past, rows=torch.tensor([0, 0]))   # rows (batch,): the past's row per row
    """

    start: int = 0
    stop: int | None = None  # None: to the last position
    past: Any = None  # needed when start > 0
    rows: Tensor | None = None
    keep: bool = False  # keep this run's keys and values in `Prepared.past`
    # end the forward pass once the final block has stored its keys and values (implies keep):
    # the output has no logits, and nothing after those keys is computed
    keys_only: bool = False


@runtime_checkable
class Adapter(Protocol):
    """How one model exposes its sites. Adapters live in `mechscope.models`.

    Example::

        model = ms.load("zoo:induction-quick")   # every adapter satisfies this protocol
        isinstance(model, mechscope.core.Adapter)
        model.sites()[:3]                        # the Sites it exposes
    """

    module: nn.Module

    def sites(self) -> list[Site]:
        """Every valid whole site (no head restriction), in forward order."""
        ...

    def tap(self, site: Site) -> Tap:
        """The tap for a whole site; raises SiteError (with nearest names) for unknown sites."""
        ...

    def prepare(self, inputs: Any) -> Prepared:
        """Turn inputs (token ids, a dict of model inputs, text, ...) into the model's `Prepared` call."""
        ...

    def forward(self, prepared: Prepared) -> Any:
        """Run the model on `prepared` (the hooks `run` installed act during this call)."""
        ...

    def logits(self, output: Any) -> Tensor | None:
        """The logits (batch, pos, vocab) in the model's output, or None when it has none."""
        ...

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

    def window(self, prepared: Prepared, window: Window, sites: Iterable[Site]) -> Prepared | None:
        """`prepared` cut to the positions `window` names, as a run that reads the keys and values
        of earlier positions from an earlier run (see `Window`), or None if the adapter cannot
        (no key/value cache, an encoder, padding, or `sites` that are not computed position by
        position). The caller gives the run its positions' slice of every intervention, on
        `sites` only."""
        ...
