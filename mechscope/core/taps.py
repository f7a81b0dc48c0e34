"""Taps: how to reach one site's tensor inside a module tree with PyTorch hooks.

An adapter maps each Site to a Tap; `run` installs one *handler* per tap for the duration of a
call. A handler sees the site's tensor in the site's layout and returns it (unchanged, or a new
tensor when the site has interventions). Taps only know modules and tensors, never
architectures; adapters compose them declaratively.

A handler belongs to the run that installed it and acts only while that run's forward pass is
the innermost one (`running`): a run started from inside another (a `Replace` function that runs
the model again) sees only its own captures and interventions, and the outer run's stay as they
were.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


# the run whose forward pass is in progress (the innermost one when runs nest)
_CURRENT: ContextVar[object | None] = ContextVar("mechscope_current_run", default=None)


@contextmanager
def running(owner: object) -> Iterator[None]:
    """Make `owner`'s handlers the live ones for the duration of a forward pass."""
    token = _CURRENT.set(owner)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class Handler:
    """The per-run callback for one site. `modifies` is False for pure capture. `owner` is the run
    it belongs to: the handler is live only inside `running(owner)` (None: always live)."""

    __slots__ = ("fn", "modifies", "owner")

    def __init__(self, fn: Callable[[Tensor], Tensor], modifies: bool, owner: object | None = None):
        self.fn = fn
        self.modifies = modifies
        self.owner = owner

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    @property
    def live(self) -> bool:
        """Whether the forward pass in progress is this handler's run's own (not a nested one)."""
        return self.owner is None or _CURRENT.get() is self.owner


class Tap(ABC):
    """Where a site's tensor appears; `install` attaches a handler and returns removable handles."""

    @abstractmethod
    def install(self, handler: Handler) -> list[RemovableHandle]:
        """Attach `handler` where the site's tensor appears; returns the handles that remove it."""


class _ValueOf(torch.autograd.Function):
    """`value`'s numbers, with the gradient sent to `route` (same shape) as if it were the output.

    A pure capture uses it to route gradients through a recomputation (per-head results, per-head
    inputs) while the forward pass keeps the module's own values bit for bit. Written as
    `value + (route - route.detach())` it would give NaN wherever `route` is not finite (inf - inf
    after an overflow), in the output and in every gradient.
    """

    @staticmethod
    def forward(ctx, value: Tensor, route: Tensor, copy: bool) -> Tensor:
        return value.clone() if copy else value.view_as(value)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        return None, grad, None


def value_of(value: Tensor, route: Tensor, copy: bool = True) -> Tensor:
    """`value` (detached), differentiable as `route`: see `_ValueOf`. A copy unless `copy=False`
    (a view keeps `value`'s memory layout, but the caller must then never modify it in place)."""
    return _ValueOf.apply(value.detach(), route, copy)


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
        """Hook the module's output for `handler` (a forward hook); returns its handle."""
        index, heads, copy = self.index, self.heads, self.copy

        def hook(_mod: nn.Module, _args: tuple, out):
            if not handler.live:
                return None
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
    `branch=True` is the opposite: the module alone reads the site, as its own branch of the
    tensor (a view of it), so a gradient there is the module's share only (an MLP's input, not
    the residual stream it is read from).
    """

    module: nn.Module
    index: int = 0
    kwarg: str | None = None
    heads: int | None = None
    inplace: bool = False
    branch: bool = False

    def install(self, handler: Handler) -> list[RemovableHandle]:
        """Hook the module's input for `handler` (a forward pre-hook); returns its handle."""
        tap = self

        def hook(_mod: nn.Module, args: tuple, kwargs: dict):
            if not handler.live:
                return None
            in_args = len(args) > tap.index
            x = args[tap.index] if in_args else kwargs[tap.kwarg]
            if tap.branch and x.requires_grad:
                x = x.view_as(x)  # its own autograd node: gradients at it flow through this module only
            y = handler(_split(x, tap.heads))
            if not handler.modifies and not (tap.branch and y.requires_grad):
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
        """Hook the output projection for `handler`: keep its input z, hand the per-head results over; returns
        both handles."""
        saved: dict[str, Tensor] = {}

        def pre(_mod: nn.Module, args: tuple):
            if handler.live:
                saved["z"] = args[0]

        def post(_mod: nn.Module, _args: tuple, out: Tensor):
            if not handler.live:
                return None
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
                # results, or their gradients would be zero. The value stays the module's own bit
                # for bit (even where the per-head sum overflows); gradients flow only this way.
                return value_of(out, total)
            return total

        return [self.module.register_forward_pre_hook(pre), self.module.register_forward_hook(post)]


