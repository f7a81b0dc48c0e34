"""Counting the forward and backward passes a method runs, as they run.

Every forward pass of a model goes through `forward_pass` (`run` calls it for each call of the
adapter's forward, also a call that stops partway), and every backward pass through `backward`
(`run` calls it for the gradients it returns; a method that differentiates on its own calls it
too). Each adds one to every counter open at that moment, so a method wraps its work in
`counting_passes()` and reports what the counter saw instead of a formula of what it should
have cost. Counters nest (a method inside another counts into both) and belong to the current
thread or task.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .protocol import Adapter, Prepared


@dataclass
class PassCount:
    """Forward and backward passes seen while the counter was open.

    Example::

        with mechscope.core.counting_passes() as count:
            ms.run(model, tokens)
        count.forward, count.how()               # 1, {"forward_passes": 1, "backward_passes": 0}
    """

    forward: int = 0
    backward: int = 0

    def how(self) -> dict[str, int]:
        """The counts as a result's `how` records them."""
        return {"forward_passes": self.forward, "backward_passes": self.backward}


_OPEN: ContextVar[tuple[PassCount, ...]] = ContextVar("mechscope_pass_counters", default=())


@contextmanager
def counting_passes() -> Iterator[PassCount]:
    """Count the passes run inside the block.

    Example::

        from mechscope.core import counting_passes
        with counting_passes() as count:
            ms.run(model, tokens)
        count.forward                            # 1
    """
    count = PassCount()
    token = _OPEN.set((*_OPEN.get(), count))
    try:
        yield count
    finally:
        _OPEN.reset(token)


def forward_pass(adapter: Adapter, prepared: Prepared) -> Any:
    """`adapter.forward(prepared)`, counted (before it runs: a pass that stops partway counts)."""
    for count in _OPEN.get():
        count.forward += 1
    return adapter.forward(prepared)


def backward(output: Tensor, inputs: Sequence[Tensor], **kwargs: Any) -> tuple[Tensor | None, ...]:
    """`torch.autograd.grad(output, inputs, **kwargs)`, counted as one backward pass."""
    for count in _OPEN.get():
        count.backward += 1
    return torch.autograd.grad(output, list(inputs), **kwargs)
