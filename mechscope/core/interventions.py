"""Interventions: small frozen values that say how to change the activation at one Site.

Each intervention may be restricted to batch `rows`, `positions` (query positions for attention
patterns), `heads` and `units` (the last axis: neurons, features or d_model coordinates). An
unrestricted axis means "all". Restrictions combine as an outer product, like `numpy.ix_`.

An intervention computes a *target* tensor broadcastable to the site's activation; the selected
entries of the activation are replaced by the selected entries of the target. Applying the same
list of interventions to one site is done in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor

from .errors import InterventionError, SiteError
from .site import Site

Index = Union[None, int, Sequence[int], slice, Tensor]


@dataclass(frozen=True)
class Context:
    """What an intervention may read besides the activation itself.

    `input_ids` (batch, pos) and `attention_mask` are the run's tokens when the model has them;
    `cache` holds the activations captured so far in this run (sites earlier in the forward pass).

    Example::

        def copy_previous(x, ctx):               # x (batch, pos, d_model)
            ids = ctx.input_ids                  # (batch, pos)
            return x.roll(1, dims=1)

        ms.run(model, tokens, interventions=ms.Replace("resid_pre.1", copy_previous))
    """

    site: Site
    input_ids: Tensor | None
    attention_mask: Tensor | None
    cache: dict


def _as_site(text: str) -> Site:
    """A site name, or else a module path of a generic model; `run` checks either against the model."""
    try:
        return Site.parse(text)
    except SiteError:
        return Site.module(text.strip())


def _norm_index(ix: Index) -> Index:
    if isinstance(ix, (list, tuple, range)):
        if len(ix) and all(isinstance(i, bool) for i in ix):
            return tuple(ix)  # a boolean mask, not the indices 0 and 1
        return tuple(int(i) for i in ix)
    if isinstance(ix, int):
        return (ix,)
    return ix


@dataclass(frozen=True, eq=False)
class Intervention:
    """Base class: where (site and restrictions); subclasses say what (the target).

    Example::

        ivs = [ms.Zero("attn.z.3", heads=[5]),                       # subclasses say what is written
               ms.Scale("mlp.post.1", 0.5, positions=[-1], rows=[0])]
        ms.run(model, tokens, interventions=ivs).logits              # (batch, pos, vocab)
    """

    site: Site
    positions: Index = field(default=None, kw_only=True)
    heads: Index = field(default=None, kw_only=True)
    rows: Index = field(default=None, kw_only=True)
    units: Index = field(default=None, kw_only=True)
    # built from a head-restricted site: a value with fewer axes is in that head's layout
    _one_head: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.site, str):
            object.__setattr__(self, "site", _as_site(self.site))
        if self.site.head is not None:  # a head-restricted site is the whole site with heads=[h]
            if self.heads is not None:
                raise InterventionError(f"{self.site.name}: give the head in the site or in heads=, not both")
            object.__setattr__(self, "heads", (self.site.head,))
            object.__setattr__(self, "site", self.site.whole)
            object.__setattr__(self, "_one_head", True)
        for name in ("positions", "heads", "rows", "units"):
            object.__setattr__(self, name, _norm_index(getattr(self, name)))

    # subclasses implement this -------------------------------------------------------------
    def target(self, x: Tensor, ctx: Context) -> Tensor:  # pragma: no cover - abstract
        """The value to write at the site for activation `x` (broadcastable to it); `apply` writes the selected
        entries."""
        raise NotImplementedError

    # shared machinery -----------------------------------------------------------------------
    @property
    def restricted(self) -> bool:
        """Whether any of positions, heads, rows or units restricts where the intervention writes."""
        return any(getattr(self, n) is not None for n in ("positions", "heads", "rows", "units"))

    def apply(self, x: Tensor, ctx: Context) -> Tensor:
        """Return the activation with this intervention applied (a new tensor; `x` is untouched)."""
        new = self._checked_target(x, ctx)
        if not self.restricted:
            return new.expand(x.shape).clone() if new.shape != x.shape or new is x else new
        out = x.clone()
        sel = self._selector(x)
        out[sel] = new.expand(x.shape)[sel]
        return out

    def write(self, out: Tensor, ctx: Context) -> None:
        """Apply in place to `out`, a tensor the caller owns (several interventions, one copy)."""
        new = self._checked_target(out, ctx)
        if not self.restricted:
            out.copy_(new.expand(out.shape))
            return
        sel = self._selector(out)
        out[sel] = new.expand(out.shape)[sel]

    def _checked_target(self, x: Tensor, ctx: Context) -> Tensor:
        new = self.target(x, ctx)
        if not isinstance(new, Tensor):
            new = torch.as_tensor(new, dtype=x.dtype, device=x.device)
        if self._one_head and new.dim() < x.dim():
            new = self._with_head_axis(new, x)
        try:
            shape = torch.broadcast_shapes(new.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise InterventionError(
                f"{type(self).__name__} at {self.site.name}: value of shape {tuple(new.shape)} does not "
                f"fit the activation of shape {tuple(x.shape)} (it must broadcast to it)")
        return new.to(device=x.device, dtype=x.dtype)

    def _with_head_axis(self, new: Tensor, x: Tensor) -> Tensor:
        """A value shaped like one head's activation (e.g. cache["...hook_z[2]"]): put the head axis back.

        Broadcasting it against the whole activation instead would misalign its axes (its batch
        axis would meet the head axis) and could succeed silently with the wrong meaning.
        """
        ax = self.site.layout.head
        head_shape = x.shape[:ax] + x.shape[ax + 1:]
        try:
            return new.broadcast_to(head_shape).unsqueeze(ax)
        except RuntimeError:
            raise InterventionError(
                f"{type(self).__name__} at {self.site.name}[{self.heads[0]}]: value of shape {tuple(new.shape)} "
                f"does not fit one head's activation of shape {tuple(head_shape)} (it must broadcast to it)"
            ) from None

    def _selector(self, x: Tensor) -> tuple:
        """An ix_-style index tuple selecting rows x positions x heads x units of `x`."""
        lay = self.site.layout
        axes: dict[int, tuple[str, Index]] = {0: ("rows", self.rows)}
        for name, ax in (("positions", lay.pos), ("heads", lay.head), ("units", lay.unit)):
            value = getattr(self, name)
            if value is None:
                continue
            if ax is None:
                raise InterventionError(f"{type(self).__name__}: site {self.site.name} has no {name} axis; "
                                        f"remove the {name}= restriction")
            axes[ax % x.ndim] = (name, value)
        idx = []
        for d in range(x.ndim):
            name, value = axes.get(d, ("", None))
            n = x.shape[d]
            if value is None:
                t = torch.arange(n, device=x.device)
            elif isinstance(value, slice):
                t = torch.arange(n, device=x.device)[value]
            else:
                t = torch.as_tensor(value, device=x.device)
                if t.dtype == torch.bool:  # a mask selects where it is True
                    if t.numel() != n:
                        raise InterventionError(
                            f"{type(self).__name__} at {self.site.name}: a boolean mask over {name} needs {n} "
                            f"entries, got {t.numel()} (activation shape {tuple(x.shape)})")
                    t = t.reshape(-1).nonzero().reshape(-1)
                t = t.long().reshape(-1)
                bad = (t >= n) | (t < -n)
                if bool(bad.any()):
                    raise InterventionError(
                        f"{type(self).__name__} at {self.site.name}: {name} {t[bad].tolist()} out of range; "
                        f"this activation has {n} {name} (0..{n - 1}), shape {tuple(x.shape)}")
            shape = [1] * x.ndim
            shape[d] = -1
            idx.append(t.reshape(shape))
        return tuple(idx)


@dataclass(frozen=True, eq=False)
class Zero(Intervention):
    """Set the selected entries to zero (zero ablation).

    Example::

        ms.run(model, tokens, interventions=ms.Zero("attn.z.1", heads=[0, 2], positions=[-1]))
    """

    def target(self, x: Tensor, ctx: Context) -> Tensor:
        """Zeros (a scalar that broadcasts to the activation)."""
        return x.new_zeros(())


@dataclass(frozen=True, eq=False)
class Mean(Intervention):
    """Set the selected entries to a mean activation.

    `mean` broadcasts to one prompt's activation, e.g. (d_model,) or (pos, d_model); build it from
    a reference set with `Mean.of(site, activations)`, which averages over the batch axis (and
    over positions too with `over_positions=True`).

    Example::

        ref = ms.run(model, reference_tokens, capture=["attn.z.1"]).cache["attn.z.1"]  # (n, pos, head, d_head)
        mean = ms.Mean.of("attn.z.1", ref, heads=[2])            # mean over the n reference prompts
        ms.run(model, tokens, interventions=mean)
    """

    mean: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mean is None:
            raise InterventionError("Mean needs mean=: build it with Mean.of(site, reference_activations)")

    @classmethod
    def of(cls, site: Site | str, reference: Tensor, *, over_positions: bool = False, **where: Any) -> "Mean":
        """A Mean of `reference` activations (batch first, as `cache[site]` gives them) over the batch.

        `over_positions=True` also averages over positions (one value for every position); `where`
        takes the restrictions (rows, positions, heads, units).
        """
        site = _as_site(site) if isinstance(site, str) else site
        m = reference.float().mean(0)
        if over_positions:
            # per-head kinds are (batch, 3 axes) whole and (batch, 2 axes) for one head, as cache[site] gives
            one_head = site.head is not None and reference.dim() == 3
            pos = (site.layout if one_head else site.whole.layout).pos
            if pos is None:
                raise InterventionError(f"{site.name} has no position axis to average over")
            m = m.mean(pos - 1, keepdim=True)
        return cls(site, mean=m.to(reference.dtype), **where)

    def target(self, x: Tensor, ctx: Context) -> Tensor:
        """The stored mean."""
        return self.mean


@dataclass(frozen=True, eq=False)
class Resample(Intervention):
    """Replace each batch row with a row drawn (with a fixed seed) from `source` activations.

    `source` is (n, ...) activations at the same site on a reference distribution, e.g. a
    Cache entry from a run on corrupted prompts.

    Example::

        ref = ms.run(model, corrupt, capture=["mlp_out.0"]).cache["mlp_out.0"]   # (n, pos, d_model)
        ms.run(model, clean, interventions=ms.Resample("mlp_out.0", ref, seed=0))
    """

    source: Tensor | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source is None:
            raise InterventionError("Resample needs source=: activations at the site from a reference run")

    def target(self, x: Tensor, ctx: Context) -> Tensor:
        """Rows of `source` drawn with the intervention's seed, one per row of `x`."""
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randint(self.source.shape[0], (x.shape[0],), generator=g).to(self.source.device)
        return self.source[pick]


