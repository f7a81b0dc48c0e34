"""`mechscope dynamics RUN`: measures of every checkpoint, change points, phases, and checks on zoo runs.

Steps: build the `CheckpointSeries`; measure every checkpoint (`measures.py`; no behaviour named);
detect change points and phases (`changepoints.py`; the threshold from permuted series); then,
*after* detection and from the same measures, the checks of the zoo runs whose answer is known:

- every run: `null_control` — the detector at its threshold flags none of the control series (each
  series permuted over the checkpoints, 5 fresh permutations, a seed other than the calibration's).
- `induction` (two layers): `boundary_at_induction` — a boundary within one log-spaced checkpoint
  (ln(1 + last step) / 39 in ln(1 + step): the ratio between neighbours of the zoo's 40-point log
  schedule) of the first checkpoint where the largest layer-1 `role.prefix_matching` reaches 0.3;
  `components_at_induction` — at that boundary (the one with the most support if several are within
  reach), the top n + 1 components are the n layer-1 induction heads (prefix matching > 0.3 at the
  last checkpoint) and a layer-0 previous-token head (previous-token score > 0.3 at the last
  checkpoint): the smallest set that can hold them.
- `induction-1l`: `no_prefix_matching_phase` — no boundary whose top components (the first `top`)
  include a head whose prefix-matching fit rises by >= 0.1 across the boundary (from the checkpoint
  before its first member break to the one after its last). The same criterion is reported on
  `induction` as a figure, where it must fire.
- `modadd`: `boundary_at_<curve>_move` for the train loss (`log10_loss.train`), the restricted loss
  and the excluded loss (Nanda et al.'s progress measures, computed with the grokking replication's
  `progress_losses` and the final network's key frequencies). A curve *moves* at its steepest point
  on the log-step axis: the largest |change of log10 loss| / (change of ln(1 + step)) between a
  checkpoint and the first later checkpoint at least one log-spaced checkpoint away (the tolerance
  above; shorter spans would amplify the jitter of the dense late checkpoints), placed at the
  geometric midpoint of the two. A boundary passes within +-15% on the log scale:
  |ln((1 + boundary) / (1 + move))| <= ln(1.15).

The "boundary within" checks are as strong as the boundaries are few: `boundary_chance_coverage` (a
figure) is the share of the log-step axis within the check's tolerance of some boundary, the chance
that a step drawn at random would pass; each check's answer also gives the boundary's support rank.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.progress import echo, note, progress_bar
from ..models.load import check_device
from .changepoints import Dynamics, find_dynamics
from .data import HeldOut, from_file, from_zoo_run
from .measures import DEFAULT_LLC, LLCSettings, Measures, measure_series
from .series import CheckpointSeries

THRESH = 0.3  # a head role's score that names the role (as in `mechscope heads` and the replication)
RISE = 0.1
MODADD_TOLERANCE = math.log(1.15)


@dataclass
class DynamicsConfig:
    """The settings of one `mechscope dynamics` run (its command-line options).

    Example::

        from mechscope.dynamics import DynamicsConfig
        cfg = DynamicsConfig(sources=["zoo:induction"], llc=False, out="out/dyn")   # `mechscope dynamics` options
    """

    sources: list[str]  # one zoo name (zoo:NAME) or checkpoint paths
    base: str | None = None  # architecture for bare safetensors files
    tokens: str | None = None  # held-out token file for non-zoo series
    llc: bool = True
    llc_components: bool = True  # per-component LLC series beside the whole model's
    llc_per_head: bool = False  # the components include every attention head
    llc_draws: int | None = None  # draws per chain (None: `DEFAULT_LLC`'s)
    top: int = 5  # components listed per boundary and phase
    threads: int = 1
    workers: int | None = None  # processes estimating the LLC (None: `default_workers()`)
    seed: int = 0
    out: str | None = None
    device: str | None = None  # where the checkpoints run (cpu, cuda, cuda:N, mps); None: the CPU


def default_workers() -> int:
    """The LLC's worker processes when none are asked for: 2 when this process may use 2 or more cores, else 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 else 1


@dataclass(frozen=True)
class Check:
    """One check of a run: its target in words, the value measured, and whether it passes."""

    name: str
    target: str
    got: Any
    passed: bool

    def to_json(self) -> dict[str, Any]:
        """{"target", "got", "pass"}, as in every result line."""
        return {"target": self.target, "got": self.got, "pass": bool(self.passed)}


