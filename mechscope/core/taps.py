"""Taps: how to reach one site's tensor inside a module tree with PyTorch hooks.

An adapter maps each Site to a Tap; `run` installs one *handler* per tap for the duration of a
call. A handler sees the site's tensor in the site's layout and returns it (unchanged, or a new
tensor when the site has interventions). Taps only know modules and tensors, never
architectures; adapters compose them declaratively.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class Handler:
    """The per-run callback for one site. `modifies` is False for pure capture."""

    __slots__ = ("fn", "modifies")

    def __init__(self, fn: Callable[[Tensor], Tensor], modifies: bool):
        self.fn = fn
        self.modifies = modifies

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


class Tap(ABC):
    """Where a site's tensor appears; `install` attaches a handler and returns removable handles."""

    @abstractmethod
    def install(self, handler: Handler) -> list[RemovableHandle]: ...


def _split(x: Tensor, heads: int | None) -> Tensor:
    # (batch, pos, head*d_head) -> (batch, pos, head, d_head)
    return x if heads is None else x.unflatten(-1, (heads, -1))


def _merge(x: Tensor, heads: int | None) -> Tensor:
    # (batch, pos, head, d_head) -> (batch, pos, head*d_head)
    return x if heads is None else x.flatten(-2)


@dataclass(frozen=True, eq=False)
class ModuleOutput(Tap):
    """The module's output, or element `index` of a tuple output; `heads` splits the last axis.

    `copy=True` hands the rest of the forward pass a copy, for modules whose callers may modify
    the output in place (`ReLU(inplace=True)`, `out += identity`): what was captured, or the
    value an intervention wrote, then stays as it was.
    """

    module: nn.Module
    index: int | None = None
    heads: int | None = None
    copy: bool = False

    def install(self, handler: Handler) -> list[RemovableHandle]:
        index, heads, copy = self.index, self.heads, self.copy

        def hook(_mod: nn.Module, _args: tuple, out):
            x = out if index is None else out[index]
            y = handler(_split(x, heads))
            if not handler.modifies and not copy:
                return None
            y = _merge(y, heads)
            if copy:
                y = y.clone()
            if index is None:
                return y
            out = list(out) if isinstance(out, tuple) else out
            out[index] = y
            return tuple(out) if isinstance(out, list) else out

        return [self.module.register_forward_hook(hook)]


@dataclass(frozen=True, eq=False)
class ModuleInput(Tap):
    """The module's first tensor input (positional `index` or keyword `kwarg`).

    `inplace=True` writes interventions into the input tensor itself. Use it where the module's
    caller keeps using the same tensor afterwards (a residual stream read by a layer norm and
    then added back), so the change reaches every reader, as it would in the forward pass.
    """

    module: nn.Module
    index: int = 0
    kwarg: str | None = None
    heads: int | None = None
    inplace: bool = False

    def install(self, handler: Handler) -> list[RemovableHandle]:
        tap = self

        def hook(_mod: nn.Module, args: tuple, kwargs: dict):
            in_args = len(args) > tap.index
            x = args[tap.index] if in_args else kwargs[tap.kwarg]
            y = handler(_split(x, tap.heads))
            if not handler.modifies:
                return None
            y = _merge(y, tap.heads)
            if tap.inplace:
                x.copy_(y)
                return None
            if in_args:
                args = args[: tap.index] + (y,) + args[tap.index + 1:]
            else:
                kwargs = {**kwargs, tap.kwarg: y}
            return args, kwargs

        return [self.module.register_forward_pre_hook(hook, with_kwargs=True)]


@dataclass(frozen=True, eq=False)
class HeadResult(Tap):
    """Each head's contribution to an output projection: result[h] = z[h] @ W_O[h].

    `module` is the output projection (its input is z flattened over heads). When the site has
    interventions, the projection's output is rebuilt as the sum over heads plus `bias()`.
    `w_o()` returns (head, d_head, d_model).
    """

    module: nn.Module
    heads: int
    w_o: Callable[[], Tensor]
    bias: Callable[[], Tensor | None]

    def install(self, handler: Handler) -> list[RemovableHandle]:
        saved: dict[str, Tensor] = {}

        def pre(_mod: nn.Module, args: tuple):
            saved["z"] = args[0]

        def post(_mod: nn.Module, _args: tuple, out: Tensor):
            z = _split(saved.pop("z"), self.heads)  # (batch, pos, head, d_head)
            w = self.w_o().to(z.dtype)  # (head, d_head, d_model)
            result = torch.einsum("bphd,hdm->bphm", z, w)  # (batch, pos, head, d_model)
            y = handler(result)
            if not handler.modifies and not y.requires_grad:
                return None
            b = self.bias()
            total = y.sum(-2)
            total = total if b is None else total + b
            if not handler.modifies:
                # Pure capture with gradients on: route the output's graph through the per-head
                # results, or their gradients would be zero. `total - total.detach()` is exactly 0,
                # so the value stays the module's own bit for bit; gradients flow only this way.
                return out.detach() + (total - total.detach())
            return total

        return [self.module.register_forward_pre_hook(pre), self.module.register_forward_hook(post)]
