"""Score carries how it was measured; bootstrap intervals behave as statistics says they should."""

import json
import math

import pytest
import torch

import mechscope as ms
from mechscope.core import bootstrap_ci


def test_bootstrap_interval_covers_the_mean_at_about_the_nominal_rate():
    g = torch.Generator().manual_seed(0)
    hits = 0
    for trial in range(200):
        x = torch.randn(50, generator=g, dtype=torch.float64) + 3.0
        lo, hi = bootstrap_ci(x, n_boot=400, seed=trial)
        hits += lo <= 3.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # nominal 95%; percentile bootstrap runs slightly narrow at n=50


def test_bootstrap_is_deterministic_and_narrows_with_more_items():
    g = torch.Generator().manual_seed(1)
    small, large = torch.randn(20, generator=g), torch.randn(2000, generator=g)
    assert bootstrap_ci(small, seed=5) == bootstrap_ci(small, seed=5)
    w_small = bootstrap_ci(small)[1] - bootstrap_ci(small)[0]
    w_large = bootstrap_ci(large)[1] - bootstrap_ci(large)[0]
    assert w_large < w_small / 5  # width ~ 1/sqrt(n): sqrt(100) = 10


def test_bootstrap_median_interval_is_the_exact_bootstrap_quantile():
    """The bootstrap distribution of the median is known in closed form: for n distinct values
    x_(1) < ... < x_(n), a resample's (lower) median is at most x_(j) exactly when at least
    r = (n - 1) // 2 + 1 of its n draws are, a Binomial(n, j / n) event. The percentile interval's
    ends are therefore the first x_(j) whose probability reaches 2.5% and 97.5%."""
    x = torch.tensor([4.0, -1.0, 2.5, 100.0, 0.0, 7.0, 3.0, -6.0, 1.0, 9.0, 5.5], dtype=torch.float64)
    n, r = x.numel(), (x.numel() - 1) // 2 + 1
    cdf = [sum(math.comb(n, i) * (j / n) ** i * (1 - j / n) ** (n - i) for i in range(r, n + 1))
           for j in range(1, n + 1)]  # P(resample median <= x_(j))
    first = lambda p: next(j for j, c in enumerate(cdf) if c >= p)  # noqa: E731 - 0-based j of x_(j + 1)
    lo_j, hi_j = first(0.025), first(0.975)
    n_boot = 4000
    sd = math.sqrt(0.025 * 0.975 / n_boot)  # Monte Carlo error of a resampled CDF value near 2.5% / 97.5%
    for j, p in ((lo_j, 0.025), (hi_j, 0.975)):  # each end sits well inside one atom of the distribution
        assert cdf[j] - p > 4 * sd and p - cdf[j - 1] > 4 * sd
    lo, hi = bootstrap_ci(x, statistic=torch.median, n_boot=n_boot, seed=0)
    ordered = x.sort().values
    assert (lo, hi) == (float(ordered[lo_j]), float(ordered[hi_j])) == (0.0, 7.0)


def test_bootstrap_mean_interval_matches_the_normal_approximation():
    """For 400 normal values the mean's bootstrap interval is mean -/+ 1.96 s / sqrt(n) to within
    Monte Carlo error (about 1.5% of the half-width at 10 000 resamples)."""
    x = torch.randn(400, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2.0 + 1.0
    half = 1.959964 * float(x.std()) / math.sqrt(x.numel())
    lo, hi = bootstrap_ci(x, n_boot=10_000, seed=1)
    assert abs(lo - (float(x.mean()) - half)) < 0.06 * half and abs(hi - (float(x.mean()) + half)) < 0.06 * half


def test_bootstrap_errors():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci(x, confidence=1.5)


def test_score_prints_and_records_how_it_was_measured():
    s = ms.Score.from_items([0.9, 0.8, 1.1, -0.2], "logit_diff_recovered", dataset="ioi-abc", seed=3,
                            how={"ablation": "mean", "reference": "ioi-abc", "level": "node"})
    assert s.value == pytest.approx(0.65) and s.n == 4 and s.worst == -0.2
    text = str(s)
    for part in ("logit_diff_recovered", "ioi-abc", "n=4", "seed=3", "ablation=mean", "level=node", "95% CI"):
        assert part in text
    assert s.ci[0] <= s.value <= s.ci[1]
    q = s.quantiles((0.0, 1.0))
    assert q[0.0] == -0.2 and q[1.0] == 1.1
    assert json.loads(json.dumps(s.describe()))["how"]["ablation"] == "mean"
    assert "<table>" in s._repr_html_()


def test_score_needs_a_metric_and_per_item_values_for_quantiles():
    with pytest.raises(ValueError):
        ms.Score(value=1.0, metric="")
    with pytest.raises(ValueError):
        ms.Score(value=1.0, metric="kl").quantiles()
