"""Measures of every checkpoint, none of them aimed at a behaviour named in advance.

Each measure is a `Series`: one value per checkpoint, named `measure`, tagged with the component it
belongs to (`L1H3` a head, `L0.mlp`, `embed`, `pos_embed`, `unembed`, or `model` for the whole network)
and a label within the measure (a position, a bucket). The measures:

- `log10_loss`: mean next-token (or answer) loss on the held-out set, log10 (losses span decades);
  `log10_loss.train` on the training split when the run has one (modular addition).
- `log10_loss.position` per predicted position; `log10_loss.token_freq` per frequency bucket of
  the target token (the distinct targets sorted by how often they occur in the held-out set, cut
  into four buckets holding equal shares of the occurrences): generic classes from the data only.
- `loss_pca`: the per-token losses on a fixed subset of held-out tokens (at most 2048), one vector
  per checkpoint, centred over checkpoints and projected on their first five principal components
  (Olsson et al. 2022's "loss on tokens" trajectories); explained variance in `info`.
- `role.previous_token`, `role.prefix_matching`, `role.duplicate_token`: every head's scores from
  `circuits.head_roles` (repeated random tokens; the repeat length is min(20, (n_ctx - 1) // 2)), and
  `role.copying`: each head's OV copying score (`circuits.composition.copying_scores`).
- `norm.X` and `erank.X` for X in OV (W_V W_O) and QK (W_Q W_K^T) of every head, W_in, W_gate,
  W_out of every MLP, and W_E, W_pos, W_U: the Frobenius norm and the effective rank of Roy and
  Vetterli (2007), exp(entropy of the singular values normalised to sum to 1), from raw weights.
- `fourier.effective_frequencies` of the embedding when the inputs are residues modulo p (a zoo run
  whose config has `p`): the participation ratio (sum P)^2 / sum P^2 of the power of W_E[:p] per
  frequency 1..(p-1)/2, low when few frequencies hold the power.
- `llc`: the local learning coefficient from `mechscope.landscape.estimate_llc` on the held-out set
  (loss at the targets), for the whole model (`model`) and for each component of
  `landscape.components` (`estimate_llc_components`: SGLD moves that component's weights only),
  tagged `embed`, `L0.attn`, `L0.mlp`, `L0.norms`, `ln_final`, `unembed` (and `L1H3` per head when
  asked), with the settings of `DEFAULT_LLC` (the measurements behind them are in its docstring);
  when that module is missing or fails, listed in `unavailable` with the reason, never estimated
  some other way. Its settings are in `info["llc_settings"]`, its warnings per checkpoint in `info`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.factored import FactoredMatrix, effective_rank
from ..core.progress import progress_bar
from .data import HeldOut
from .series import CheckpointSeries

N_PCS = 5
PCA_TOKENS = 2048
FREQ_BUCKETS = 4


@dataclass(frozen=True)
class Series:
    """One measure over the checkpoints.

    Example::

        from mechscope.dynamics import measure_series
        s = measure_series(series, llc=False).series[0]
        s.name, s.values                         # values (checkpoint,)
    """

    measure: str
    component: str
    label: str
    values: np.ndarray  # (checkpoints,)

    @property
    def name(self) -> str:
        """"measure[label]@component" (no brackets without a label)."""
        return f"{self.measure}{f'[{self.label}]' if self.label else ''}@{self.component}"


@dataclass
class Measures:
    """Every series measured over the checkpoints at `steps`, why any measure could not run, and the time per
    measure group.

    Example::

        from mechscope.dynamics import measure_series
        m = measure_series(series, llc=False)
        m.steps, [s.name for s in m.find("log10_loss.position")]
    """

    steps: list[int]
    series: list[Series]
    unavailable: dict[str, str] = field(default_factory=dict)  # measure -> why it could not run
    info: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per measure group, summed over checkpoints

    def find(self, measure: str, component: str | None = None, label: str | None = None) -> list[Series]:
        """The series of `measure`, narrowed to `component` and `label` when given."""
        return [s for s in self.series if s.measure == measure and (component is None or s.component == component)
                and (label is None or s.label == label)]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record: steps, what was unavailable, info, times and every series' values."""
        return {"steps": self.steps, "unavailable": self.unavailable, "info": self.info, "seconds": self.seconds,
                "series": [{"name": s.name, "measure": s.measure, "component": s.component, "label": s.label,
                            "values": [float(v) for v in s.values]} for s in self.series]}