@dataclass
class Result:
    """What `analyse` returns: the measures, the change points and phases, and (after `run_checks`) the checks, with
    figures and timings.

    Example::

        from mechscope.dynamics import analyse
        res = analyse(series, llc=False)
        res.measures.steps, res.dynamics.boundaries, res.seconds
    """

    source: str
    measures: Measures
    dynamics: Dynamics
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def analyse(series: CheckpointSeries, data: dict[str, HeldOut] | None = None, *, modulus: int | None = None,
            llc: bool = True, llc_settings: LLCSettings = DEFAULT_LLC, seed: int = 0, progress: bool = True,
            workers: int = 1) -> Result:
    """Measures, change points and phases of a checkpoint series (no checks); `workers` >= 2 estimates the
    LLC in that many processes (`measure_series`).

    Example::

        from mechscope.dynamics import CheckpointSeries, analyse, from_zoo_run
        series = CheckpointSeries.from_zoo("induction")
        res = analyse(series, from_zoo_run(series.zoo_run), llc=False)
    """
    t0 = time.perf_counter()
    m = measure_series(series, data, modulus=modulus, llc=llc, llc_settings=llc_settings, progress=progress,
                       seed=seed, workers=workers)
    t1 = time.perf_counter()
    if progress:
        note(f"dynamics: change points of {len(m.series)} series over {len(m.steps)} checkpoints")
    Y = np.stack([s.values for s in m.series])
    dyn = find_dynamics(m.steps, [s.name for s in m.series], [s.component for s in m.series], Y,
                        measures=[s.measure for s in m.series], seed=seed)
    t2 = time.perf_counter()
    return Result(series.source, m, dyn, seconds={"measures": round(t1 - t0, 2), "detection": round(t2 - t1, 2)})


# --- checks ---------------------------------------------------------------------------------------

def log_checkpoint(steps: list[int]) -> float:
    """One checkpoint of the zoo's 40-point log schedule, in ln(1 + step)."""
    return math.log1p(steps[-1]) / 39


def _dist(a: float, b: float) -> float:
    return abs(math.log1p(a) - math.log1p(b))


def chance_coverage(boundaries: list, tol: float, steps: list[int]) -> float:
    """The share of the log-step axis, ln(1 + step) from the first nonzero checkpoint to the last, that lies
    within `tol` of some boundary: how often a step drawn at random on that axis would pass a
    "boundary within tol" check (the chance level of such a check)."""
    lo = math.log1p(next((s for s in steps if s > 0), steps[-1]))
    xs = np.linspace(lo, math.log1p(steps[-1]), 20001)
    near = np.zeros_like(xs, dtype=bool)
    for b in boundaries:
        near |= np.abs(xs - math.log1p(b.step)) <= tol
    return round(float(near.mean()), 3)


def _series(res: Result, measure: str, component: str) -> np.ndarray | None:
    found = res.measures.find(measure, component)
    return found[0].values if found else None


def _heads(res: Result, measure: str, layer: int) -> dict[str, np.ndarray]:
    return {s.component: s.values for s in res.measures.find(measure) if s.component.startswith(f"L{layer}H")}


def _fit(res: Result, name: str) -> np.ndarray:
    return res.dynamics.fits[res.dynamics.names.index(name)].fit


def rising_prefix_heads(res: Result, boundary, k: int) -> list[str]:
    """Heads among the boundary's top k components whose prefix-matching fit rises by >= RISE across it."""
    out = []
    for comp, _ in res.dynamics.ranked_components(boundary.moves, k):
        name = f"role.prefix_matching@{comp}"
        if name in res.dynamics.names:
            f = _fit(res, name)
            if f[boundary.hi] - f[boundary.lo] >= RISE:
                out.append(comp)
    return out


def _boundary_json(res: Result, b, top: int) -> dict[str, Any]:
    d, steps = res.dynamics, res.dynamics.steps
    return {"step": round(b.step, 1), "between": [steps[b.k - 1], steps[b.k]], "span": [steps[b.lo], steps[b.hi]],
            "support": round(b.support, 3), "series_breaking": len({m.series for m in b.members}),
            "top_components": [[c, round(v, 3)] for c, v in d.ranked_components(b.moves, top)],
            "top_measures": [[n, round(v, 3)] for n, v in d.ranked_series(b.moves, top)]}


