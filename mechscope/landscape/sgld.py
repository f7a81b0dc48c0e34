"""Localised stochastic gradient Langevin dynamics (SGLD) over a chosen set of parameters.

One step, for every sampled parameter entry w (Lau et al. 2023, "Quantifying degeneracy in
singular models via the learning coefficient", eq. (11)):

    w <- w - (ε/2) · (nβ · ∇L_batch(w) + γ · (w - w*)) + N(0, ε)

L_batch is the mean loss over a minibatch of `batch_size` examples, nβ the inverse temperature
times the number of examples n (default n / log n, i.e. β = 1 / log n), γ the localisation that keeps
the chain near the point w* it started from, ε the step size. The chain samples from the tempered
posterior exp(-nβ L_n(w) - γ/2 ||w - w*||²) around w*.

Only the parameters it is given move (`select_parameters`: all, names, a predicate, a
`Component`, or a mapping of names to boolean masks, e.g. one head's rows of a fused matrix);
every other parameter is frozen and stays bit-identical, and so do the masked-out entries of a
partly sampled parameter. `sample` puts every parameter and buffer of the module back exactly as
it found them when it returns, or when anything raises.

Randomness: chain c draws its noise from its own generator seeded `seed + c`; its minibatches come
from random permutations of the n examples (a new one each epoch, the last incomplete batch of an
epoch dropped) seeded `seed` when `shared_batches` (every chain reads the same batches and the
chains differ by their noise alone), else `seed + c`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..core.errors import MechscopeError
from ..core.progress import note, progress_bar

Batch = Union[Tensor, tuple[Tensor, ...]]
"""Examples along dim 0: one tensor (token ids) or a tuple of tensors of equal length (x, y)."""


class LandscapeError(MechscopeError, ValueError):
    """Bad input to the sampler or the LLC estimate (the message says what to change).

    Example::

        from mechscope.landscape import LandscapeError, SGLDConfig, estimate_llc
        try:
            estimate_llc(model, ids, config=SGLDConfig(step_size=-1.0))
        except LandscapeError as err:
            print(err)                           # says what to change
    """


@dataclass(frozen=True)
class SGLDConfig:
    """Settings of a localised SGLD run.

    Defaults: ε = 1e-3 and γ = 100 are the values Lau et al. 2023 and devinterp's examples use for
    small networks; nβ = n / log n (β = 1 / log n, the temperature at which the expected loss
    estimates the learning coefficient); 4 chains of 200 draws after no burn-in, minibatches of 32.
    They are a starting point: check `LLCEstimate.warnings` and the loss traces, and lower ε (or
    raise γ) when a chain diverges, raise ε or the draws when the trace is still rising.

    Example::

        from mechscope.landscape import SGLDConfig, estimate_llc
        cfg = SGLDConfig(step_size=1e-3, localization=100.0, chains=4, draws=200, batch_size=32)
        estimate_llc(model, ids, config=cfg)
    """

    step_size: float = 1e-3  # ε: the step's drift is ε/2 times the gradient, its noise variance ε
    localization: float = 100.0  # γ: strength of the pull back to w*
    nbeta: float | None = None  # n·β; None: n / log n
    chains: int = 4
    draws: int = 200  # losses kept per chain, one per step after the burn-in
    burn_in: int = 0  # steps per chain whose losses are left out of the estimate
    batch_size: int = 32  # examples per step (capped at n)
    seed: int = 0
    shared_batches: bool = True  # every chain reads the same minibatches (they differ by noise only)

    def __post_init__(self) -> None:
        v = self.step_size
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise LandscapeError(f"SGLDConfig.step_size must be a positive number, got {v!r}")
        if not (isinstance(self.localization, (int, float)) and math.isfinite(self.localization)
                and self.localization >= 0):
            raise LandscapeError(f"SGLDConfig.localization must be >= 0, got {self.localization!r}")
        if self.nbeta is not None and not (math.isfinite(self.nbeta) and self.nbeta > 0):
            raise LandscapeError(f"SGLDConfig.nbeta must be positive (or None for n / log n), got {self.nbeta!r}")
        for name, low in (("chains", 1), ("draws", 1), ("burn_in", 0), ("batch_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise LandscapeError(f"SGLDConfig.{name} must be an integer >= {low}, got {v!r}")

    @property
    def steps(self) -> int:
        """Steps per chain: burn-in and draws."""
        return self.burn_in + self.draws

    def nbeta_for(self, n: int) -> float:
        """nβ for n examples: the configured value, else n / log n."""
        if self.nbeta is not None:
            return float(self.nbeta)
        if n < 2:
            raise LandscapeError(f"the default nβ = n / log n needs at least 2 examples, got n={n}; "
                                 "set SGLDConfig(nbeta=...)")
        return n / math.log(n)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict."""
        return {"step_size": self.step_size, "localization": self.localization, "nbeta": self.nbeta,
                "chains": self.chains, "draws": self.draws, "burn_in": self.burn_in,
                "batch_size": self.batch_size, "seed": self.seed, "shared_batches": self.shared_batches}


