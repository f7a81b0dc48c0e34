"""Path patching: a sender's effect through chosen receivers only, and exact per-edge patching.

Path patching sender s through receivers R ablates exactly the edges s -> r for r in R: each
receiver in R reads the residual with s's output swapped for its ablated value (by default its
output on the counterfactual prompt), and every other component reads s as it was. The effect
therefore travels only along the direct paths s -> R (Wang et al. 2022, where the other heads are
frozen, measure the same thing).

Steps:
1. the ablated sender outputs (one forward pass on the counterfactual prompts);
2. one mask per job (a sender, or a sender and one receiver with `each_receiver`), packed into
   batched forward passes of at most `max_rows` rows (job j owns its own rows);
3. the metric per job and prompt.

`edge_patching` does the same for single edges: the exact effect of ablating each edge alone,
the measurement that attribution methods estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core import Intervention
from ..core.progress import progress_bar
from ..models import wrap
from .ablation import AblationSpec, Node
from .eap import orient
from .edges import AblatedValues, EdgeScores, ablated_values, edge_how, edge_run, metric_name, passes_how
from .graph import Edge, Graph, graph_of


@dataclass(frozen=True)
class PathPatchingResult:
    """Metric after each path patch: `values` (sender, receiver-set, prompt); `baseline` (prompt,)
    is the unpatched run. `receivers` names the second axis (one entry, all of R, unless
    `each_receiver`).

    Example::

        from mechscope.causal import path_patching
        res = path_patching(model, clean, corrupt, senders, receivers, ld)
        res.values                               # (sender, receiver-set, prompt)
        res.effect()                             # (sender, receiver-set)
    """

    senders: tuple[Node, ...]
    receivers: tuple[tuple[Node, ...], ...]
    values: Tensor
    baseline: Tensor
    how: dict[str, Any] = field(default_factory=dict)

    def effect(self) -> Tensor:
        """(sender, receiver-set): mean over prompts of metric(patched) - metric(unpatched)."""
        return (self.values - self.baseline).mean(-1)


def run_masks(model: Any, graph: Graph, inputs: Tensor, masks: Tensor, ablated: AblatedValues,
              metric: Callable[[Tensor], Tensor], max_rows: int = 256, progress: bool = False,
              desc: str = "edge runs", interventions: Sequence[Intervention] = ()) -> tuple[Tensor, int]:
    """Metric (configs, prompt) for many masks (configs, n_edges), in chunks of at most `max_rows`
    rows; and the forward passes it took. `interventions` apply to every row."""
    n = inputs.shape[0]
    per = max(1, max_rows // n)
    out, passes = [], 0
    for i in progress_bar(range(0, masks.shape[0], per), desc=desc, disable=not progress, unit="chunk"):
        res = edge_run(model, graph, inputs, masks[i:i + per], ablated, metric=metric, interventions=interventions,
                       last_only=getattr(metric, "last_position_only", False))
        out.append(res.metric.detach().float())
        passes += 1
    return torch.cat(out), passes


def path_patching(model: Any, clean: Tensor, corrupt: Tensor, senders: Sequence[Node], receivers: Sequence[Node],
                  metric: Callable[[Tensor], Tensor], *, spec: AblationSpec | None = None, each_receiver: bool = False,
                  graph: Graph | None = None, max_rows: int = 256, progress: bool = False) -> PathPatchingResult:
    """Patch each sender through `receivers` only (receiver inputs, or heads/MLPs/OUTPUT standing
    for all their inputs). The default ablation is the counterfactual patch, noising: the clean
    run with each path carrying the corrupted sender output.

    Example::

        from mechscope.causal import OUTPUT, Node, path_patching
        senders = [Node(ms.Site(ms.Kind.Z, 0), h) for h in range(4)]
        res = path_patching(model, clean, corrupt, senders, [OUTPUT], ld)   # clean, corrupt (prompt, pos)
        res.effect()                             # (sender, 1): each head's direct path to the logits
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    spec = spec or AblationSpec("patch", reference="counterfactual prompts")
    run_on, ref = orient(spec, clean, corrupt)
    ablated = ablated_values(model, graph, spec, run_on, ref)
    sets = [(r,) for r in receivers] if each_receiver else [tuple(receivers)]
    masks = []
    for s in senders:
        for rs in sets:
            edges = [e for e in graph.into(rs) if e.sender == s]
            if not edges:
                raise ValueError(f"{s} sends nothing to {', '.join(map(str, rs))} (it is not upstream of them)")
            masks.append(graph.mask(edges))
    masks_t = torch.stack(masks)
    values, passes = run_masks(model, graph, run_on, masks_t, ablated, metric, max_rows, progress, "path patching")
    base = edge_run(model, graph, run_on, torch.zeros(graph.n_edges), ablated, metric=metric).metric[0].float()
    how = {"method": "path patching", **edge_how(spec), "metric": metric_name(metric), "n": int(run_on.shape[0]),
           **passes_how(passes + 1 + ablated.forward_passes, 0)}
    return PathPatchingResult(tuple(senders), tuple(sets), values.view(len(senders), len(sets), -1), base, how)


def edge_patching(model: Any, inputs: Tensor, metric: Callable[[Tensor], Tensor], spec: AblationSpec, *,
                  reference_inputs: Tensor | None = None, edges: Sequence[Edge] | None = None,
                  graph: Graph | None = None, max_rows: int = 256, dataset: str = "unnamed",
                  progress: bool = False, interventions: Sequence[Intervention] = ()) -> EdgeScores:
    """The exact effect of ablating each edge alone: mean over prompts of m(edge ablated) - m(intact).
    Edges not listed get NaN. `interventions` apply to every run (they must fit any number of rows
    that repeat the prompts, e.g. a Replace that tiles its value).

    Example::

        from mechscope.causal import edge_patching
        exact = edge_patching(model, clean, ld, spec, reference_inputs=corrupt, edges=scores.circuit(k=50).edges)
        exact.values                             # (n_edges,): NaN for edges not listed
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    run_on, ref = orient(spec, inputs, reference_inputs)
    ablated = ablated_values(model, graph, spec, run_on, ref)
    idx = list(range(graph.n_edges)) if edges is None else [graph.index(e) for e in edges]
    masks = torch.zeros(len(idx), graph.n_edges)
    masks[torch.arange(len(idx)), torch.tensor(idx)] = 1.0
    values, passes = run_masks(model, graph, run_on, masks, ablated, metric, max_rows, progress, "edge patching",
                               interventions)
    base = edge_run(model, graph, run_on, torch.zeros(graph.n_edges), ablated, metric=metric,
                    interventions=interventions).metric[0].float()
    out = torch.full((graph.n_edges,), float("nan"))
    out[torch.tensor(idx)] = (values - base).mean(-1)
    how = {"method": "edge patching (exact)", **edge_how(spec), "metric": metric_name(metric), "dataset": dataset,
           "n": int(run_on.shape[0]), **passes_how(passes + 1 + ablated.forward_passes, 0)}
    return EdgeScores(graph, out, how)