def induction_checks(res: Result, top: int) -> tuple[list[Check], dict[str, Any]]:
    """The checks of a 2-layer induction run: prefix matching rises, a boundary near its rise, and the previous-token
    and induction heads among that boundary's top components."""
    d, steps = res.dynamics, res.dynamics.steps
    pm1 = _heads(res, "role.prefix_matching", 1)
    pt0 = _heads(res, "role.previous_token", 0)
    if not pm1 or not pt0:
        why = "no head-role measures of layers 0 and 1"
        return [Check("boundary_at_induction", "a boundary near the prefix-matching crossing", why, False),
                Check("components_at_induction", "induction and previous-token heads on top", why, False)], {}
    best = np.max(np.stack(list(pm1.values())), 0)
    crossed = [i for i, v in enumerate(best) if v >= THRESH]
    tol = log_checkpoint(steps)
    figures: dict[str, Any] = {"log_checkpoint_tolerance": round(tol, 4)}
    if not crossed:
        why = f"layer-1 prefix matching never reaches {THRESH} (max {best.max():.3f})"
        return [Check("boundary_at_induction", "a boundary near the prefix-matching crossing", why, False),
                Check("components_at_induction", "induction and previous-token heads on top", why, False)], figures
    cross = steps[crossed[0]]
    figures["prefix_matching_crosses_0.3_at"] = cross
    near = [b for b in d.boundaries if _dist(b.step, cross) <= tol]
    nearest = min(d.boundaries, key=lambda b: _dist(b.step, cross), default=None)
    by_support = sorted(d.boundaries, key=lambda b: -b.support)
    figures["nearest_boundary"] = None if nearest is None else round(nearest.step, 1)
    figures["boundary_chance_coverage"] = chance_coverage(d.boundaries, tol, steps)
    checks = [Check("boundary_at_induction",
                    f"a boundary within one log-spaced checkpoint (|d ln(1+step)| <= {tol:.3f}) of step {cross}",
                    None if nearest is None else f"{nearest.step:.0f} (|d ln| {_dist(nearest.step, cross):.3f}; "
                    f"support rank {by_support.index(nearest) + 1} of {len(d.boundaries)})", bool(near))]
    ind = sorted(h for h, v in pm1.items() if v[-1] > THRESH)
    prev = sorted(h for h, v in pt0.items() if v[-1] > THRESH)
    figures["induction_heads"], figures["previous_token_heads"] = ind, prev
    if near:
        b = max(near, key=lambda b: b.support)
        n = len(ind) + 1
        got = [c for c, _ in d.ranked_components(b.moves, n)]
        ok = bool(ind) and bool(prev) and set(ind) <= set(got) and any(h in got for h in prev)
        figures["rising_prefix_matching_heads_at_boundary"] = rising_prefix_heads(res, b, top)
        checks.append(Check("components_at_induction",
                            f"the top {n} components at the boundary near step {cross} are the layer-1 induction "
                            f"heads {ind} and a layer-0 previous-token head of {prev}", got, ok))
    else:
        checks.append(Check("components_at_induction", "induction and previous-token heads on top",
                            "no boundary near the crossing", False))
    return checks, figures


def control_checks(res: Result, top: int) -> tuple[list[Check], dict[str, Any]]:
    """The checks of the 1-layer control: no boundary has a head with rising prefix matching among its top components."""
    rising = {f"{b.step:.0f}": rising_prefix_heads(res, b, top) for b in res.dynamics.boundaries}
    bad = {k: v for k, v in rising.items() if v}
    best = max((float(s.values.max()) for s in res.measures.find("role.prefix_matching")), default=None)
    return [Check("no_prefix_matching_phase",
                  f"no boundary whose top {top} components include a head whose prefix matching rises by >= {RISE}",
                  bad or f"none of {len(rising)} boundaries", not bad and best is not None)], \
        {"max_prefix_matching": best}


def _steepest(steps: list[int], values: np.ndarray, span: float) -> float:
    """The steepest point of a curve on ln(1 + step) (see the module docstring)."""
    x = np.log1p(np.asarray(steps, dtype=np.float64))
    best, where = -1.0, float("nan")
    for i in range(len(x)):
        j = int(np.searchsorted(x, x[i] + span - 1e-12))
        if j >= len(x):
            break
        slope = abs(values[j] - values[i]) / (x[j] - x[i])
        if slope > best:
            best, where = slope, math.sqrt((1 + steps[i]) * (1 + steps[j])) - 1
    return where