def head(layer: int, h: int) -> str:
    """The component name of head `h` of layer `layer`: "L{layer}H{h}"."""
    return f"L{layer}H{h}"


def factored_singular_values(a: Tensor, b: Tensor) -> Tensor:
    """Singular values (float64) of a @ b for a (..., m, r), b (..., r, n) with r small, without forming
    the product (`FactoredMatrix`); leading axes (layer, head) are batched."""
    return FactoredMatrix(a.double(), b.double()).S


def frequency_buckets(targets: Tensor, n: int = FREQ_BUCKETS) -> Tensor:
    """Bucket 0..n-1 of each target (1-D), by how often its token occurs among the targets: distinct
    tokens sorted by count (rarest first, ties by id), cut where the cumulative share of occurrences
    passes 1/n, 2/n, ..."""
    ids, counts = torch.unique(targets, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (int(counts[i]), int(ids[i])))
    cum, bucket_of = 0, {}
    total = int(counts.sum())
    for i in order:
        bucket_of[int(ids[i])] = min(n - 1, int(n * cum / total))
        cum += int(counts[i])
    return torch.tensor([bucket_of[int(t)] for t in targets.tolist()])


class _Rows:
    """Values gathered checkpoint by checkpoint, keyed by (measure, component, label)."""

    def __init__(self, n: int):
        self.n, self.data, self.seconds = n, {}, {}

    def put(self, i: int, measure: str, component: str, label: str, value: float) -> None:
        self.data.setdefault((measure, component, label), np.full(self.n, np.nan))[i] = value

    def timed(self, group: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        fn()
        self.seconds[group] = self.seconds.get(group, 0.0) + time.perf_counter() - t0


@torch.no_grad()
def token_losses(model: Any, data: HeldOut, tokens_per_run: int = 8192) -> Tensor:
    """Per-token loss (float64) at every target of `data`, in row-major order of `data.mask`; the rows
    run in chunks of about `tokens_per_run` tokens."""
    out = []
    chunk = max(1, tokens_per_run // data.ids.shape[1])
    for lo in range(0, data.ids.shape[0], chunk):
        ids, tg = data.ids[lo:lo + chunk], data.targets[lo:lo + chunk]
        logits = model.run(ids).logits
        m = tg >= 0
        # per-token losses in float64 on the CPU (MPS has no float64; the measures index them with CPU tensors)
        out.append(F.cross_entropy(logits[m.to(logits.device)].cpu().double(), tg[m], reduction="none"))
    return torch.cat(out)


def _loss_measures(rows: _Rows, i: int, model: Any, data: dict[str, HeldOut], pca_index: Tensor,
                   token_matrix: list[Tensor], buckets: Tensor) -> None:
    held = data["heldout"]
    per = token_losses(model, held)
    rows.put(i, "log10_loss", "model", "", math.log10(float(per.mean())))
    pos = held.mask.nonzero()[:, 1]
    if len(torch.unique(pos)) > 1:
        for p in torch.unique(pos).tolist():
            rows.put(i, "log10_loss.position", "model", str(p), math.log10(float(per[pos == p].mean())))
    for b in torch.unique(buckets).tolist():
        rows.put(i, "log10_loss.token_freq", "model", f"q{b + 1}", math.log10(float(per[buckets == b].mean())))
    token_matrix.append(per[pca_index])
    if "train" in data:
        rows.put(i, "log10_loss.train", "model", "", math.log10(float(token_losses(model, data["train"]).mean())))


def _role_measures(rows: _Rows, i: int, model: Any, n: int) -> None:
    from ..circuits.head_roles import head_roles

    vocab = int(model.weights().W_E.shape[0])
    roles = head_roles(model, n=n, batch=32, vocab=vocab)
    for name, scores in (("role.previous_token", roles.previous_token), ("role.prefix_matching", roles.induction),
                         ("role.duplicate_token", roles.duplicate_token)):
        for (layer, h), v in np.ndenumerate(scores.detach().cpu().numpy()):
            rows.put(i, name, head(layer, h), "", float(v))


def _copying_measure(rows: _Rows, i: int, model: Any) -> None:
    from ..circuits.composition import copying_scores

    w = model.weights()
    if w.W_E is not None and w.W_U is not None and w.W_E.shape[0] != w.W_U.shape[1]:
        raise ValueError(f"the input and output vocabularies differ ({w.W_E.shape[0]} and {w.W_U.shape[1]} tokens): "
                         "copying a token to the output is not defined")
    for (layer, h), v in np.ndenumerate(copying_scores(model).detach().cpu().numpy()):
        rows.put(i, "role.copying", head(layer, h), "", float(v))


@torch.no_grad()
def _weight_measures(rows: _Rows, i: int, model: Any) -> None:
    w = model.weights().to("cpu")  # float64 spectra on the CPU (MPS has no float64)

    def put(kind: str, component: str, s: Tensor) -> None:
        rows.put(i, f"norm.{kind}", component, "", float(s.double().pow(2).sum().sqrt()))
        rows.put(i, f"erank.{kind}", component, "", effective_rank(s))

    ov = factored_singular_values(w.W_V, w.W_O)  # (layer, head, d_head)
    qk = factored_singular_values(w.W_Q, w.W_K.transpose(-1, -2))
    for layer in range(w.W_Q.shape[0]):
        for h in range(w.W_Q.shape[1]):
            put("OV", head(layer, h), ov[layer, h])
            put("QK", head(layer, h), qk[layer, h])
        for kind in ("W_in", "W_gate", "W_out"):
            t = getattr(w, kind)
            if t is not None:
                put(kind, f"L{layer}.mlp", torch.linalg.svdvals(t[layer].double()))
    for kind, comp in (("W_E", "embed"), ("W_pos", "pos_embed"), ("W_U", "unembed")):
        t = getattr(w, kind)
        if t is not None:
            put(kind, comp, torch.linalg.svdvals(t.double()))


@torch.no_grad()
def _fourier_measure(rows: _Rows, i: int, model: Any, p: int) -> None:
    from ..circuits.explanations import fourier_basis

    # float64 on the CPU, where the Fourier basis is (MPS has no float64)
    coef = fourier_basis(p) @ model.weights().W_E[:p].cpu().double()  # (p, d_model)
    power = (coef[1:] ** 2).sum(-1).view(-1, 2).sum(-1)  # (frequency,)
    pr = float(power.sum() ** 2 / (power ** 2).sum()) if float(power.sum()) > 0 else 0.0
    rows.put(i, "fourier.effective_frequencies", "embed", "", pr)


@dataclass(frozen=True)
class LLCSettings:
    """The sampler settings of the `llc` measures (keyword arguments of `landscape.SGLDConfig`): `model`
    for the whole network, `components` for each component (None: no per-component estimates), and
    whether the components include every attention head (`per_head`). The defaults are the package's
    settings for dynamics; see `DEFAULT_LLC` for the measurements behind them."""

    model: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any] | None = field(default_factory=dict)
    per_head: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the settings."""
        return {"model": dict(self.model), "components": None if self.components is None else dict(self.components),
                "per_head": self.per_head}


DEFAULT_LLC = LLCSettings(model={"chains": 4, "draws": 200, "batch_size": 8},
                          components={"chains": 2, "draws": 200, "batch_size": 8})
"""Dynamics' LLC settings: ε = 1e-3, γ = 100, nβ = n / log n, no burn-in (`SGLDConfig`'s defaults); 200
draws per chain; minibatches of 8 held-out sequences; 4 chains for the whole model, 2 per component.