@dataclass(frozen=True)
class Component:
    """A named set of parameter entries: parameter name -> boolean mask of the entries that belong
    to the component (None: the whole parameter). Names are the module's `named_parameters`.

    Example::

        from mechscope.landscape import Component, components, estimate_llc
        comps = components(model)                # {"blocks.0.attn": Component, ...}
        comps["blocks.0.attn"].names             # the parameter names it covers
        Component("head 0", {"0.weight": mask})  # mask (out, in) bool: the entries it owns
        estimate_llc(model, ids, params=comps["blocks.0.attn"])
    """

    name: str
    params: Mapping[str, Tensor | None] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the parameters the component touches."""
        return tuple(self.params)


@dataclass(frozen=True, eq=False)
class Selected:
    """One sampled parameter: its name, the parameter, and the mask of its sampled entries (None: all)."""

    name: str
    param: nn.Parameter
    mask: Tensor | None

    @property
    def size(self) -> int:
        """The number of sampled entries."""
        return int(self.param.numel() if self.mask is None else self.mask.sum())


ParamSelector = Union[None, Sequence[str], Callable[[str, nn.Parameter], bool], Component,
                      Mapping[str, Union[Tensor, None]]]


def select_parameters(module: nn.Module, params: ParamSelector = None) -> list[Selected]:
    """The parameters SGLD moves: None (every parameter that requires grad), a list of names, a
    predicate `(name, param) -> bool`, a `Component`, or a mapping name -> boolean mask (None: all).

    Example::

        from mechscope.landscape import select_parameters
        sel = select_parameters(net, ["0.weight"])          # or a predicate, a Component, or masks
        sel = select_parameters(net, lambda name, p: name.startswith("2."))
    """
    named = dict(module.named_parameters())
    if params is None:
        chosen: dict[str, Tensor | None] = {n: None for n, p in named.items() if p.requires_grad}
    elif isinstance(params, Component):
        chosen = dict(params.params)
    elif isinstance(params, Mapping):
        chosen = dict(params)
    elif callable(params):
        chosen = {n: None for n, p in named.items() if params(n, p)}
    elif isinstance(params, str):
        raise LandscapeError(f"params={params!r} is one string: give a list of parameter names, e.g. [{params!r}]")
    else:
        chosen = {}
        for n in params:
            if not isinstance(n, str):
                raise LandscapeError(f"params must hold parameter names (str), got {type(n).__name__}")
            chosen[n] = None
    unknown = [n for n in chosen if n not in named]
    if unknown:
        import difflib

        hints = {n: difflib.get_close_matches(n, list(named), n=3) for n in unknown}
        raise LandscapeError("no parameter named " + "; ".join(
            f"{n!r}" + (f" (nearest: {', '.join(h)})" if h else "") for n, h in hints.items())
            + f" in {type(module).__name__}; see module.named_parameters()")
    out = []
    for n, mask in chosen.items():
        p = named[n]
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != p.shape:
                raise LandscapeError(f"the mask of {n!r} must be a bool tensor of the parameter's shape "
                                     f"{tuple(p.shape)}, got {getattr(mask, 'dtype', type(mask).__name__)} "
                                     f"{tuple(getattr(mask, 'shape', ()))}")
            mask = mask.to(p.device)
            if not bool(mask.any()):
                continue
        if not p.dtype.is_floating_point:
            raise LandscapeError(f"parameter {n!r} has dtype {p.dtype}; SGLD samples floating-point parameters")
        out.append(Selected(n, p, mask))
    if not out:
        raise LandscapeError(f"no parameters selected for sampling in {type(module).__name__} (params={params!r}): "
                             "name at least one parameter, or pass params=None for all of them")
    return out


@contextmanager
def restored(module: nn.Module) -> Iterator[None]:
    """Put every parameter and buffer of `module` (values and requires_grad) back as they were on exit,
    bit for bit, also when the body raises."""
    saved = [(t, t.detach().clone()) for t in [*module.parameters(), *module.buffers()]]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    grads = [(p, p.grad) for p in module.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, v in saved:
                t.copy_(v)
        for p, flag in flags:
            p.requires_grad_(flag)
        for p, g in grads:
            p.grad = g


def n_examples(data: Batch) -> int:
    """Examples in `data` (its first dimension), checking that a tuple's tensors agree."""
    parts = data if isinstance(data, tuple) else (data,)
    if not parts or not all(isinstance(t, Tensor) for t in parts):
        raise LandscapeError("data must be a tensor of examples along dim 0 (token ids, (n, pos)) or a tuple "
                             f"of such tensors ((x, y)), got {type(data).__name__}")
    sizes = {int(t.shape[0]) if t.dim() else -1 for t in parts}
    if len(sizes) != 1 or -1 in sizes:
        raise LandscapeError("data's tensors must share their first dimension (the examples), "
                             f"got sizes {sorted(sizes)}")
    n = sizes.pop()
    if n < 1:
        raise LandscapeError("data holds no examples")
    return n