@torch.no_grad()
def progress_curves(series: CheckpointSeries) -> dict[str, np.ndarray]:
    """Restricted and excluded loss (Nanda et al.) at every checkpoint of a modular-addition zoo run, with
    the key frequencies of its final checkpoint, in nats."""
    from .. import zoo
    from ..circuits.explanations import key_frequencies
    from ..replications.grokking import progress_losses

    cfg = series.info["config"]
    p = int(cfg["hparams"]["p"])
    split = zoo.RECIPES[cfg["recipe"]].data(cfg["hparams"], cfg["seed"])
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    x = torch.stack([a, b, torch.full_like(a, p)], 1)
    y = (a + b) % p
    is_train = torch.zeros(p * p, dtype=torch.bool)
    is_train[split.train_x[:, 0] * p + split.train_x[:, 1]] = True
    train_idx = is_train.nonzero().squeeze(1)
    freqs = key_frequencies(series.load(len(series) - 1), p)
    out: dict[str, list[float]] = {"restricted_loss": [], "excluded_loss": []}
    for i in progress_bar(range(len(series)), desc=f"dynamics: progress measures of {series.source}",
                          unit="checkpoint"):
        logits = series.load(i).run(x).logits[:, -1].cpu()  # the progress measures index it with CPU tensors
        m = progress_losses(logits, y, train_idx, p, freqs)
        for k in out:
            out[k].append(m[k])
    return {k: np.array(v) for k, v in out.items()} | {"key_frequencies": freqs}


def modadd_checks(res: Result, series: CheckpointSeries) -> tuple[list[Check], dict[str, Any]]:
    """The checks of a modular-addition run: a boundary within the tolerance of each loss curve's steepest move (train,
    restricted and excluded loss)."""
    steps = res.dynamics.steps
    span = log_checkpoint(steps)
    train = _series(res, "log10_loss.train", "model")
    curves: dict[str, np.ndarray | None] = {"train_loss": None if train is None else 10.0 ** train}
    pc = progress_curves(series)
    figures: dict[str, Any] = {"key_frequencies": pc.pop("key_frequencies"),
                               "boundary_chance_coverage": chance_coverage(res.dynamics.boundaries, MODADD_TOLERANCE,
                                                                           steps)}
    curves |= pc
    checks = []
    for name, v in curves.items():
        target = f"a boundary within +-15% (log scale) of the step where {name} moves (its steepest point)"
        if v is None:
            checks.append(Check(f"boundary_at_{name}_move", target, "curve not measured", False))
            continue
        move = _steepest(steps, v, span)
        figures[f"{name}_moves_at_log10"] = round(_steepest(steps, np.log10(v), span), 1)
        nearest = min(res.dynamics.boundaries, key=lambda b: _dist(b.step, move), default=None)
        figures[f"{name}_moves_at"] = round(move, 1)
        ok = nearest is not None and _dist(nearest.step, move) <= MODADD_TOLERANCE
        by_support = sorted(res.dynamics.boundaries, key=lambda b: -b.support)
        got = None if nearest is None else (f"move at {move:.0f}; nearest boundary {nearest.step:.0f} "
                                            f"(ratio {(1 + nearest.step) / (1 + move):.3f}; support rank "
                                            f"{by_support.index(nearest) + 1} of {len(by_support)})")
        checks.append(Check(f"boundary_at_{name}_move", target, got, ok))
    return checks, figures


def run_checks(res: Result, series: CheckpointSeries, top: int) -> None:
    """Add the null control and the checks of the run's recipe (induction, its 1-layer control, modadd) to `res`."""
    d = res.dynamics
    res.checks.append(Check("null_control", f"0 of {len(d.names)} series x {d.control_rounds} permutations flagged "
                            f"at the threshold {d.threshold:.3g}", d.control_flagged, d.control_flagged == 0))
    recipe = (series.info.get("config") or {}).get("recipe")
    layers = ((series.info.get("config") or {}).get("hparams") or {}).get("n_layers")
    extra: tuple[list[Check], dict[str, Any]] = ([], {})
    if recipe == "induction" and layers == 2:
        extra = induction_checks(res, top)
    elif recipe == "induction-1l":
        extra = control_checks(res, top)
    elif recipe == "modadd":
        extra = modadd_checks(res, series)
    res.checks += extra[0]
    res.figures |= extra[1]


# --- output ---------------------------------------------------------------------------------------