Measured on zoo:induction (512 held-out sequences of 64 tokens, nβ = 82; 4 chains, 1 thread):
- draws: the estimate over the first 100 draws differs from the one over 200 by more than its
  chain-to-chain standard error at all four checkpoints tried (steps 5, 314, 900, 3000: +1.4, +0.7,
  +0.6, +1.5 against s.e. 0.5, 0.4, 0.4, 0.2; the components at step 3000 likewise, e.g. the layer-0
  attention +2.0 against 0.2), so 100 draws are too few; from 200 to 400 draws it moves by 0.02
  (s.e. 0.5) at step 314 and by 0.5 (0.9%, s.e. 0.2) at step 3000.
- step size: ε = 2e-3 with 100 draws (half the steps) gave estimates 0.7-9.7% above ε = 1e-3 with 200
  draws (steps 5, 314, 900, 3000: 18.59 / 16.94, 18.29 / 16.99, 19.04 / 18.21, 59.21 / 58.80), where 400
  draws at 1e-3 agree with 200 within the standard error (16.89 and 16.97 at steps 5 and 314): the
  larger step biases the estimate upward, so ε stays 1e-3.
- batch 8 instead of 32: the same estimate within its standard error at the four checkpoints (16.94
  against 16.74 ± 0.5, 16.99 / 16.98 ± 0.4, 18.21 / 18.14 ± 0.4, 59.06 / 58.90 ± 0.2), at a quarter
  to a half of the time.
