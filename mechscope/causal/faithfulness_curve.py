"""Faithfulness over circuit size: f(k) for the k top-ranked edges, its areas, and a random baseline.

Steps:
1. rank the edges by |score| (any EdgeScores: EAP, EAP-IG, exact patching, an ACDC sweep);
2. for each size k (default: 0, then log-spaced up to every edge), the circuit of the top k edges,
   and `n_random` circuits of k edges drawn at random (seeded); masks for all of them, plus the
   intact model and the empty circuit, in batched forward passes;
3. f(k) = (m(C_k) - m(empty)) / (m(M) - m(empty)), prompt-averaged metrics first, then the ratio;
   per-prompt values are kept for quantiles and the worst case;
4. the areas over x = k / n_edges in [0, 1] by the trapezoid rule:
       CPR (circuit performance ratio) = area under f        (higher: a small circuit does the task)
       CMD (circuit-model distance)    = area under |1 - f|  (lower: the circuit behaves like the model)
   for the ranking and for the random circuits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..models import wrap
from .ablation import AblationSpec
from .eap import orient
from .edges import EdgeScores, ablated_values, metric_name, passes_how
from .graph import Graph
from .path_patching import run_masks


@dataclass(frozen=True)
class FaithfulnessCurve:
    """f(k) per size (`values`), per prompt (`per_prompt`, (size, prompt)), and for random circuits
    (`random`, (size, draw)); the areas and how it was measured.

    Example::

        from mechscope.causal import faithfulness_curve
        curve = faithfulness_curve(model, clean, scores, ld, spec, reference_inputs=corrupt)
        curve.values                             # (size,) f(k); curve.per_prompt (size, prompt)
        curve.cpr, curve.random_cpr              # area under it, and for random circuits
    """

    sizes: tuple[int, ...]
    n_edges: int
    values: Tensor  # (size,)
    per_prompt: Tensor  # (size, prompt)
    random: Tensor  # (size, draw)
    cpr: float
    cmd: float
    random_cpr: float
    random_cmd: float
    how: dict[str, Any] = field(default_factory=dict)

    def quantiles(self, q: Sequence[float] = (0.05, 0.5, 0.95)) -> Tensor:
        """(size, len(q)): quantiles of per-prompt faithfulness at each size."""
        return torch.quantile(self.per_prompt.double(), torch.tensor(q, dtype=torch.float64), dim=1).T

    def worst(self) -> Tensor:
        """(size,): the worst prompt's faithfulness at each size."""
        return self.per_prompt.min(1).values

    def rows(self) -> list[dict[str, float]]:
        """One dict per size: edges kept, their fraction, faithfulness, random baseline's mean, quantiles and
        worst prompt."""
        q = self.quantiles()
        return [{"edges": k, "fraction": k / self.n_edges, "f": float(self.values[i]),
                 "random_f": float(self.random[i].mean()), "p05": float(q[i, 0]), "median": float(q[i, 1]),
                 "p95": float(q[i, 2]), "worst": float(self.worst()[i])} for i, k in enumerate(self.sizes)]

    def __str__(self) -> str:
        lines = [f"faithfulness curve[{self.how.get('metric')}]: CPR={self.cpr:.3f} CMD={self.cmd:.3f} "
                 f"(random circuits: CPR={self.random_cpr:.3f} CMD={self.random_cmd:.3f}); "
                 + ", ".join(f"{k}={v}" for k, v in self.how.items() if k != "metric"),
                 f"{'edges':>8} {'f(k)':>8} {'random':>8} {'p05':>8} {'median':>8} {'worst':>8}"]
        for r in self.rows():
            lines.append(f"{r['edges']:>8d} {r['f']:>8.3f} {r['random_f']:>8.3f} {r['p05']:>8.3f} "
                         f"{r['median']:>8.3f} {r['worst']:>8.3f}")
        return "\n".join(lines)


def default_sizes(n_edges: int, points: int = 12) -> list[int]:
    """0, then `points` sizes log-spaced from 1 to n_edges."""
    ks = torch.logspace(0, torch.log10(torch.tensor(float(n_edges))), points).round().long().tolist()
    return sorted({0, *ks, n_edges})


def areas(sizes: Sequence[int], f: Tensor, n_edges: int) -> tuple[float, float]:
    """(CPR, CMD): trapezoid areas of f and |1 - f| over x = k / n_edges, divided by the x range covered."""
    x = torch.tensor([k / n_edges for k in sizes], dtype=torch.float64)
    f = f.double()
    span = float(x[-1] - x[0]) or 1.0
    return float(torch.trapezoid(f, x)) / span, float(torch.trapezoid((1 - f).abs(), x)) / span


def faithfulness_curve(model: Any, inputs: Tensor, scores: EdgeScores, metric: Callable[[Tensor], Tensor],
                       spec: AblationSpec, *, sizes: Sequence[int] | None = None,
                       reference_inputs: Tensor | None = None, n_random: int = 5, seed: int = 0,
                       dataset: str = "unnamed", max_rows: int = 256, progress: bool = False) -> FaithfulnessCurve:
    """f(k) of the top-k edges of `scores` for each size k, against random circuits of the same sizes.

    Example::

        from mechscope.causal import faithfulness_curve
        curve = faithfulness_curve(model, clean, scores, ld, spec, sizes=[10, 50, 200], reference_inputs=corrupt)
        curve.values                             # (size,)
    """
    model = wrap(model)
    graph: Graph = scores.graph
    n = graph.n_edges
    sizes = sorted(set(sizes)) if sizes is not None else default_sizes(n)
    if any(not 0 <= k <= n for k in sizes):
        raise ValueError(f"sizes must lie in 0..{n}")
    run_on, ref = orient(spec, inputs, reference_inputs)
    ablated = ablated_values(model, graph, spec, run_on, ref)
    order = torch.tensor(scores.ranking(), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)

    def removed(keep: Tensor) -> Tensor:  # (n_edges,) mask of the edges to swap, for a kept set
        inside = torch.zeros(n)
        inside[keep] = 1.0
        return 1 - inside if spec.direction == "noising" else inside

    masks = [removed(torch.tensor([], dtype=torch.long)), removed(torch.arange(n))]  # empty, intact
    masks += [removed(order[:k]) for k in sizes]
    masks += [removed(torch.randperm(n, generator=g)[:k]) for k in sizes for _ in range(n_random)]
    m, passes = run_masks(model, graph, run_on, torch.stack(masks), ablated, metric, max_rows, progress,
                          "faithfulness curve")
    m = m.double()  # (config, prompt)
    empty, full = m[0], m[1]
    top = m[2: 2 + len(sizes)]
    rand = m[2 + len(sizes):].view(len(sizes), n_random, -1)
    denom = full.mean() - empty.mean()
    values = (top.mean(1) - empty.mean()) / denom
    per_prompt = (top - empty) / (full - empty)
    random = (rand.mean(2) - empty.mean()) / denom  # (size, draw)
    cpr, cmd = areas(sizes, values, n)
    rcpr, rcmd = areas(sizes, random.mean(1), n)
    how = {"metric": metric_name(metric), "ranking": scores.how.get("method", "?"), **spec.describe(),
           "level": "edge", "aggregation": "mean over prompts, then normalise", "dataset": dataset,
           "n": int(run_on.shape[0]), "random_draws": n_random, "seed": seed,
           "x": "fraction of edges (trapezoid)", **passes_how(passes + ablated.forward_passes, 0)}
    return FaithfulnessCurve(tuple(sizes), n, values.float(), per_prompt.float(), random.float(), cpr, cmd, rcpr,
                             rcmd, how)
