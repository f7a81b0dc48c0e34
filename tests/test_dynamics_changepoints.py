"""The change-point detector on synthetic series with known breaks, pure noise and permutations."""

from __future__ import annotations

import numpy as np
import pytest

from mechscope.dynamics.changepoints import control_flags, detect, find_dynamics, log_axis, permuted
from mechscope.zoo.train import checkpoint_schedule

STEPS = checkpoint_schedule(3000)  # the zoo's schedule: log-spaced and a linear floor, 85 checkpoints
X = log_axis(STEPS)


def _noise(rng, n_series, scale=1.0):
    return rng.normal(0, scale, (n_series, len(STEPS)))


def _known(rng):
    """Series with breaks at known checkpoints: a jump, a kink (slope change on the log axis) and a ramp."""
    n = len(STEPS)
    out, where = [], []
    for k in (20, 35, 50, 70):
        y = rng.normal(0, 0.2, n)
        y[k:] += 3.0  # a jump between checkpoints k-1 and k
        out.append(y)
        where.append([k])
    for k in (30, 60):
        y = rng.normal(0, 0.05, n) + np.where(np.arange(n) >= k, 4 * (X - X[k]), 0.0)  # flat, then rising
        out.append(y)
        where.append([k])
    return np.array(out), where


def test_known_breaks_are_found_within_one_sample():
    rng = np.random.default_rng(0)
    Y, where = _known(rng)
    data = np.vstack([Y, _noise(rng, 20)])
    dyn = find_dynamics(STEPS, [f"s{i}" for i in range(len(data))], ["c"] * len(data), data, rounds=300, seed=1)
    for fit, w in zip(dyn.fits, where):
        assert fit.breaks, f"no break found in the series with a break at {w}"
        assert min(abs(b - w[0]) for b in fit.breaks) <= 1, (fit.breaks, w)
        assert len(fit.breaks) <= 2, fit.breaks  # a clean break is one (a kink may add one nearby)
    # the same series alone, through `detect` with the calibrated threshold and scales
    for y, w, sc in zip(Y, where, dyn.null.scales):
        assert min(abs(b - w[0]) for b in detect(X, y, dyn.threshold, scale=sc).breaks) <= 1


def test_pure_noise_and_permuted_series_flag_nothing():
    rng = np.random.default_rng(1)
    Y, _ = _known(rng)
    noise = _noise(rng, 30)
    data = np.vstack([Y, noise])
    dyn = find_dynamics(STEPS, [f"s{i}" for i in range(len(data))], ["c"] * len(data), data, rounds=300, seed=2)
    noise_fits = dyn.fits[len(Y):]
    assert sum(len(f.breaks) for f in noise_fits) == 0
    assert all(dyn.fits[i].breaks for i in range(len(Y)))
    assert dyn.control_flagged == 0
    # the same detector on the targets permuted: nothing
    rng2 = np.random.default_rng(3)
    shuffled = permuted(data, rng2)
    flagged = sum(bool(detect(X, y, dyn.threshold, scale=s).breaks) for y, s in zip(shuffled, dyn.null.scales))
    assert flagged == 0
    assert control_flags(X, data, dyn.null, rounds=10, seed=9) == 0


def test_boundaries_pool_series_and_rank_components():
    rng = np.random.default_rng(6)
    n = len(STEPS)
    rows, comps, names = [], [], []
    for c, k, amp in (("A", 40, 3.0), ("A", 40, 2.0), ("B", 40, 1.5), ("C", 65, 3.0)):
        y = rng.normal(0, 0.1, n)
        y[k:] += amp
        rows.append(y)
        comps.append(c)
        names.append(f"m@{c}{len(rows)}")
    dyn = find_dynamics(STEPS, names, comps, np.array(rows), measures=["m"] * 4, rounds=300, seed=7)
    at = {b.k: b for b in dyn.boundaries}
    assert set(at) == {40, 65}
    ranked = dyn.ranked_components(at[40].moves)
    assert [c for c, _ in ranked] == ["A", "B"]  # A: 3/3 + 2/3 of the measure's scale, B: 1.5/3
    assert ranked[0][1] == pytest.approx(5 / 3, rel=0.05)
    assert [c for c, _ in dyn.ranked_components(at[65].moves)] == ["C"]
    assert at[40].step == pytest.approx(np.sqrt((1 + STEPS[39]) * (1 + STEPS[40])) - 1)


def test_chance_coverage_of_boundaries():
    import math
    from types import SimpleNamespace

    from mechscope.dynamics.study import chance_coverage

    steps = [0, 1, 10, 100, 1000]  # the axis ln(1 + step) runs from ln 2 to ln 1001
    span = math.log(1001) - math.log(2)
    one = [SimpleNamespace(step=30.0)]
    assert chance_coverage(one, 0.5, steps) == pytest.approx(1.0 / span, abs=2e-3)
    assert chance_coverage([], 0.5, steps) == 0.0
    assert chance_coverage(one + [SimpleNamespace(step=30.0)], 0.5, steps) == chance_coverage(one, 0.5, steps)
