"""The local learning coefficient (LLC) of a network at its current weights w*, estimated with SGLD.

    λ̂(w*) = nβ · (E_w[L_n(w)] - L_n(w*))

(Lau et al. 2023, "Quantifying degeneracy in singular models via the learning coefficient"):
the expectation is over the localised tempered posterior exp(-nβ L_n(w) - γ/2 ||w - w*||²), taken
as the mean minibatch loss of SGLD draws (`sgld.sample`), L_n(w*) over the whole data. One
estimate per chain; the reported value is their mean, with the standard error over chains and a
95% interval (Student t). A regular model of d parameters has λ = d/2; degenerate directions lower it.

    from mechscope.landscape import estimate_llc, SGLDConfig, lm_loss, components
    est = estimate_llc(model, token_ids, config=SGLDConfig(step_size=1e-4, localization=100))
    est.llc, est.std_error, est.warnings
    per = estimate_llc_components(model, token_ids)   # {component name: LLCEstimate}

`model` is a mechscope adapter (`load`, `wrap`, `zoo.load_zoo`) or a plain nn.Module. The loss is
a callable `(model, batch) -> mean loss (0-dim tensor)`: `lm_loss` (next-token cross-entropy on
token ids, the default for adapters), `cross_entropy_loss` and `mse_loss` for (x, y) data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.progress import note
from ..core.run import run
from .components import components as _components
from .sgld import (Batch, Component, LandscapeError, ParamSelector, SGLDConfig, n_examples, restored, sample,
                   select_parameters, take)

Loss = Callable[[Any, Batch], Tensor]
"""(model, batch) -> the mean loss over the batch, a 0-dim tensor that gradients flow through."""

# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def _module(model: Any) -> nn.Module:
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise LandscapeError(f"expected an nn.Module or a mechscope adapter, got {type(model).__name__}")
    return module


def _is_adapter(model: Any) -> bool:
    return hasattr(model, "prepare") and hasattr(model, "module")


def _logits(model: Any, inputs: Any) -> Tensor:
    if _is_adapter(model):
        return run(model, inputs, track_grad=True).logits
    out = model(inputs)
    return getattr(out, "logits", out)


def lm_loss(model: Any, batch: Batch) -> Tensor:
    """Mean next-token cross-entropy of token ids (batch, pos), over every position and sequence,
    through `mechscope.run` for an adapter (else the module's own forward).

    Example::

        from mechscope.landscape import lm_loss
        lm_loss(ms.load("zoo:induction-quick"), ids)   # ids (batch, pos) -> a scalar tensor
    """
    ids = batch[0] if isinstance(batch, tuple) else batch
    logits = _logits(model, ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten().to(logits.device))


def cross_entropy_loss(model: Any, batch: Batch) -> Tensor:
    """Mean cross-entropy of class labels: batch = (x, y) with y integer classes.

    Example::

        from mechscope.landscape import cross_entropy_loss, estimate_llc
        estimate_llc(net, (x, y), loss=cross_entropy_loss)   # x (n, ...), y (n,) integer classes
    """
    x, y = _pair(batch)
    return F.cross_entropy(_logits(model, x).float(), y)


def mse_loss(model: Any, batch: Batch) -> Tensor:
    """Half the mean squared error summed over outputs, ½·mean_i ||f(x_i) - y_i||²: the negative
    log-likelihood (up to a constant) of a unit-variance Gaussian regression. batch = (x, y).

    Example::

        from mechscope.landscape import mse_loss
        mse_loss(net, (x, y))                    # x (n, d_in), y (n, d_out) -> a scalar tensor
    """
    x, y = _pair(batch)
    out = _logits(model, x).float()
    return 0.5 * (out - y.to(out)).pow(2).reshape(out.shape[0], -1).sum(1).mean()


def _pair(batch: Batch) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, tuple) or len(batch) != 2:
        raise LandscapeError("this loss reads (x, y) batches: pass data=(x, y)")
    return batch


@dataclass(frozen=True, eq=False)
class LLCEstimate:
    """An LLC estimate with what it was measured from.

    `llc` is the mean over chains of nβ·(mean draw loss - L_n(w*)); `per_chain` the chains' values
    (NaN for a chain that stopped on a non-finite loss, left out of the mean); `std_error` the
    standard error of the mean over chains (NaN with one chain), `interval` a 95% Student-t interval.
    `traces` holds every chain's minibatch loss at every step, burn-in included (chains, steps).
    `warnings` names what makes the number suspect (empty when none): read it.

    Example::

        from mechscope.landscape import estimate_llc
        est = estimate_llc(model, ids)   # ids (batch, pos)
        est.llc, est.std_error, est.interval
        est.traces                               # (chains, steps)
    """

    llc: float
    per_chain: tuple[float, ...]
    std_error: float
    interval: tuple[float, float]
    init_loss: float  # L_n(w*)
    traces: Tensor  # (chains, burn_in + draws)
    nbeta: float
    n: int  # examples
    params: tuple[str, ...]  # the parameters sampled
    n_params: int  # entries sampled
    config: SGLDConfig
    warnings: tuple[str, ...]
    component: str | None = None

    @property
    def healthy(self) -> bool:
        """Whether the estimate has no warnings."""
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON): the estimate, the per-chain values, the settings and the diagnostics;
        the traces as lists of per-chain losses."""
        clean = lambda v: None if not math.isfinite(v) else v  # noqa: E731
        return {"llc": clean(self.llc), "per_chain": [clean(v) for v in self.per_chain],
                "std_error": clean(self.std_error), "interval": [clean(v) for v in self.interval],
                "init_loss": self.init_loss, "nbeta": self.nbeta, "n": self.n, "params": list(self.params),
                "n_params": self.n_params, "config": self.config.to_dict(), "warnings": list(self.warnings),
                "component": self.component,
                "traces": [[clean(float(v)) for v in row] for row in self.traces.tolist()]}

    def __repr__(self) -> str:
        where = f" [{self.component}]" if self.component else ""
        lo, hi = self.interval
        flag = f"; warnings: {'; '.join(self.warnings)}" if self.warnings else ""
        return (f"LLCEstimate{where}: {self.llc:.4g} ± {self.std_error:.2g} (95% [{lo:.4g}, {hi:.4g}], "
                f"{len(self.per_chain)} chains x {self.config.draws} draws, nβ={self.nbeta:.4g}, "
                f"{self.n_params} parameters){flag}")


@torch.no_grad()
def full_loss(loss: Callable[[Batch], Tensor], data: Batch, batch_size: int) -> float:
    """L_n: the example-weighted mean of the batch losses over all of `data`, in batches of `batch_size`.

    Example::

        from mechscope.landscape import full_loss, lm_loss
        L_n = full_loss(lambda b: lm_loss(model, b), ids, batch_size=64)   # ids (batch, pos)
    """
    n = n_examples(data)
    total = 0.0
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        total += float(loss(take(data, index))) * len(index)
    return total / n


def estimate_llc(model: Any, data: Batch, *, loss: Loss | None = None, params: ParamSelector = None,
                 config: SGLDConfig = SGLDConfig(), init_loss: float | None = None, eval_batch_size: int = 256,
                 batches: Callable[[int], Iterable[Tensor]] | None = None, progress: bool = True,
                 component: str | None = None, vectorize: bool = False) -> LLCEstimate:
    """The LLC of `model` at its current weights, sampling only `params` (default: all of them).

    `data`: examples along dim 0, token ids (n, pos) or a tuple (x, y); `loss(model, batch)` the mean
    loss (default `lm_loss` for a mechscope adapter; required for a plain module). `init_loss`
    overrides L_n(w*) (default: computed over all of `data` in batches of `eval_batch_size`).
    `batches(chain)` replaces the minibatch order, `vectorize=True` runs the chains as one vmapped
    pass (both: see `sgld.sample`). The weights are restored exactly afterwards. Raises LandscapeError
    for an empty parameter set or a non-finite L_n(w*).

    Example::

        from mechscope.landscape import SGLDConfig, estimate_llc, mse_loss
        est = estimate_llc(ms.load("zoo:induction-quick"), ids, config=SGLDConfig(draws=200))   # ids (batch, pos)
        estimate_llc(net, (x, y), loss=mse_loss)  # a plain module on regression data
    """
    module = _module(model)
    if loss is None:
        if not _is_adapter(model):
            raise LandscapeError(f"estimate_llc needs loss=... for a plain {type(model).__name__}: e.g. "
                                 "mechscope.landscape.cross_entropy_loss or mse_loss for (x, y) data, or lm_loss "
                                 "for token ids")
        loss = lm_loss
    n = n_examples(data)
    select_parameters(module, params)  # fails early on an empty or unknown selection
    on_batch = lambda batch: loss(model, batch)  # noqa: E731
    if init_loss is None:
        with restored(module):
            init_loss = full_loss(on_batch, data, eval_batch_size)
    if not math.isfinite(init_loss):
        raise LandscapeError(f"the loss at the starting weights w* is {init_loss}: the LLC is defined around a "
                             "point of finite loss (check the data, the loss function and the weights)")
    chains = sample(on_batch, module, data, config, params, batches=batches, progress=progress,
                    desc=f"llc {component}" if component else "llc", vectorize=vectorize)
    draws = chains.losses[:, config.burn_in:]  # (chains, draws)
    finite = torch.isfinite(draws).all(1)
    per_chain = torch.where(finite, chains.nbeta * (draws.mean(1) - init_loss), torch.nan)
    good = per_chain[finite]
    k = int(good.numel())
    llc = float(good.mean()) if k else float("nan")
    se = float(good.std(unbiased=True) / math.sqrt(k)) if k > 1 else float("nan")
    t = _T975[k - 2] if 1 < k <= len(_T975) + 1 else 1.96
    interval = (llc - t * se, llc + t * se)
    warnings = _diagnose(chains.losses, chains.stopped, draws, per_chain, init_loss, config)
    est = LLCEstimate(llc, tuple(float(v) for v in per_chain), se, interval, float(init_loss), chains.losses,
                      chains.nbeta, n, chains.sampled, chains.n_sampled, config, warnings, component)
    if warnings and progress:
        note(f"llc{' ' + component if component else ''}: " + "; ".join(warnings))
    return est


def _diagnose(losses: Tensor, stopped: tuple[int | None, ...], draws: Tensor, per_chain: Tensor, init_loss: float,
              config: SGLDConfig) -> tuple[str, ...]:
    out = []
    bad = [c for c, s in enumerate(stopped) if s is not None]
    if bad:
        out.append(f"non-finite loss: chain(s) {bad} stopped at step(s) {[stopped[c] for c in bad]} "
                   "(lower step_size or raise localization)")
    finite = per_chain[torch.isfinite(per_chain)]
    if finite.numel() and float(finite.mean()) < 0:
        out.append(f"negative estimate {float(finite.mean()):.4g}: the chains found lower loss than at w* "
                   "(w* is not a local minimum, or step_size is too large / localization too small)")
    elif finite.numel() and bool((finite < 0).any()):
        out.append(f"{int((finite < 0).sum())} chain(s) with a negative estimate")
    ok = torch.isfinite(draws).all(1)
    if ok.any() and draws.shape[1] >= 8:
        d = draws[ok] - init_loss  # excess loss, (chains, draws)
        q = d.shape[1] // 4
        second, last = float(d[:, q:2 * q].mean()), float(d[:, -q:].mean())
        scale = max(abs(float(d.mean())), 1e-12)
        if last - second > 0.5 * scale:
            out.append(f"still rising: the excess loss of the last quarter of draws is {last:.3g}, of the second "
                       f"quarter {second:.3g} (more burn-in or draws, or a larger step_size)")
        if float(d.abs().max()) > 1e3 * scale and float(d.max()) > 100 * max(abs(init_loss), 1.0):
            out.append(f"diverging: a draw's loss exceeds L_n(w*) by {float(d.max()):.3g} (lower step_size)")
    return tuple(out)


def estimate_llc_components(model: Any, data: Batch, *,
                            components: Mapping[str, Component] | Iterable[str] | None = None, loss: Loss | None = None,
                            config: SGLDConfig = SGLDConfig(), per_head: bool = False, init_loss: float | None = None,
                            eval_batch_size: int = 256, progress: bool = True,
                            vectorize: bool = False) -> dict[str, LLCEstimate]:
    """One LLC estimate per component (`components.components(model)`, or the names / Components given):
    SGLD moves that component's weights only, every other weight frozen at w*. L_n(w*) is computed once
    (or taken from `init_loss`, e.g. a whole-model estimate's `init_loss` on the same data).
    `vectorize=True` runs each component's chains as one vmapped pass (see `sgld.sample`).

    Example::

        from mechscope.landscape import estimate_llc, estimate_llc_components
        whole = estimate_llc(model, ids)         # ids (batch, pos)
        per = estimate_llc_components(model, ids, init_loss=whole.init_loss)
        {name: e.llc for name, e in per.items()}
    """
    available = _components(model, per_head=per_head)
    if components is None:
        chosen = available
    elif isinstance(components, Mapping):
        chosen = dict(components)
    else:
        chosen = {}
        for name in components:
            if name not in available:
                raise LandscapeError(f"no component {name!r} in {type(_module(model)).__name__}; it has "
                                     + ", ".join(available))
            chosen[name] = available[name]
    if not chosen:
        raise LandscapeError("no components to estimate")
    if loss is None and not _is_adapter(model):
        raise LandscapeError("estimate_llc_components needs loss=... for a plain module")
    lossf = loss or lm_loss
    module = _module(model)
    init = init_loss
    if init is None:
        with restored(module):
            init = full_loss(lambda b: lossf(model, b), data, eval_batch_size)
    return {name: estimate_llc(model, data, loss=lossf, params=comp, config=config, init_loss=init,
                               eval_batch_size=eval_batch_size, progress=progress, component=name,
                               vectorize=vectorize)
            for name, comp in chosen.items()}


__all__ = ["LLCEstimate", "Loss", "cross_entropy_loss", "estimate_llc", "estimate_llc_components", "full_loss",
           "lm_loss", "mse_loss"]
