"""Score carries how it was measured; bootstrap intervals behave as statistics says they should."""

import json

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


def test_bootstrap_custom_statistic_and_errors():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    lo, hi = bootstrap_ci(x, statistic=torch.median, seed=0)
    assert 1.0 <= lo <= hi <= 100.0
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
