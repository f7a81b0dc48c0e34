"""Robustness report: one circuit re-scored under several ablations, at node and at edge level.

A faithfulness number depends on how the rest of the model is removed. This report scores the
same circuit under each ablation kind (resample, mean, zero, and the counterfactual patch when
counterfactuals are given) at node granularity (every component outside the circuit's nodes
ablated) and at edge granularity (every edge outside the circuit ablated), each with the task
metric recovered and the KL divergence of the circuit's output from the model's. One batched
forward pass per row (plus one reference pass per ablation kind).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from ..core import Score
from ..models import wrap
from .ablation import AblationSpec
from .edge_faithfulness import recovery
from .graph import Circuit, Graph, graph_of


@dataclass(frozen=True)
class RobustnessRow:
    """One ablation and level of a robustness report: the circuit's faithfulness and KL under it."""

    kind: str
    level: str
    faithfulness: Score
    kl: Score


@dataclass(frozen=True)
class RobustnessReport:
    """How a circuit's faithfulness changes with the ablation (rows), for one circuit.

    Example::

        from mechscope.causal import robustness_report
        rep = robustness_report(model, clean, circuit, ld, reference_inputs=other,
                                                 reference="other prompts", dataset="induction")
        rep.table()                              # one row per ablation kind x level
        rep.spread()                             # how far apart the faithfulness values lie
    """

    circuit: str
    rows: tuple[RobustnessRow, ...]
    how: dict[str, Any] = field(default_factory=dict)

    def spread(self) -> float:
        """Largest minus smallest faithfulness across the rows."""
        v = [r.faithfulness.value for r in self.rows]
        return max(v) - min(v)

    def table(self) -> list[dict[str, Any]]:
        """The rows as plain dicts: ablation, level, faithfulness with its interval and worst prompt, KL."""
        return [{"ablation": r.kind, "level": r.level, "faithfulness": r.faithfulness.value,
                 "ci": r.faithfulness.ci, "worst_prompt": r.faithfulness.worst, "kl": r.kl.value}
                for r in self.rows]

    def __str__(self) -> str:
        lines = [f"robustness of {self.circuit}: " + ", ".join(f"{k}={v}" for k, v in self.how.items()),
                 f"{'ablation':>10} {'level':>6} {'f':>8} {'95% CI':>20} {'worst':>8} {'KL':>8}"]
        for r in self.rows:
            f = r.faithfulness
            lines.append(f"{r.kind:>10} {r.level:>6} {f.value:>8.3f} {f'[{f.ci[0]:.3f}, {f.ci[1]:.3f}]':>20} "
                         f"{f.worst:>8.3f} {r.kl.value:>8.4f}")
        lines.append(f"spread of f across rows: {self.spread():.3f}")
        return "\n".join(lines)


def robustness_report(model: Any, inputs: Tensor, circuit: Circuit, metric: Callable[[Tensor], Tensor], *,
                      reference_inputs: Tensor, reference: str, counterfactuals: Tensor | None = None,
                      dataset: str, kinds: Sequence[str] = ("resample", "mean", "zero"),
                      levels: Sequence[Literal["node", "edge"]] = ("node", "edge"),
                      kl_positions: Literal["last", "all"] = "last", seed: int = 0, n_boot: int = 1000,
                      graph: Graph | None = None) -> RobustnessReport:
    """Re-score `circuit` under every kind x level. `reference_inputs` (named `reference`) feed mean
    and resample ablations; `counterfactuals`, when given, add the counterfactual patch.

    Example::

        from mechscope.causal import robustness_report
        rep = robustness_report(model, clean, circuit, ld, reference_inputs=ref, reference="random tokens",
                                counterfactuals=corrupt, dataset="ioi")   # each (prompt, pos)
        rep.table()
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    kinds = list(kinds) + (["patch"] if counterfactuals is not None and "patch" not in kinds else [])
    rows = []
    for kind in kinds:
        for level in levels:
            ref_name = {"zero": "", "patch": "counterfactual prompts"}.get(kind, reference)
            spec = AblationSpec(kind, reference=ref_name, granularity=level, seed=seed)
            ref = None if kind == "zero" else (counterfactuals if kind == "patch" else reference_inputs)
            scores = recovery(model, inputs, circuit, {"task": metric}, spec, reference_inputs=ref, dataset=dataset,
                              kl_positions=kl_positions, seed=seed, n_boot=n_boot, graph=graph)
            rows.append(RobustnessRow(kind, level, scores["task recovered"], scores["kl"]))
    how = {"metric": getattr(metric, "name", "metric"), "dataset": dataset, "n": int(inputs.shape[0]),
           "circuit_edges": len(circuit), "seed": seed}
    return RobustnessReport(circuit.name or f"{len(circuit)}-edge circuit", tuple(rows), how)