@dataclass(frozen=True, eq=False)
class HeadInput(Tap):
    """Each query head's own residual input to its queries, keys or values: (batch, pos, head, d_model).

    Left alone, every head reads the residual that `reader` receives (the pre-attention norm, or
    the attention module itself when there is no norm), and nothing is recomputed. When a handler
    gives some heads a different input, exactly those heads' projections are recomputed as
    `norm(input_h) @ W[h] + b[h]` (`weight()` returns W (head, d_model, d_head) and b (head,
    d_head) or None, one per *query* head) and written into the columns of `proj`'s output that
    hold them, so everything after the projection (rotary embeddings, the attention itself) is
    the model's own. `column(h)` is the first column of output head h.

    Under grouped-query attention (`out_heads` < `heads`, keys and values) a changed head needs
    keys of its own: the projection's output is then widened to one head per query head (each
    key/value head repeated), which needs an attention function that infers the grouping from
    shapes (mechscope's own does).

    With gradients on, every head is recomputed so that gradients reach each head's input; heads
    whose input did not change keep the module's values bit for bit (`value_of(orig, new)`: the
    module's numbers, differentiable as the recomputation), as `HeadResult` does.
    """

    reader: nn.Module
    norm: Callable[[Tensor], Tensor] | None
    proj: nn.Module
    heads: int
    out_heads: int
    d_head: int
    column: Callable[[int], int]
    weight: Callable[[], tuple[Tensor, Tensor | None]]

    def install(self, handler: Handler) -> list[RemovableHandle]:
        """Hook `reader`'s input and `proj`'s output for `handler`; returns both handles."""
        state: dict[str, tuple] = {}
        tap = self

        def pre(_mod: nn.Module, args: tuple, kwargs: dict):
            if not handler.live:
                return None
            x = args[0] if args else kwargs["hidden_states"]  # (batch, pos, d_model)
            xe = x.unsqueeze(-2).expand(*x.shape[:-1], tap.heads, x.shape[-1])  # (batch, pos, head, d_model)
            y = handler(xe)
            if not handler.modifies and not y.requires_grad:
                return None
            # (batch, pos, head, d_model) -> (head,): which heads now read something else
            changed = (y != x.unsqueeze(-2)).flatten(0, -3).any(0).any(-1) if y is not xe else \
                torch.zeros(tap.heads, dtype=torch.bool, device=x.device)
            todo = torch.arange(tap.heads, device=x.device) if y.requires_grad else changed.nonzero().flatten()
            if todo.numel() == 0:
                return None
            w, b = tap.weight()
            inp = y.index_select(-2, todo)  # (batch, pos, n, d_model)
            normed = inp if tap.norm is None else tap.norm(inp)
            new = torch.einsum("bpnm,nmd->bpnd", normed, w.index_select(0, todo).to(normed.dtype))
            if b is not None:
                new = new + b.index_select(0, todo).to(new.dtype)
            state["new"] = (todo.tolist(), changed.tolist(), new)  # new: (batch, pos, n, d_head)
            return None

        def post(_mod: nn.Module, _args: tuple, out: Tensor):
            if not handler.live or "new" not in state:
                return None
            todo, changed, new = state.pop("new")
            d = tap.d_head
            if tap.out_heads < tap.heads:
                if out.shape[-1] != tap.out_heads * d:
                    raise ValueError(f"per-head inputs under grouped-query attention need a projection that holds "
                                     f"only these heads ({tap.out_heads} x {d} columns), got {out.shape[-1]} columns")
                # (batch, pos, kv_head*d_head) -> (batch, pos, head*d_head): one key/value head per query head
                rep = tap.heads // tap.out_heads
                res = out.unflatten(-1, (tap.out_heads, d)).repeat_interleave(rep, -2).flatten(-2)
                col = lambda h: h * d  # noqa: E731
            else:
                res = out.clone()
                col = tap.column
            for j, h in enumerate(todo):
                c = col(h)
                v = new[..., j, :]
                if not changed[h]:  # the same value as before; gradients through the recomputation
                    v = value_of(res[..., c:c + d], v)
                res[..., c:c + d] = v
            return res

        return [self.reader.register_forward_pre_hook(pre, with_kwargs=True),
                self.proj.register_forward_hook(post)]