- chains leave the expected value alone and set the standard error; the components use 2 to halve
  their time.
- all chains of an estimate in one vmapped pass (`landscape.sample(vectorize=True)`: the same
  losses up to float rounding) costs more CPU per chain-step than the loop at these settings, paired
  in one process at step 900 (`benchmarks/sgld_chains.py`: the whole model and the components, ratio
  loop / vmapped 0.91 and 0.95 in two runs): a step here is mostly the kernels' own arithmetic
  (matrix products, the attention's masking and softmax), not per-operation overhead, and the pass
  pays only with more chains than dynamics runs (16). Likewise 2 threads were 5 to 200 times slower
  than 1 on the shared, loaded 2-core machine (load 4.7), so the sampler runs chain after chain on 1
  thread; `measure_series(workers=2)` (the command's default on 2 or more cores) spreads the
  checkpoints over 2 such processes instead.
- kernels: the chains run inside `model.fused()`, where the zoo transformer's attention is one fused
  kernel (nothing in the loss looks inside it); the values are those of the explicit attention to
  float rounding (`benchmarks/llc_kernels.py`, steps 314, 900, 1800, 3000: within 1.1e-5, relative
  above 1 and absolute below) at about 3/4 of the CPU time (paired ratio 1.31, 1.17 to 1.69)."""


def llc_component_tag(name: str) -> str:
    """The dynamics component tag of a `landscape.components` name: blocks.L.attn -> L{L}.attn,
    blocks.L.attn.H -> L{L}H{H}, blocks.L.mlp -> L{L}.mlp, blocks.L.norms -> L{L}.norms; others as they are."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        if len(parts) == 4 and parts[2] == "attn" and parts[3].isdigit():
            return head(int(parts[1]), int(parts[3]))
        return f"L{parts[1]}.{'.'.join(parts[2:])}"
    return name


def _llc_loss(m: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean cross-entropy at the targets of (ids, targets) held-out pairs, gradients flowing."""
    ids, targets = batch
    logits = m.run(ids, track_grad=True).logits
    keep = targets.to(logits.device) >= 0
    return F.cross_entropy(logits[keep].float(), targets.to(logits.device)[keep])


LLCResult = tuple[list[tuple[str, float]], list[str], dict[str, float]]
"""One checkpoint's LLC: (component tag, value) pairs, warnings prefixed by the component, seconds per group."""


def _llc_values(model: Any, data: dict[str, HeldOut], settings: LLCSettings) -> LLCResult:
    """`mechscope.landscape.estimate_llc` on the held-out set, read as (ids, targets) pairs with the loss at
    the targets, for the whole model and (`estimate_llc_components`, SGLD moving that component's weights
    only) for each component: the (component tag, value) pairs, the warnings prefixed by the component, and
    the seconds of the two groups."""
    from ..landscape import SGLDConfig, estimate_llc, estimate_llc_components  # the caller reports a missing module

    held = data["heldout"]
    pair = (held.ids, held.targets)
    values: list[tuple[str, float]] = []
    found: list[str] = []
    seconds: dict[str, float] = {}
    fused = getattr(model, "fused", None)  # the chains never look inside attention: its fused kernels, if any
    with fused() if callable(fused) else nullcontext():
        t0 = time.perf_counter()
        est = estimate_llc(model, pair, loss=_llc_loss, config=SGLDConfig(**settings.model), progress=False)
        values.append(("model", float(est.llc)))
        found.extend(f"model: {w}" for w in getattr(est, "warnings", ()))
        seconds["llc"] = time.perf_counter() - t0
        if settings.components is not None:
            t0 = time.perf_counter()
            per = estimate_llc_components(model, pair, loss=_llc_loss, config=SGLDConfig(**settings.components),
                                          per_head=settings.per_head, init_loss=est.init_loss, progress=False)
            for name, e in per.items():
                tag = llc_component_tag(name)
                values.append((tag, float(e.llc)))
                found.extend(f"{tag}: {w}" for w in getattr(e, "warnings", ()))
            seconds["llc.components"] = time.perf_counter() - t0
    return values, found, seconds


def _llc_failure(e: BaseException) -> str:
    """Why the `llc` measure is unavailable after `e`: never estimated some other way."""
    if isinstance(e, ImportError):
        return f"mechscope.landscape.estimate_llc is not available ({e})"
    return f"mechscope.landscape.estimate_llc failed: {type(e).__name__}: {e}"


def _put_llc(rows: _Rows, i: int, result: LLCResult, warnings: dict[int, list[str]]) -> None:
    values, found, seconds = result
    for tag, v in values:
        rows.put(i, "llc", tag, "", v)
    for group, sec in seconds.items():
        rows.seconds[group] = rows.seconds.get(group, 0.0) + sec
    if found:
        warnings[i] = found


# The checkpoints' LLC in worker processes. The processes are forked from the caller, so they inherit the
# series, the data and the settings (no pickling of loaders or models); each runs one torch thread and
# estimates whole checkpoints, sending back plain values. A chain's seeds depend on the chain alone (see
# `landscape.sgld`), never on the worker, so the values are those of the same checkpoints in one process.
_WORK: dict[str, Any] = {}


def _llc_worker_init(series: CheckpointSeries, data: dict[str, HeldOut], settings: LLCSettings) -> None:
    torch.set_num_threads(1)
    _WORK.update(series=series, data=data, settings=settings)


def _llc_worker(i: int) -> tuple[LLCResult | None, str | None]:
    """The LLC values of checkpoint `i` in a worker, or why they could not be estimated."""
    try:
        return _llc_values(_WORK["series"].load(i), _WORK["data"], _WORK["settings"]), None
    except Exception as e:  # noqa: BLE001 - sent back and reported, never replaced by another estimate
        return None, _llc_failure(e)


def llc_workers_possible(series: CheckpointSeries) -> str | None:
    """Why the LLC cannot run in worker processes for `series` (None when it can): the workers are forked,
    and run on the CPU."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return "this platform cannot fork worker processes"
    device = getattr(series, "device", None)
    if device not in (None, "cpu") and not str(device).startswith("cpu"):
        return f"the checkpoints run on {device}; workers run on the CPU"
    return None


class _LLCPool:
    """Every checkpoint's LLC submitted at once to `workers` forked processes; `result(i)` waits for one."""

    def __init__(self, series: CheckpointSeries, data: dict[str, HeldOut], settings: LLCSettings, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        others = set(multiprocessing.active_children())
        self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_llc_worker_init, initargs=(series, data, settings))
        self.futures = [self.executor.submit(_llc_worker, i) for i in range(len(series))]
        # forked workers all start at the first submit: the children that appeared are this pool's
        self.workers = [p for p in multiprocessing.active_children() if p not in others]

    def result(self, i: int) -> tuple[LLCResult | None, str | None]:
        return self.futures[i].result()

    def close(self) -> None:
        """Drop the pending checkpoints and wait for the running ones (the normal end of a run)."""
        self.executor.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        """Drop the pending checkpoints and end the running ones now (the run failed or was interrupted)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        for p in self.workers:
            p.terminate()
        for p in self.workers:
            p.join()


def probe_length(model: Any) -> int:
    """The head-role probe's repeat length: min(20, (n_ctx - 1) // 2), 20 without learned positions."""
    w_pos = model.weights().W_pos
    return 20 if w_pos is None else min(20, (int(w_pos.shape[0]) - 1) // 2)


def measure_series(series: CheckpointSeries, data: dict[str, HeldOut] | None = None, *, modulus: int | None = None,
                   llc: bool = True, llc_settings: LLCSettings = DEFAULT_LLC, progress: bool = True,
                   seed: int = 0, workers: int = 1) -> Measures:
    """Every measure (see the module docstring) at every checkpoint, one network loaded at a time.

    `workers` >= 2 estimates the checkpoints' LLC in that many forked processes of one torch thread each,
    while this process takes the other measures; the values are those of `workers=1` (the chains' seeds do
    not depend on the worker). Where processes cannot be forked (or the checkpoints run on an accelerator)
    the LLC runs here, checkpoint after checkpoint.

    Example::

        from mechscope.dynamics import CheckpointSeries, measure_series
        m = measure_series(CheckpointSeries.from_zoo("induction"), llc=False)
    """
    n = len(series)
    rows = _Rows(n)
    unavailable: dict[str, str] = {}
    data = data or {}
    if "heldout" not in data:
        unavailable["log10_loss"] = "no held-out token data (a zoo run gives it; else pass a token file)"
        unavailable["loss_pca"] = unavailable["log10_loss"]
    pca_index = torch.empty(0, dtype=torch.long)
    buckets = torch.empty(0, dtype=torch.long)
    if "heldout" in data:
        buckets = frequency_buckets(data["heldout"].targets[data["heldout"].mask])
        k = len(data["heldout"])
        g = torch.Generator().manual_seed(seed)
        pca_index = torch.randperm(k, generator=g)[:PCA_TOKENS].sort().values
    if modulus is None:
        unavailable["fourier.effective_frequencies"] = "the inputs are not residues modulo p (no `p` in the run's config)"
    token_matrix: list[Tensor] = []
    llc_warnings: dict[int, list[str]] = {}
    probe_n = None
    pool, in_process = None, None
    if llc and "heldout" in data and workers > 1:
        in_process = llc_workers_possible(series)
        if in_process is None:
            pool = _LLCPool(series, data, llc_settings, workers)  # the workers estimate while this loop measures
    try:
        for i in progress_bar(range(n), desc=f"dynamics: measures of {series.source}", unit="checkpoint",
                              disable=not progress):
            model = series.load(i)
            if "heldout" in data:
                rows.timed("loss", lambda: _loss_measures(rows, i, model, data, pca_index, token_matrix, buckets))
            if probe_n is None:
                probe_n = probe_length(model)
                if probe_n < 4:
                    unavailable["role"] = (f"a context of {2 * probe_n + 1} positions is too short for the "
                                           "repeated-token probe (needs a repeat of >= 4 tokens)")
            if "role" not in unavailable:
                rows.timed("head roles", lambda: _role_measures(rows, i, model, probe_n))
            if "role.copying" not in unavailable:
                try:
                    rows.timed("copying", lambda: _copying_measure(rows, i, model))
                except ValueError as e:
                    unavailable["role.copying"] = str(e)
            rows.timed("weights", lambda: _weight_measures(rows, i, model))
            if modulus is not None:
                rows.timed("fourier", lambda: _fourier_measure(rows, i, model, modulus))
            if pool is None and llc and "llc" not in unavailable and "heldout" in data:
                try:
                    _put_llc(rows, i, _llc_values(model, data, llc_settings), llc_warnings)
                except Exception as e:  # noqa: BLE001 - reported, never replaced by another estimate
                    unavailable["llc"] = _llc_failure(e)
            del model
        if pool is not None:
            for i in progress_bar(range(n), desc=f"dynamics: llc of {series.source} ({workers} workers)",
                                  unit="checkpoint", disable=not progress):
                result, failed = pool.result(i)
                if failed is not None:
                    unavailable["llc"] = failed
                    break
                _put_llc(rows, i, result, llc_warnings)
    except BaseException:
        if pool is not None:  # an error or an interrupt here: the workers stop with the run
            pool.stop()
        raise
    if pool is not None:
        pool.close()
    if not llc:
        unavailable["llc"] = "not asked for (--no-llc)"
    elif "heldout" not in data:
        unavailable.setdefault("llc", "no held-out token data to estimate it on")
    out = [Series(m, c, lab, v) for (m, c, lab), v in rows.data.items() if np.isfinite(v).all()]
    info: dict[str, Any] = {"checkpoints": n, "probe_n": probe_n}
    dropped = [Series(m, c, lab, v).name for (m, c, lab), v in rows.data.items()
               if not np.isnan(v).any() and not np.isfinite(v).all()]
    if dropped:  # an infinite loss, say: the series cannot be fitted
        info["dropped_not_finite"] = dropped
    if llc and "llc" not in unavailable:
        info["llc_settings"] = llc_settings.to_json()
        info["llc_workers"] = workers if pool is not None else 1
        if in_process is not None:
            info["llc_in_process"] = f"{workers} workers asked for, the LLC ran in this process: {in_process}"
    if llc_warnings:
        info["llc_warnings"] = {str(series.steps[i]): w for i, w in llc_warnings.items()}
    if token_matrix:
        t0 = time.perf_counter()
        pcs, ratio = _pca(torch.stack(token_matrix))
        for k in range(pcs.shape[1]):
            out.append(Series("loss_pca", "model", f"pc{k + 1}", pcs[:, k]))
        info["loss_pca_explained_variance"] = [round(float(r), 4) for r in ratio]
        info["loss_pca_tokens"] = int(pca_index.numel())
        rows.seconds["loss"] = rows.seconds.get("loss", 0.0) + time.perf_counter() - t0
    return Measures(list(series.steps), out, unavailable, info, {k: round(v, 2) for k, v in rows.seconds.items()})


def _pca(m: Tensor, k: int = N_PCS) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the rows of m (checkpoints, tokens) on their first k principal components (centred over
    checkpoints), each component's sign set so its largest loading is positive; and explained ratios."""
    x = (m - m.mean(0, keepdim=True)).double()
    u, s, vt = torch.linalg.svd(x, full_matrices=False)
    k = min(k, int((s > 1e-12 * s.max()).sum()) if s.numel() else 0)
    sign = torch.sign(vt[:k].gather(1, vt[:k].abs().argmax(1, keepdim=True))).squeeze(1)
    scores = u[:, :k] * s[:k] * sign
    ratio = (s[:k] ** 2) / (s ** 2).sum()
    return scores.numpy(), ratio.numpy()