def take(data: Batch, index: Tensor) -> Batch:
    """The examples `index` of `data`, on the data's device."""
    if isinstance(data, tuple):
        return tuple(t[index.to(t.device)] for t in data)
    return data[index.to(data.device)]


def batch_order(n: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Minibatch indices: random permutations of range(n), a new one each epoch, incomplete batches dropped."""
    gen = torch.Generator().manual_seed(seed)
    m = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - m + 1, m):
            yield perm[i:i + m]


@dataclass(frozen=True, eq=False)
class Chains:
    """What `sample` returns: the minibatch loss at every step of every chain, before the step's
    update (row c, column t: chain c at step t; step 0 is at w*), NaN after a chain stopped on a
    non-finite loss; `stopped[c]` the step where that happened (None: ran to the end).

    Example::

        from mechscope.landscape import SGLDConfig, lm_loss, sample
        chains = sample(lambda b: lm_loss(model, b), model.module, ids, SGLDConfig(chains=2, draws=100))
        chains.losses                            # (chain, step): row c, column t
        chains.stopped                           # (None, None): both ran to the end
    """

    losses: Tensor  # (chains, steps), float64
    stopped: tuple[int | None, ...]
    nbeta: float
    n: int
    sampled: tuple[str, ...]  # the parameters moved
    n_sampled: int  # entries moved


def sample(loss: Callable[[Batch], Tensor], module: nn.Module, data: Batch, config: SGLDConfig = SGLDConfig(),
           params: ParamSelector = None, *, batches: Callable[[int], Iterable[Tensor]] | None = None,
           progress: bool = True, desc: str = "sgld", vectorize: bool = False) -> Chains:
    """Run `config.chains` localised SGLD chains from the module's current weights w*, moving only
    the parameters `params` selects, and return the minibatch losses along the way.

    `loss(batch)` returns the mean loss of a minibatch as a 0-dim tensor (it reads the module's
    parameters). `batches(chain)`, if given, replaces the minibatch order: an iterable of index
    tensors into `data` (to reproduce another tool's order). The module's weights are restored
    exactly afterwards (also on an exception).

    `vectorize=True` runs all chains at once: one batched forward and backward per step
    (`torch.func.vmap` of `torch.func.grad` over the chains' stacked copies of the sampled
    parameters, through `torch.func.functional_call`), with the same seeds, noise and minibatches
    per chain, so the losses are those of the chain-after-chain loop up to float rounding. It pays
    where a step is mostly per-operation overhead (small networks, small batches); where the
    step's arithmetic dominates, batched kernels can be slower than the loop (measured in the
    README's "Loss landscape" section). When the loss cannot be vmapped (e.g. `.item()` inside it,
    data-dependent shapes, random ops) or the chains' minibatches differ in size, the chains run
    one after another instead, with a note saying why.

    Example::

        from mechscope.landscape import SGLDConfig, mse_loss, sample
        chains = sample(lambda b: mse_loss(net, b), net, (x, y), SGLDConfig(chains=2, draws=100))
        chains.losses                            # (chains, burn_in + draws)
        sample(lambda b: mse_loss(net, b), net, (x, y), vectorize=True)   # all chains in one pass
    """
    n = n_examples(data)
    selected = select_parameters(module, params)
    nbeta = config.nbeta_for(n)
    losses = torch.full((config.chains, config.steps), float("nan"), dtype=torch.float64)
    stopped: list[int | None] | None = None
    orders: list[Iterator[Tensor]] | None = None
    with restored(module):
        if vectorize:
            try:
                stopped = _sample_vectorized(loss, module, data, config, selected, nbeta, losses, batches,
                                             progress, desc)
            except _NotVectorizable as why:
                note(f"{desc}: the chains run one after another ({why})")
                losses.fill_(float("nan"))
                orders = why.orders  # the minibatches drawn so far come first again
        if stopped is None:
            stopped = _sample_sequential(loss, module, data, config, selected, nbeta, losses, batches,
                                         progress, desc, orders)
    return Chains(losses, tuple(stopped), nbeta, n, tuple(s.name for s in selected), sum(s.size for s in selected))


def _orders(config: SGLDConfig, n: int, batches: Callable[[int], Iterable[Tensor]] | None) -> list[Iterator[Tensor]]:
    """Each chain's minibatch order: `batches(chain)`, else `batch_order` seeded as the module docstring says."""
    return [iter(batches(chain) if batches is not None else
                 batch_order(n, config.batch_size, config.seed if config.shared_batches else config.seed + chain))
            for chain in range(config.chains)]


def _next_index(order: Iterator[Tensor], chain: int, step: int, config: SGLDConfig) -> Tensor:
    try:
        return next(order)
    except StopIteration:
        raise LandscapeError(f"the minibatch order of chain {chain} ended after {step} steps; "
                             f"it must give {config.steps}") from None


def _not_a_mean(value: Any) -> LandscapeError:
    return LandscapeError("the loss must return one mean loss per batch as a 0-dim tensor, got "
                          + (f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__))


def _sample_sequential(loss: Callable[[Batch], Tensor], module: nn.Module, data: Batch, config: SGLDConfig,
                       selected: list[Selected], nbeta: float, losses: Tensor,
                       batches: Callable[[int], Iterable[Tensor]] | None, progress: bool,
                       desc: str, orders: list[Iterator[Tensor]] | None = None) -> list[int | None]:
    """The chains one after another, moving the module's own parameters; fills `losses`, returns `stopped`.
    `orders`: each chain's minibatch order when a vectorised pass already drew from it (else `_orders`)."""
    eps, gamma = float(config.step_size), float(config.localization)
    stopped: list[int | None] = []
    chosen = {id(s.param) for s in selected}
    for p in module.parameters():
        p.requires_grad_(id(p) in chosen)
        p.grad = None
    origin = [s.param.detach().clone() for s in selected]  # w*
    orders = orders if orders is not None else _orders(config, n_examples(data), batches)
    bar = progress_bar(total=config.chains * config.steps, desc=desc, unit="step", disable=not progress)
    try:
        for chain in range(config.chains):
            with torch.no_grad():
                for s, w0 in zip(selected, origin):
                    s.param.copy_(w0)
            device = selected[0].param.device
            noise_gen = torch.Generator(device=device).manual_seed(config.seed + chain)
            stop: int | None = None
            for step in range(config.steps):
                value = loss(take(data, _next_index(orders[chain], chain, step, config)))
                if not isinstance(value, Tensor) or value.dim() != 0:
                    raise _not_a_mean(value)
                v = float(value.detach())
                losses[chain, step] = v
                if not math.isfinite(v):
                    stop = step
                    bar.update(config.steps - step)
                    break
                value.backward()  # the selected parameters' grads are None here: `_step` clears them
                _step(selected, origin, nbeta, eps, gamma, noise_gen)
                bar.update(1)
            stopped.append(stop)
            done = losses[chain][torch.isfinite(losses[chain])]
            if len(done):
                bar.set_postfix_str(f"chain {chain} mean loss {float(done.mean()):.4g}")
    finally:
        bar.close()
    return stopped


class _NotVectorizable(Exception):
    """The chains cannot run as one vmapped pass (the message says why); they run one after another.
    `orders` replays each chain's minibatch order from its start (what the pass drew, then the rest)."""

    orders: list[Iterator[Tensor]] | None = None


class _LossOf(nn.Module):
    """The loss as a module around `module`, so `functional_call` can swap in a chain's parameters
    (named `inner.<parameter name>`) while `loss(batch)` reads them through the module."""

    def __init__(self, module: nn.Module, loss: Callable[[Batch], Tensor]):
        super().__init__()
        self.inner = module
        self.loss = loss

    def forward(self, batch: Batch) -> Tensor:
        return self.loss(batch)


def _sample_vectorized(loss: Callable[[Batch], Tensor], module: nn.Module, data: Batch, config: SGLDConfig,
                       selected: list[Selected], nbeta: float, losses: Tensor,
                       batches: Callable[[int], Iterable[Tensor]] | None, progress: bool,
                       desc: str) -> list[int | None]:
    """All chains in one vmapped forward and backward per step; fills `losses`, returns `stopped`.

    Chain c's sampled parameters are row c of stacked copies (chains, *shape); every other parameter
    and buffer is the module's own, shared by the chains. Per chain the update is `_step`'s: the same
    operations in the same order, the noise drawn parameter by parameter from the chain's generator
    (seed + c), a stopped chain frozen and drawing nothing. Raises _NotVectorizable when the first
    step cannot be vmapped or the chains' minibatches differ in size."""
    from torch.func import functional_call, grad_and_value, vmap

    eps, gamma = float(config.step_size), float(config.localization)
    chains = config.chains
    for p in module.parameters():  # only the stacked copies carry gradients
        p.requires_grad_(False)
        p.grad = None
    wrapper = _LossOf(module, loss)
    names = [f"inner.{s.name}" for s in selected]
    origin = [s.param.detach().clone() for s in selected]  # w*
    weights = [w0.unsqueeze(0).repeat(chains, *([1] * w0.dim())) for w0 in origin]  # (chains, *shape)
    masks = [None if s.mask is None else s.mask.unsqueeze(0) for s in selected]
    device = selected[0].param.device
    gens = [torch.Generator(device=device).manual_seed(config.seed + c) for c in range(chains)]
    orders = _orders(config, n_examples(data), batches)

    def chain_loss(ws: list[Tensor], batch: Batch) -> Tensor:
        value = functional_call(wrapper, dict(zip(names, ws)), (batch,))
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise _not_a_mean(value)
        return value

    shared = vmap(grad_and_value(chain_loss), in_dims=(0, None))
    own = vmap(grad_and_value(chain_loss), in_dims=(0, 0))
    active = [True] * chains
    stopped: list[int | None] = [None] * chains
    bar = progress_bar(total=chains * config.steps, desc=desc, unit="step", disable=not progress)
    drawn: list[list[Tensor]] = [[] for _ in range(chains)]  # replayed if the loop takes over
    try:
        for step in range(config.steps):
            index = [_next_index(orders[c], c, step, config) for c in range(chains)]
            for c in range(chains):
                drawn[c].append(index[c])
            same = all(torch.equal(index[0], i) for i in index[1:])
            if not same and len({tuple(i.shape) for i in index}) > 1:
                raise _NotVectorizable(f"the chains' minibatches differ in size at step {step}")
            try:
                if same:
                    grads, values = shared(weights, take(data, index[0]))
                else:
                    grads, values = own(weights, take(data, torch.stack(index)))
            except LandscapeError:
                raise
            except Exception as e:  # noqa: BLE001 - only the first step decides; later errors are real
                if step == 0:
                    raise _NotVectorizable(f"the loss cannot be vmapped over the chains: {type(e).__name__}: "
                                           f"{str(e).splitlines()[0] if str(e) else ''}") from e
                raise
            values = values.detach().double().cpu()
            for c in range(chains):
                if not active[c]:
                    continue
                v = float(values[c])
                losses[c, step] = v
                if not math.isfinite(v):
                    active[c] = False
                    stopped[c] = step
                    bar.update(config.steps - step)
                else:
                    bar.update(1)
            if not any(active):
                break
            _step_stacked(weights, grads, origin, masks, active, nbeta, eps, gamma, gens)
    except _NotVectorizable as why:
        why.orders = [itertools.chain(d, o) for d, o in zip(drawn, orders)]
        raise
    finally:
        bar.close()
    return stopped


@torch.no_grad()
def _step_stacked(weights: list[Tensor], grads: list[Tensor], origin: list[Tensor], masks: list[Tensor | None],
                  active: list[bool], nbeta: float, eps: float, gamma: float, gens: list[torch.Generator]) -> None:
    """`_step` for every chain at once on stacked weights (chain, *shape), in place: the same operations
    per entry, each active chain's noise drawn from its own generator parameter by parameter (in the
    list's order, as `_step` draws it); a stopped chain keeps its weights and draws nothing."""
    noise = [torch.zeros_like(w) for w in weights]
    for c, gen in enumerate(gens):
        if active[c]:
            for w, z in zip(weights, noise):
                z[c] = torch.normal(0.0, 1.0, size=w.shape[1:], generator=gen, device=w.device, dtype=w.dtype)
    keep = None if all(active) else torch.tensor(active, device=weights[0].device)
    for w, g, w0, mask, z in zip(weights, grads, origin, masks, noise):
        drift = torch.mul(g, nbeta)
        if gamma:
            drift.add_(torch.sub(w, w0).mul_(gamma))
        new = torch.add(w, drift, alpha=-0.5 * eps)
        new.add_(z, alpha=eps ** 0.5)
        moved = mask
        if keep is not None:
            alive = keep.view(-1, *([1] * (w.dim() - 1)))
            moved = alive if moved is None else moved & alive
        w.copy_(new if moved is None else torch.where(moved, new, w))


@torch.no_grad()
def _step(selected: list[Selected], origin: list[Tensor], nbeta: float, eps: float, gamma: float,
          noise_gen: torch.Generator) -> None:
    """One SGLD update of every selected parameter, in the order given (the noise is drawn in that order).

    The arithmetic runs over the whole parameter list at once (`torch._foreach_*`); per entry it is
    the same operations in the same order as a per-parameter loop, and the noise is drawn parameter
    by parameter from `noise_gen` in the list's order, so a chain's draws are bit for bit those of
    that loop. The price is memory: the drift, the pull and the noise of every selected parameter are
    held at once (about 3x the selected parameters' size, plus a copy of each masked parameter),
    where a loop would hold one parameter's."""
    params = [s.param for s in selected]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    drift = torch._foreach_mul(grads, nbeta)
    if gamma:
        pull = torch._foreach_sub(params, origin)
        torch._foreach_mul_(pull, gamma)
        torch._foreach_add_(drift, pull)
    # a masked parameter changes only where masked: it is updated in a copy, then merged
    new = [p if s.mask is None else p.detach().clone() for s, p in zip(selected, params)]
    torch._foreach_add_(new, drift, alpha=-0.5 * eps)
    noise = [torch.normal(0.0, 1.0, size=p.shape, generator=noise_gen, device=p.device, dtype=p.dtype)
             for p in params]
    torch._foreach_add_(new, noise, alpha=eps ** 0.5)
    for s, p, w in zip(selected, params, new):
        if s.mask is not None:
            p.copy_(torch.where(s.mask, w, p))  # entries outside the mask keep their bits
        p.grad = None


__all__ = ["Batch", "Chains", "Component", "LandscapeError", "SGLDConfig", "Selected", "batch_order",
           "n_examples", "restored", "sample", "select_parameters", "take"]
