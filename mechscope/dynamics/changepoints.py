"""Change points of series over training, on the log-step axis, with a threshold calibrated on a null.

One series (values y_i at checkpoints s_i, x_i = ln(1 + s_i)):
1. normalise: y -> (y - mean) / std (a constant series has no change point);
2. noise scale sigma: each interior point's residual from the straight line through its two
   neighbours, divided by its standard deviation under independent noise (sqrt(1 + a^2 + b^2) for
   interpolation weights a, b), then 1.4826 x the median absolute residual (robust to the change
   points themselves); floored at 1e-4 (the series' std is 1), so rounding is never structure;
3. binary segmentation with a piecewise-linear model in x: the statistic of a segment is
   T = (RSS(one line) - RSS(two lines split at k)) / sigma^2, maximised over k with at least
   `min_size` checkpoints on each side; the segment splits when T >= threshold, the strongest
   split first, at most `max_breaks` per series. A break at k lies between checkpoints k-1 and k.

The threshold is calibrated on a null, never on the series themselves: each series' values are
permuted over the checkpoints (ordering destroyed, values kept) and the first-split statistic of
every permuted series computed. Series differ in how large that statistic gets by chance (a
series with a few extreme values gets large ones), so each series' statistic is divided by its own
null scale, the median over `scale_rounds` (200) permutations; then, over `rounds` (1000) fresh
permutations, the largest scaled statistic over all series is one round's maximum, and the
threshold is the `quantile` (0.999) of those maxima: in 999 of 1000 rounds no permuted series at
all would be flagged (a family-wise threshold over the whole set of series, the max-statistic
permutation test). `control_flags` then runs the detector on fresh permutations (another seed)
and counts what it flags: nothing, at the default threshold, is the expected answer.

Moves are compared across series in the units of each series' measure: the series of one measure
(`role.prefix_matching` of every head, say) share a scale, the largest range of their fits, so a
head whose score barely moves counts less than one whose score crosses the scale, and different
measures weigh alike (each measure's largest move is 1).

Phases: every series' breaks are pooled; each break weighs the net move of its series' fit across
its two adjacent segments on its measure's scale (0..1). Greedily, the break position with the
most weight within +-tolerance (default ln(1 + last step) / 40, one checkpoint of a 40-point log
schedule) becomes a boundary and takes the breaks within the tolerance as members; this repeats
until the weight left is below `min_support`. The boundary sits at its members' weighted median
position; its step is the geometric midpoint of the two checkpoints around it,
sqrt((1 + s_{k-1})(1 + s_k)) - 1. The components at a boundary are those whose series break there,
ranked by the sum over those series of their move across the boundary (the fit's change from the
checkpoint before the boundary's first member break to the checkpoint after its last), on each
measure's scale. Between boundaries lie phases; in each, a series moved by the change of its fit
from the phase's first to its last checkpoint, and a component moved by the sum of its series' moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_SIZE = 3
MAX_BREAKS = 6
SIGMA_FLOOR = 1e-4
SCALE_ROUNDS = 200
ROUNDS = 1000
QUANTILE = 0.999
MIN_SUPPORT = 0.5


def log_axis(steps: Any) -> np.ndarray:
    """ln(1 + step) of each step, as float64: the axis change points are found on."""
    return np.log1p(np.asarray(steps, dtype=np.float64))


def normalise(Y: np.ndarray) -> np.ndarray:
    """Rows of Y to mean 0, std 1 (constant rows to 0)."""
    Y = np.atleast_2d(np.asarray(Y, dtype=np.float64))
    sd = Y.std(1, keepdims=True)
    return np.where(sd > 0, (Y - Y.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0)


def noise_scale(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Per row of normalised Y (m, n): robust noise sigma from residuals against neighbour lines."""
    Y = np.atleast_2d(Y)
    if Y.shape[1] < 3:
        return np.full(Y.shape[0], SIGMA_FLOOR)
    a = (x[2:] - x[1:-1]) / (x[2:] - x[:-2])  # weight of the left neighbour
    b = 1 - a
    r = (Y[:, 1:-1] - (a * Y[:, :-2] + b * Y[:, 2:])) / np.sqrt(1 + a ** 2 + b ** 2)
    return np.maximum(1.4826 * np.median(np.abs(r), axis=1), SIGMA_FLOOR)


