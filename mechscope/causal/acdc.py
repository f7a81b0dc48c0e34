"""ACDC: prune edges whose removal changes the metric by less than a threshold (Conmy et al. 2023).

Steps:
1. start from the whole graph (no edge ablated) and measure the loss: the metric oriented so
   that lower is better (by default the KL divergence of the output from the intact model's at
   every position, which starts at 0);
2. visit the receivers from the output backwards (reverse topological order), and for each
   receiver its senders from the latest to the earliest; a receiver whose head or MLP has no
   edge left towards the output is cut off, its incoming edges removed without a test;
3. ablate the edge on top of everything removed so far; if the loss grows by less than the
   threshold, keep it removed (and the new loss), else restore it. One forward pass per test;
4. the circuit is every edge left.

`acdc_sweep` runs ACDC at several thresholds and scores each edge by the largest threshold at
which it survives (0 if never), so that a ranking (ROC curve) can be read from the sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core import metrics
from ..core.progress import progress_bar
from ..core.run import run
from ..models import wrap
from .ablation import AblationSpec
from .edges import EdgeScores, ablated_values, edge_how, edge_run, metric_name, passes_how
from .graph import Circuit, Graph, graph_of, owner


@dataclass(frozen=True)
class AcdcResult:
    """The pruned circuit, which edges are left (`present`, (n_edges,) bool), the loss change
    measured when each edge was tested (NaN for edges removed without a test), and how.

    Example::

        from mechscope.causal import acdc
        res = acdc(model, clean, spec, threshold=0.01, reference_inputs=corrupt)
        res.present.sum()                        # present (n_edges,) bool: edges kept
        res.circuit.nodes
    """

    graph: Graph
    circuit: Circuit
    present: Tensor
    changes: Tensor
    threshold: float
    how: dict[str, Any] = field(default_factory=dict)

    def scores(self) -> EdgeScores:
        """The measured loss changes as edge scores (untested edges: 0)."""
        return EdgeScores(self.graph, torch.nan_to_num(self.changes, nan=0.0), dict(self.how))


def acdc(model: Any, inputs: Tensor, spec: AblationSpec, *, threshold: float, metric: Any = None,
         reference_inputs: Tensor | None = None, graph: Graph | None = None, dataset: str = "unnamed",
         progress: bool = True) -> AcdcResult:
    """Prune the edge graph of `model` on `inputs` (prompt, pos) under `spec` (noising).

    Example::

        from mechscope.causal import AblationSpec, acdc
        spec = AblationSpec("patch", reference="corrupted", granularity="edge")
        res = acdc(model, clean, spec, threshold=0.02, reference_inputs=corrupt)   # clean, corrupt (prompt, pos)
        res.circuit
    """
    if spec.direction != "noising":
        raise ValueError("ACDC removes edges from the intact model: use a noising ablation")
    model = wrap(model)
    graph = graph or graph_of(model)
    ablated = ablated_values(model, graph, spec, inputs, reference_inputs)
    passes = ablated.forward_passes
    if metric is None:
        metric = metrics.sequence_kl_from(run(model, inputs).logits)
        passes += 1
    sign = -1.0 if getattr(metric, "higher_is_better", True) else 1.0  # loss: lower is better

    def loss(mask: Tensor) -> float:
        return sign * float(edge_run(model, graph, inputs, mask, ablated, metric=metric).metric.mean())

    out_edges: dict[Any, list[int]] = {}
    for i, e in enumerate(graph.edges):
        out_edges.setdefault(e.sender, []).append(i)
    ablate = torch.zeros(graph.n_edges)
    changes = torch.full((graph.n_edges,), float("nan"))
    current = loss(ablate)
    passes += 1
    bar = progress_bar(total=graph.n_edges, desc=f"ACDC tau={threshold:g}", disable=not progress, unit="edge")
    for g in reversed(graph.groups):
        for r in reversed(range(g.n_recv)):
            comp = owner(g.receivers[r])
            idx = [g.offset + s * g.n_recv + r for s in reversed(range(g.n_up))]
            if comp is not None and all(ablate[j] == 1 for j in out_edges.get(comp, [])):
                ablate[idx] = 1.0  # nothing it writes reaches the output
                bar.update(len(idx))
                continue
            for i in idx:
                ablate[i] = 1.0
                new = loss(ablate)
                passes += 1
                changes[i] = new - current
                if new - current < threshold:
                    current = new
                else:
                    ablate[i] = 0.0
                bar.update(1)
    bar.close()
    present = ablate == 0
    circuit = Circuit(frozenset(e for e, keep in zip(graph.edges, present.tolist()) if keep), f"ACDC tau={threshold:g}")
    how = {"method": "ACDC", "threshold": threshold, **edge_how(spec), "metric": metric_name(metric),
           "dataset": dataset, "n": int(inputs.shape[0]), "edges_kept": int(present.sum()),
           "final_loss": current, **passes_how(passes, 0)}
    return AcdcResult(graph, circuit, present, changes, threshold, how)


def acdc_sweep(model: Any, inputs: Tensor, spec: AblationSpec, thresholds: Sequence[float], *, metric: Any = None,
               reference_inputs: Tensor | None = None, graph: Graph | None = None, dataset: str = "unnamed",
               progress: bool = False) -> EdgeScores:
    """Per edge, the largest threshold at which ACDC keeps it (0 if it never does).

    Example::

        from mechscope.causal import acdc_sweep
        scores = acdc_sweep(model, clean, spec, [0.001, 0.01, 0.1], reference_inputs=corrupt)   # (prompt, pos)
        scores.values                            # (n_edges,): largest threshold keeping each edge
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    score = torch.zeros(graph.n_edges)
    fwd = 0
    for t in sorted(thresholds):
        res = acdc(model, inputs, spec, threshold=t, metric=metric, reference_inputs=reference_inputs, graph=graph,
                   dataset=dataset, progress=progress)
        score[res.present] = float(t)
        fwd += res.how["forward_passes"]
        name = res.how["metric"]
    how = {"method": "ACDC sweep", "thresholds": [float(t) for t in sorted(thresholds)], **edge_how(spec),
           "metric": name, "dataset": dataset, "n": int(inputs.shape[0]), **passes_how(fwd, 0)}
    return EdgeScores(graph, score, how)