def to_json(res: Result, top: int) -> dict[str, Any]:
    """dynamics.json's content: every series with its fit and breaks, the boundaries, phases, checks and settings."""
    d = res.dynamics
    return {"source": res.source, "steps": d.steps, "threshold": d.threshold,
            "null": {"rounds": d.settings["rounds"], "scale_rounds": d.settings["scale_rounds"],
                     "quantile": d.settings["quantile"], "maxima_median": float(np.median(d.null.maxima)),
                     "control_flagged": d.control_flagged, "control_rounds": d.control_rounds},
            "settings": d.settings,
            "boundaries": [_boundary_json(res, b, top) for b in d.boundaries],
            "phases": [{"steps": [d.steps[p.start], d.steps[p.end]],
                        "top_components": [[c, round(v, 3)] for c, v in d.ranked_components(p.moves, top)],
                        "top_measures": [[n, round(v, 3)] for n, v in d.ranked_series(p.moves, top)]}
                       for p in d.phases],
            "series": [{"name": n, "measure": m, "component": c, "values": [float(v) for v in s.values],
                        "fit": [float(v) for v in f.fit], "breaks": [d.steps[k] for k in f.breaks],
                        "statistics": [round(t, 3) for t in f.stats]}
                       for n, m, c, s, f in zip(d.names, d.measures, d.components, res.measures.series, d.fits)],
            "unavailable": res.measures.unavailable, "info": res.measures.info,
            "seconds_per_measure": res.measures.seconds, "seconds": res.seconds,
            "checks": {c.name: c.to_json() for c in res.checks}, "figures": res.figures}


def workers_of(cfg: DynamicsConfig) -> int:
    """The LLC's worker processes a run uses: `cfg.workers`, else `default_workers()`."""
    if cfg.workers is None:
        return default_workers()
    if not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {cfg.workers!r}")
    return cfg.workers


def llc_settings_of(cfg: DynamicsConfig) -> LLCSettings:
    """The LLC settings a run asks for: `DEFAULT_LLC`, its draws replaced by `llc_draws`, components on or off."""
    model = dict(DEFAULT_LLC.model)
    comps = dict(DEFAULT_LLC.components or model) if cfg.llc_components else None
    if cfg.llc_draws is not None:
        model["draws"] = cfg.llc_draws
        if comps is not None:
            comps["draws"] = cfg.llc_draws
    return LLCSettings(model, comps, cfg.llc_per_head and cfg.llc_components)


def llc_figures(res: Result) -> dict[str, Any] | None:
    """The LLC's settings, its series' components and its time (total and per checkpoint), or None when it did
    not run."""
    m = res.measures
    if "llc_settings" not in m.info:
        return None
    n = max(1, len(m.steps))
    seconds = {k: v for k, v in m.seconds.items() if k.startswith("llc")}
    return {"settings": m.info["llc_settings"], "components": [s.component for s in m.find("llc")],
            "seconds": seconds, "seconds_per_checkpoint": {k: round(v / n, 2) for k, v in seconds.items()},
            "checkpoints_with_warnings": len(m.info.get("llc_warnings", {}))}


def result_line(res: Result, cfg: DynamicsConfig) -> dict[str, Any]:
    """The result line's object: figures (counts, threshold, timings, LLC settings), checks and pass."""
    d = res.dynamics
    figures = {"checkpoints": len(d.steps), "series": len(d.names), "threshold": round(d.threshold, 3),
               "series_with_breaks": sum(1 for f in d.fits if f.breaks),
               "boundaries": [round(b.step, 1) for b in d.boundaries],
               "boundary_support": [round(b.support, 2) for b in d.boundaries],
               "unavailable": res.measures.unavailable, "seconds": res.seconds,
               "seconds_per_measure": res.measures.seconds, "llc": llc_figures(res), **res.figures}
    return {"name": "dynamics", "kind": "study", "source": res.source,
            "machine": {"cpu_threads": torch.get_num_threads(), "llc_workers": workers_of(cfg) if cfg.llc else None,
                        "torch": torch.__version__, "gpu": None,
                        "python": platform.python_version(), "load_average_1min": round(os.getloadavg()[0], 2)},
            "config": asdict(cfg), "figures": figures, "checks": {c.name: c.to_json() for c in res.checks},
            "pass": bool(res.checks) and all(c.passed for c in res.checks)}