def _sums(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Prefix sums (m, n+1) of 1, x, x^2, y, xy, y^2 with a leading 0, x centred."""
    xc = x - x.mean()
    m = Y.shape[0]

    def c(v: np.ndarray) -> np.ndarray:
        v = np.broadcast_to(v, (m, len(xc)))
        return np.concatenate([np.zeros((m, 1)), np.cumsum(v, 1)], 1)

    return c(np.ones_like(xc)), c(xc), c(xc * xc), c(Y), c(xc * Y), c(Y * Y)


def _rss(S: tuple[np.ndarray, ...], a: Any, b: Any) -> np.ndarray:
    """RSS of the least-squares line over [a, b) per row; a, b indices or 1-D arrays of them."""
    n, sx, sxx, sy, sxy, syy = (s[:, b] - s[:, a] for s in S)
    vx = sxx - sx * sx / n
    cxy = sxy - sx * sy / n
    rss = syy - sy * sy / n - np.where(vx > 1e-12, cxy * cxy / np.where(vx > 1e-12, vx, 1.0), 0.0)
    return np.maximum(rss, 0.0)


def best_split(x: np.ndarray, Y: np.ndarray, lo: int = 0, hi: int | None = None,
               min_size: int = MIN_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Per row of Y (m, n): the largest RSS gain of splitting [lo, hi) into two lines, and where (the
    first index of the right part). Rows too short to split get gain 0 and index -1."""
    Y = np.atleast_2d(Y)
    hi = Y.shape[1] if hi is None else hi
    m = Y.shape[0]
    ks = np.arange(lo + min_size, hi - min_size + 1)
    if len(ks) == 0:
        return np.zeros(m), np.full(m, -1)
    S = _sums(x, Y)
    whole = _rss(S, lo, hi)  # (m,)
    left = _rss(S, np.full(len(ks), lo), ks)  # (m, K)
    right = _rss(S, ks, np.full(len(ks), hi))
    gain = whole[:, None] - left - right
    j = gain.argmax(1)
    return gain[np.arange(m), j], ks[j]


@dataclass
class SeriesFit:
    """Change points of one series: `breaks` (first index of each new segment, sorted), the statistic
    of each, the noise scale, and the piecewise-linear fit in the series' own units."""

    breaks: list[int]
    stats: list[float]
    sigma: float
    fit: np.ndarray


def detect(x: np.ndarray, y: np.ndarray, threshold: float, min_size: int = MIN_SIZE,
           max_breaks: int = MAX_BREAKS, scale: float = 1.0) -> SeriesFit:
    """Binary segmentation of one series (see the module docstring); the statistic is divided by
    `scale` (the series' own null scale) before it is compared with `threshold`.

    Example::

        from mechscope.dynamics import detect
        x = np.arange(20.0)
        y = np.where(x < 10, 0.0, 1.0) + 0.01 * np.random.default_rng(0).standard_normal(20)  # (checkpoints,)
        detect(x, y, threshold=100.0).breaks      # [10]: the level jumps at step 10
    """
    y = np.asarray(y, dtype=np.float64)
    z = normalise(y)
    sigma = float(noise_scale(x, z)[0])
    breaks: list[tuple[int, float]] = []
    if y.std() > 0:
        todo = [(0, len(y))]
        cands: list[tuple[float, int, int, int]] = []  # (stat, k, lo, hi)
        while True:
            for lo, hi in todo:
                g, k = best_split(x, z, lo, hi, min_size)
                if k[0] >= 0:
                    cands.append((float(g[0]) / sigma ** 2 / scale, int(k[0]), lo, hi))
            todo = []
            cands.sort(reverse=True)
            if not cands or cands[0][0] < threshold or len(breaks) >= max_breaks:
                break
            t, k, lo, hi = cands.pop(0)
            breaks.append((k, t))
            todo = [(lo, k), (k, hi)]
    breaks.sort()
    ks = [k for k, _ in breaks]
    return SeriesFit(ks, [t for _, t in breaks], sigma, piecewise_fit(x, y, ks))


def piecewise_fit(x: np.ndarray, y: np.ndarray, breaks: list[int]) -> np.ndarray:
    """Least-squares line on each segment between breaks."""
    out = np.empty_like(np.asarray(y, dtype=np.float64))
    edges = [0, *breaks, len(y)]
    for a, b in zip(edges[:-1], edges[1:]):
        xs, ys = x[a:b], y[a:b]
        if b - a >= 2 and np.ptp(xs) > 0:
            slope, icpt = np.polyfit(xs - xs.mean(), ys, 1)
            out[a:b] = icpt + slope * (xs - xs.mean())
        else:
            out[a:b] = ys.mean()
    return out


def first_split_stats(x: np.ndarray, Y: np.ndarray, min_size: int = MIN_SIZE) -> np.ndarray:
    """The whole-series statistic T of every row (the first split binary segmentation would test)."""
    Z = normalise(Y)
    g, _ = best_split(x, Z, min_size=min_size)
    flat = np.asarray(Y).std(1) == 0
    return np.where(flat, 0.0, g / noise_scale(x, Z) ** 2)


def permuted(Y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's values in a random order of its own."""
    return rng.permuted(np.atleast_2d(Y), axis=1)


@dataclass(frozen=True)
class Null:
    """The calibration: each series' null scale (the median of its permuted first-split statistic) and
    the family-wise threshold on the scaled statistic."""

    threshold: float
    scales: np.ndarray  # (series,)
    maxima: np.ndarray  # (rounds,) the largest scaled statistic over all series, per round


def null_threshold(x: np.ndarray, Y: np.ndarray, rounds: int = ROUNDS, quantile: float = QUANTILE, seed: int = 0,
                   min_size: int = MIN_SIZE, scale_rounds: int = SCALE_ROUNDS) -> Null:
    """Calibrate on permutations of each row of Y (see the module docstring): `scale_rounds` rounds set
    each series' scale (the median of its statistic over them), `rounds` more give the maximum of the
    scaled statistic over all series per round, and the threshold is their `quantile`.

    Example::

        from mechscope.dynamics import null_threshold
        null = null_threshold(np.asarray(steps, float), Y, rounds=200)   # Y (series, checkpoints)
    """
    rng = np.random.default_rng(seed)
    T = np.array([first_split_stats(x, permuted(Y, rng), min_size) for _ in range(scale_rounds + rounds)])
    scales = np.median(T[:scale_rounds], 0)
    scales = np.where(scales > 0, scales, 1.0)
    maxima = (T[scale_rounds:] / scales).max(1)
    return Null(float(np.quantile(maxima, quantile)), scales, maxima)


def control_flags(x: np.ndarray, Y: np.ndarray, null: Null, rounds: int = 5, seed: int = 1,
                  min_size: int = MIN_SIZE) -> int:
    """How many (row, round) permuted control series the detector flags at the null's threshold
    (fresh permutations, another seed than the calibration's)."""
    rng = np.random.default_rng(seed)
    return int(sum((first_split_stats(x, permuted(Y, rng), min_size) / null.scales >= null.threshold).sum()
                   for _ in range(rounds)))


# --- phases -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Break:
    """One series' change point: the series, the first checkpoint after it, its position on the log-step axis, its
    scaled statistic and its weight."""

    series: int  # index into the names
    k: int  # first checkpoint index after the break
    x: float  # ln(1 + step) midway between checkpoints k-1 and k
    stat: float  # the scaled statistic T / scale
    weight: float  # net move of the fit over the two adjacent segments, on the measure's scale


@dataclass
class Boundary:
    """A change shared by several series: nearby breaks clustered, where it lies, their summed weight and each
    member series' move across it."""

    step: float  # geometric midpoint of the checkpoints around it
    k: int  # first checkpoint index after it
    support: float  # summed weight of its member breaks
    members: list[Break]
    lo: int  # checkpoint index before its first member break
    hi: int  # checkpoint index after its last member break
    moves: dict[int, float]  # series with a member break -> its move from lo to hi on its measure's scale


@dataclass
class Phase:
    """A stretch of checkpoints between boundaries and how far each series' fit moves over it."""

    start: int  # checkpoint index
    end: int  # checkpoint index (inclusive)
    moves: dict[int, float]  # series -> move of its fit from start to end, on its measure's scale


@dataclass
class Dynamics:
    """The detector's result over many named series.

    Example::

        from mechscope.dynamics import analyse
        res = analyse(series)
        for b in res.dynamics.boundaries:
            print(b.step, res.dynamics.ranked_components(b.moves, 5))
    """

    steps: list[int]
    names: list[str]
    measures: list[str]
    components: list[str]
    fits: list[SeriesFit]
    null: Null
    boundaries: list[Boundary]
    phases: list[Phase]
    control_flagged: int
    control_rounds: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """The null's threshold on the scaled statistic."""
        return self.null.threshold

    def ranked_components(self, moves: dict[int, float], k: int | None = None,
                          exclude: tuple[str, ...] = ("model",)) -> list[tuple[str, float]]:
        """Components by the summed move of their series in `moves`, largest first; `exclude` leaves out
        the whole-network tag (losses are measures of the model, not of a component)."""
        total: dict[str, float] = {}
        for i, mv in moves.items():
            c = self.components[i]
            if c not in exclude:
                total[c] = total.get(c, 0.0) + mv
        ranked = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked if k is None else ranked[:k]

    def ranked_series(self, moves: dict[int, float], k: int | None = None) -> list[tuple[str, float]]:
        """(name, move) of the series in `moves`, largest move first (ties by name); the first `k` when given."""
        ranked = sorted(((self.names[i], mv) for i, mv in moves.items()), key=lambda t: (-t[1], t[0]))
        return ranked if k is None else ranked[:k]


def _geo_mid(a: int, b: int) -> float:
    return math.sqrt((1 + a) * (1 + b)) - 1


def measure_scales(measures: list[str], fits: list[SeriesFit]) -> np.ndarray:
    """Per series: the largest fitted range among the series of its measure."""
    top: dict[str, float] = {}
    for m, f in zip(measures, fits):
        top[m] = max(top.get(m, 0.0), float(np.ptp(f.fit)))
    return np.array([top[m] for m in measures])


def find_dynamics(steps: list[int], names: list[str], components: list[str], Y: np.ndarray, *,
                  measures: list[str] | None = None, threshold: float | None = None, rounds: int = ROUNDS,
                  quantile: float = QUANTILE, tolerance: float | None = None, min_support: float = MIN_SUPPORT,
                  min_size: int = MIN_SIZE, max_breaks: int = MAX_BREAKS, seed: int = 0,
                  control_rounds: int = 5) -> Dynamics:
    """Breaks of every row of Y (series, checkpoints), the null threshold, boundaries and phases.
    `measures` names each series' measure (its scale group); by default every series is its own.

    Example::

        from mechscope.dynamics import find_dynamics
        dyn = find_dynamics(steps, names, components, Y, rounds=200)   # Y (series, checkpoints)
        dyn.boundaries, dyn.phases
    """
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] != len(steps) or Y.shape[0] != len(names) or len(components) != len(names):
        raise ValueError(f"Y must be (series, checkpoints) = ({len(names)}, {len(steps)}) with a component per "
                         f"series; got {Y.shape} and {len(components)} components")
    if list(steps) != sorted(set(steps)):
        raise ValueError("steps must be distinct and in training order")
    if not np.isfinite(Y).all():
        bad = names[int(np.nonzero(~np.isfinite(Y).all(1))[0][0])]
        raise ValueError(f"series {bad!r} has values that are not finite")
    measures = list(measures) if measures is not None else list(names)
    x = log_axis(steps)
    null = null_threshold(x, Y, rounds, quantile, seed, min_size)
    if threshold is not None:  # a threshold given by hand replaces the calibrated one (scales stay)
        null = Null(float(threshold), null.scales, null.maxima)
    flagged = control_flags(x, Y, null, control_rounds, seed + 1, min_size)
    fits = [detect(x, y, null.threshold, min_size, max_breaks, sc) for y, sc in zip(Y, null.scales)]
    scale = measure_scales(measures, fits)
    tol = tolerance if tolerance is not None else float(x[-1]) / 40

    def move(i: int, a: int, b: int) -> float:
        return float(abs(fits[i].fit[b] - fits[i].fit[a]) / scale[i]) if scale[i] > 0 else 0.0

    breaks = []
    for i, f in enumerate(fits):
        edges = [0, *f.breaks, len(steps)]
        for j, (k, t) in enumerate(zip(f.breaks, f.stats)):
            breaks.append(Break(i, k, float((x[k - 1] + x[k]) / 2), t, move(i, edges[j], edges[j + 2] - 1)))
    boundaries = _cluster(breaks, steps, tol, min_support)
    for b in boundaries:
        b.moves = {i: move(i, b.lo, b.hi) for i in sorted({m.series for m in b.members})}
    starts = [0, *[b.k for b in boundaries]]
    ends = [b.k - 1 for b in boundaries] + [len(steps) - 1]
    phases = [Phase(a, e, {i: move(i, a, e) for i in range(len(fits))}) for a, e in zip(starts, ends)]
    return Dynamics(list(steps), list(names), measures, list(components), fits, null, boundaries, phases,
                    flagged, control_rounds,
                    {"rounds": rounds, "scale_rounds": SCALE_ROUNDS, "quantile": quantile, "tolerance": tol,
                     "min_support": min_support, "min_size": min_size, "max_breaks": max_breaks, "seed": seed})


def _cluster(breaks: list[Break], steps: list[int], tol: float, min_support: float) -> list[Boundary]:
    left = list(breaks)
    out: list[Boundary] = []
    while left:
        pos = np.array([b.x for b in left])
        w = np.array([b.weight for b in left])
        near_all = np.abs(pos[:, None] - pos[None, :]) <= tol + 1e-12
        support = near_all @ w
        j = int(support.argmax())
        if support[j] < min_support:
            break
        members = [b for b, n in zip(left, near_all[j]) if n]
        left = [b for b, n in zip(left, near_all[j]) if not n]
        order = sorted(members, key=lambda b: b.k)
        cum, half, k = 0.0, sum(b.weight for b in order) / 2, order[-1].k
        for b in order:
            cum += b.weight
            if cum >= half:
                k = b.k
                break
        lo, hi = min(b.k for b in members) - 1, max(b.k for b in members)
        out.append(Boundary(_geo_mid(steps[k - 1], steps[k]), k, float(support[j]), members, lo, hi, {}))
    out.sort(key=lambda b: b.k)
    merged: list[Boundary] = []
    for b in out:  # two boundaries at the same checkpoint are one
        if merged and merged[-1].k == b.k:
            m = merged[-1]
            m.members += b.members
            m.support += b.support
            m.lo, m.hi = min(m.lo, b.lo), max(m.hi, b.hi)
        else:
            merged.append(b)
    return merged