@dataclass(frozen=True, eq=False)
class NormScale(Tap):
    """The divisor a norm module normalises each position by (batch, pos, 1), and the norm's
    output recomputed when a handler changes it.

    `divisor(x)` is the norm's divisor for its input x (batch, pos, d_model), in float32, computed
    as the module computes it (sqrt(var + eps) or sqrt(mean(x^2) + eps)); `output(x, d)` is the
    module's output for input x normalised by the divisor d, with its own gain, bias and dtype
    casts. A pure capture leaves the output alone. Where a handler changes the divisor, the
    output is `output(x, new divisor)`; positions whose divisor came back unchanged keep the
    module's own output bit for bit. With gradients on, the output's graph goes through
    `output(x, d)` (its value stays the module's), so a gradient reaches the captured divisor and
    the input gets its full gradient through both the centred input and the divisor.
    """

    module: nn.Module
    divisor: Callable[[Tensor], Tensor]
    output: Callable[[Tensor, Tensor], Tensor]

    def install(self, handler: Handler) -> list[RemovableHandle]:
        """Hook the norm module for `handler`, which sees the divisor (batch, pos, 1); returns its handle."""
        tap = self

        def hook(_mod: nn.Module, args: tuple, kwargs: dict, out: Tensor):
            if not handler.live:
                return None
            x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, Tensor))
            d = tap.divisor(x)  # (batch, pos, 1)
            y = handler(d)
            if not handler.modifies and not y.requires_grad:
                return None
            new = tap.output(x, y)
            own = value_of(out, new) if new.requires_grad else out
            if not handler.modifies:
                return own
            return torch.where(y == d, own, new)

        return [self.module.register_forward_hook(hook, with_kwargs=True)]


def rms_divisor(x: Tensor, eps: float) -> Tensor:
    """An RMSNorm's divisor sqrt(mean(x^2) + eps) over the last axis, in float32: (..., 1)."""
    return (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt()


def layer_norm_scale(module: nn.Module) -> NormScale | None:
    """The scale tap of a `torch.nn.LayerNorm` over the last axis; None for any other module.

    The divisor is sqrt(var + eps) of the input (the biased variance over the last axis) and the
    output (x - mean) / divisor * weight + bias, both in float32 for reduced-precision inputs (as
    the module computes them) and in float64 for float64 inputs, cast back to the input's dtype.
    """
    if type(module) is not nn.LayerNorm or len(module.normalized_shape) != 1:
        return None
    eps = module.eps

    def centred(x: Tensor) -> Tensor:
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return x - x.mean(-1, keepdim=True)

    def divisor(x: Tensor) -> Tensor:  # the RMS of the centred input: sqrt(var + eps)
        return (centred(x).pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def output(x: Tensor, d: Tensor) -> Tensor:
        y = centred(x) / d
        if module.weight is not None:
            y = y * module.weight.to(y.dtype)
        if module.bias is not None:
            y = y + module.bias.to(y.dtype)
        return y.to(x.dtype)

    return NormScale(module, divisor, output)