@dataclass(frozen=True, eq=False)
class Patch(Intervention):
    """Write `value` (the activation from another run, same shape or broadcastable) in place.

    Example::

        src = ms.run(model, corrupt, capture=["resid_pre.4"]).cache["resid_pre.4"]   # (batch, pos, d_model)
        patched = ms.run(model, clean, interventions=ms.Patch("resid_pre.4", src, positions=[3]))
    """

    value: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value is None:
            raise InterventionError("Patch needs value=: the activation to write, e.g. clean_cache[site]")

    def target(self, x: Tensor, ctx: Context) -> Tensor:
        """The given `value`."""
        return self.value


@dataclass(frozen=True, eq=False)
class Add(Intervention):
    """Add a vector (steering) or tensor broadcastable to the activation.

    Example::

        model = ms.load("smollm2-135m")
        love = ms.run(model, model.to_tokens(["I love it"]), capture=["resid_pre.6"]).cache["resid_pre.6"]
        hate = ms.run(model, model.to_tokens(["I hate it"]), capture=["resid_pre.6"]).cache["resid_pre.6"]
        d = love[0, -1] - hate[0, -1]            # (d_model,) steering vector
        tokens = model.to_tokens(["The movie was"])
        steered = ms.run(model, tokens, interventions=ms.Add("resid_pre.6", 4.0 * d, positions=[-1]))
    """

    vector: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vector is None:
            raise InterventionError("Add needs vector=")

    def target(self, x: Tensor, ctx: Context) -> Tensor:
        """`x + vector`."""
        return x + self.vector.to(device=x.device, dtype=x.dtype)


@dataclass(frozen=True, eq=False)
class Scale(Intervention):
    """Multiply the selected entries by `factor`.

    Example::

        ms.run(model, tokens, interventions=ms.Scale("attn.pattern.1", 0.0, heads=[3]))  # (batch, head, pos, kpos)
    """

    factor: float | Tensor = 1.0

    def target(self, x: Tensor, ctx: Context) -> Tensor:
        """`x * factor`."""
        return x * self.factor


@dataclass(frozen=True, eq=False)
class Replace(Intervention):
    """Replace the activation with `fn(x, ctx)`: code standing in for a component.

    `fn` receives the current activation and a Context (tokens, attention mask, activations
    captured earlier in the run) and returns a tensor broadcastable to the activation.

    Example::

        def flip(x, ctx):                        # x (batch, pos, head, d_head)
            return -x

        ms.run(model, tokens, interventions=ms.Replace("attn.z.1", flip, heads=[0]))
    """

    fn: Callable[[Tensor, Context], Tensor] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fn is None or not callable(self.fn):
            raise InterventionError("Replace needs fn=: a callable (activation, context) -> tensor")

    def target(self, x: Tensor, ctx: Context) -> Tensor:
        """`fn(x, ctx)`."""
        return self.fn(x, ctx)
