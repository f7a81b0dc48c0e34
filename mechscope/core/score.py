"""Score: a number together with how it was measured, and a bootstrap confidence interval.

Scores in interpretability move from below 0% to above 100% with the choice of ablation, metric
and aggregation. A Score therefore never travels without them: `how` records the measurement
setting (ablation kind and its reference data, node or edge level, positions, direction, ...) as
plain key/value pairs; `metric`, `aggregation`, `dataset`, `n` and `seed` are fields of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def bootstrap_ci(values: Tensor | Sequence[float], statistic: Callable[[Tensor], Tensor] | None = None,
                 *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default: mean) over resampled items.

    Resamples are drawn in one batch: values (n,) -> indices (n_boot, n) -> statistic per row.

    Example::

        from mechscope.core import bootstrap_ci
        lo, hi = bootstrap_ci(torch.tensor([0.9, 0.8, 1.0, 0.7]))   # values (n,): interval of the mean
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(v.numel(), (n_boot, v.numel()), generator=g)  # (n_boot, n)
    samples = v[idx]
    stats = samples.mean(1) if statistic is None else torch.stack([statistic(row) for row in samples])
    alpha = (1 - confidence) / 2
    lo, hi = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


@dataclass(frozen=True)
class Score:
    """A measured value and everything needed to read it honestly.

    `per_item` keeps the per-prompt values when the score is an average, for quantiles and the
    worst case. `how` is the measurement setting, e.g. {"ablation": "mean", "reference":
    "ioi-abc", "level": "edge", "direction": "noising"}.

    Example::

        s = ms.Score.from_items([0.91, 0.88, 0.95], "logit_diff recovered", dataset="ioi-abc")
        s.value, s.ci, s.n                       # mean, bootstrap interval, 3
        s.worst
        print(s)
    """

    value: float
    metric: str
    ci: tuple[float, float] | None = None
    aggregation: str = "mean over items"
    dataset: str = "unnamed"
    n: int = 0
    seed: int | None = None
    how: Mapping[str, Any] = field(default_factory=dict)
    per_item: tuple[float, ...] | None = None
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError("a Score needs the name of its metric")
        object.__setattr__(self, "how", dict(self.how))

    @classmethod
    def from_items(cls, values: Tensor | Sequence[float], metric: str, *, dataset: str, seed: int = 0,
                   how: Mapping[str, Any] | None = None, n_boot: int = 1000,
                   confidence: float = 0.95) -> "Score":
        """The mean of per-item values with a bootstrap interval over items."""
        v = torch.as_tensor(values, dtype=torch.float64).flatten()
        return cls(value=float(v.mean()), metric=metric,
                   ci=bootstrap_ci(v, n_boot=n_boot, confidence=confidence, seed=seed),
                   aggregation="mean over items", dataset=dataset, n=int(v.numel()), seed=seed,
                   how=how or {}, per_item=tuple(v.tolist()), confidence=confidence)

    def quantiles(self, qs: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[float, float]:
        """Quantiles of the per-item values, {q: value}; raises ValueError when no per-item values were kept."""
        if not self.per_item:
            raise ValueError(f"{self.metric}: no per-item values were kept")
        t = torch.tensor(self.per_item, dtype=torch.float64)
        return {q: float(torch.quantile(t, q)) for q in qs}

    @property
    def worst(self) -> float:
        """The smallest per-item value (the worst case for a higher-is-better metric)."""
        if not self.per_item:
            raise ValueError(f"{self.metric}: no per-item values were kept")
        return min(self.per_item)

    def describe(self) -> dict[str, Any]:
        """Everything about the score as plain data (JSON-ready)."""
        return {"value": self.value, "metric": self.metric, "ci": list(self.ci) if self.ci else None,
                "confidence": self.confidence, "aggregation": self.aggregation, "dataset": self.dataset,
                "n": self.n, "seed": self.seed, "how": dict(self.how)}

    def __str__(self) -> str:
        ci = "" if self.ci is None else f" [{self.ci[0]:.4g}, {self.ci[1]:.4g}] {self.confidence:.0%} CI"
        how = ", ".join(f"{k}={v}" for k, v in self.how.items())
        return (f"{self.metric} = {self.value:.4g}{ci}; {self.aggregation}; {self.dataset} n={self.n}"
                f"{'' if self.seed is None else f' seed={self.seed}'}{'; ' + how if how else ''}")

    def _repr_html_(self) -> str:
        from .html import score_html

        return score_html(self)



def loss_recovered(ablated: tuple[Tensor, Tensor], explained: tuple[Tensor, Tensor], clean: tuple[Tensor, Tensor],
                   *, how: Mapping[str, Any], dataset: str, seed: int = 0, n_boot: int = 1000,
                   aggregation: str = "ratio of pooled losses") -> Score:
    """(L_ablated - L_explained) / (L_ablated - L_clean), each L pooled over the items' targets.

    Each argument is a per-item pair (sum of losses, number of targets), both (n,). The interval is
    a paired percentile bootstrap over items of the same ratio (resamples where it is undefined
    are dropped).
    """
    count = clean[1]

    def ratio(i: Tensor) -> Tensor:
        n = count[i].sum(-1)
        a, e, c = ablated[0][i].sum(-1) / n, explained[0][i].sum(-1) / n, clean[0][i].sum(-1) / n
        return (a - e) / (a - c)

    n = count.numel()
    value = float(ratio(torch.arange(n)))
    g = torch.Generator().manual_seed(seed)
    boots = ratio(torch.randint(n, (n_boot, n), generator=g))
    boots = boots[boots.isfinite()]
    ci = None if boots.numel() == 0 else tuple(
        torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=boots.dtype)).tolist())
    return Score(value=value, metric="loss_recovered", ci=ci, aggregation=aggregation,
                 dataset=dataset, n=n, seed=seed, how=how)