def print_result(res: Result, top: int, console: Any) -> None:
    """Print the boundaries, phases and checks as tables on `console` (a rich Console)."""
    from rich.table import Table

    d = res.dynamics
    steps = d.steps
    t = Table(title=f"{res.source}: {len(d.boundaries)} boundaries ({len(d.names)} series, {len(steps)} checkpoints, "
                    f"threshold {d.threshold:.3g} from {d.settings['rounds']} permutation rounds)")
    for col in ("boundary step", "span", "support", f"top {top} components", "measures that moved most"):
        t.add_column(col)
    for b in d.boundaries:
        t.add_row(f"{b.step:.0f}", f"{steps[b.lo]}-{steps[b.hi]}", f"{b.support:.2f}",
                  ", ".join(f"{c} {v:.2f}" for c, v in d.ranked_components(b.moves, top)),
                  ", ".join(f"{n} {v:.2f}" for n, v in d.ranked_series(b.moves, 3)))
    console.print(t)
    t = Table(title="phases")
    for col in ("steps", f"top {top} components", "measures that moved most"):
        t.add_column(col)
    for p in d.phases:
        if p.start == p.end:  # between two boundaries at neighbouring checkpoints: nothing moves inside it
            t.add_row(f"{steps[p.start]}", "(one checkpoint)", "")
            continue
        t.add_row(f"{steps[p.start]}-{steps[p.end]}",
                  ", ".join(f"{c} {v:.2f}" for c, v in d.ranked_components(p.moves, top)),
                  ", ".join(f"{n} {v:.2f}" for n, v in d.ranked_series(p.moves, 3)))
    console.print(t)
    for k, why in res.measures.unavailable.items():
        console.print(f"unavailable: {k}: {why}", highlight=False)
    for c in res.checks:
        console.print(f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.got} (target: {c.target})", highlight=False)
    lf = llc_figures(res)
    if lf is not None:
        st = lf["settings"]
        cfgs = "; ".join(f"{k} {v['chains']} chains x {v['draws']} draws, batch {v['batch_size']}"
                         for k, v in (("model", st["model"]), ("components", st["components"])) if v is not None)
        console.print(f"llc: {cfgs}; {len(lf['components'])} series; "
                      + ", ".join(f"{k} {v:.1f} s ({lf['seconds_per_checkpoint'][k]:.2f} s per checkpoint)"
                                  for k, v in lf["seconds"].items()), highlight=False)
    console.print(f"measures {res.seconds['measures']:.1f} s, detection {res.seconds['detection']:.1f} s "
                  f"(per measure: {res.measures.seconds})", highlight=False)


def build_series(cfg: DynamicsConfig) -> tuple[CheckpointSeries, dict[str, HeldOut], int | None]:
    """The checkpoint series of `cfg.sources`, its held-out data (the token file, else the zoo run's) and the modulus
    when the run names one."""
    check_device(cfg.device)  # a bad device fails before any checkpoint is read
    series = CheckpointSeries.from_paths(cfg.sources, cfg.base)
    series.device = cfg.device
    data: dict[str, HeldOut] = {}
    modulus = None
    if series.zoo_run is not None:
        p = (series.info.get("config") or {}).get("hparams", {}).get("p")
        modulus = int(p) if p is not None else None
    if cfg.tokens:
        data = from_file(cfg.tokens)
    elif series.zoo_run is not None:  # the token file, when given, replaces the run's data: not built then
        data = from_zoo_run(series.zoo_run)
    return series, data, modulus


def main(cfg: DynamicsConfig, console: Any, as_json: bool = False) -> dict[str, Any]:
    """`mechscope dynamics`: measure, detect, check, print, and write dynamics.json and dynamics.html to `cfg.out`;
    returns the result line."""
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    series, data, modulus = build_series(cfg)
    res = analyse(series, data, modulus=modulus, llc=cfg.llc, llc_settings=llc_settings_of(cfg), seed=cfg.seed,
                  workers=workers_of(cfg))
    t1 = time.perf_counter()
    run_checks(res, series, cfg.top)
    res.seconds["checks"] = round(time.perf_counter() - t1, 2)
    res.seconds["total"] = round(time.perf_counter() - t0, 2)
    print_result(res, cfg.top, console)
    if cfg.out:
        from .figures import write_html

        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        full = to_json(res, cfg.top)
        from ..core.files import write_json

        write_json(out / "dynamics.json", full)
        write_html(out / "dynamics.html", full)
        console.print(f"wrote {out / 'dynamics.json'} and {out / 'dynamics.html'}", highlight=False)
    line = result_line(res, cfg)
    if as_json:
        echo(json.dumps(line))
    return line
