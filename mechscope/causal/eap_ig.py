"""EAP with integrated gradients (EAP-IG): edge attribution with gradients averaged along a path.

Steps (`interpolate="inputs"`, the default, after Hanna et al. 2024):
1. the ablated sender outputs, and the clean ones (one forward pass each; none for zero ablation);
2. for k = 1 .. m: run the prompts with the *input node's* output (embeddings, what block 0
   reads) set to ablated + (k/m) (clean - ablated), and take the gradient of the metric at every
   receiver's input (m forward and m backward passes);
3. score(s -> r) = (ablated_s - clean_s) . mean_k gradient_r(k), summed over positions and
   d_model, averaged over prompts.

`interpolate="edges"` instead integrates along the edge masks: every edge ablated by a fraction
alpha_k = (k - 1/2)/m, and score(e) = mean_k d metric / d mask_e at alpha_k, where the mask
derivative is (ablated_s - current_s) . gradient_r in that run. By the completeness of
integrated gradients, these scores add up to m(every edge ablated) - m(clean) as m grows (a test
checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..core import Intervention, Patch
from ..core.progress import progress_bar
from ..core.passes import backward, counting_passes
from ..core.run import run
from ..models import wrap
from .ablation import AblationSpec
from .eap import orient
from .edges import (EdgeScores, ablated_values, differences, edge_how, edge_run, metric_name, receiver_grads,
                    scores_from_grads)
from .graph import INPUT, Graph, graph_of


def eap_ig(model: Any, inputs: Tensor, metric: Any, spec: AblationSpec, *, steps: int = 5,
           interpolate: Literal["inputs", "edges"] = "inputs", reference_inputs: Tensor | None = None,
           graph: Graph | None = None, dataset: str = "unnamed", progress: bool = False,
           interventions: Sequence[Intervention] = ()) -> EdgeScores:
    """EAP-IG scores of every edge for `metric` on `inputs` (prompt, pos), with `steps` steps.
    `interventions` apply to every run (e.g. attention patterns held fixed).

    Example::

        from mechscope.causal import eap_ig
        scores = eap_ig(model, clean, ld, spec, steps=5, reference_inputs=corrupt)   # (prompt, pos)
        circuit = scores.circuit(k=500)
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if interpolate not in ("inputs", "edges"):
        raise ValueError(f"interpolate must be 'inputs' or 'edges', got {interpolate!r}")
    model = wrap(model)
    graph = graph or graph_of(model)
    run_on, ref = orient(spec, inputs, reference_inputs)
    with counting_passes() as passes:
        ablated = ablated_values(model, graph, spec, run_on, ref)
        n = run_on.shape[0]
        if interpolate == "inputs":
            clean = dict(run(model, run_on, capture=graph.sender_sites,
                             interventions=list(interventions)).cache.items())
            diffs = differences(graph, ablated, clean)
            entry = INPUT.site
            base = clean[entry] + diffs[entry]  # the input node's ablated output (prompt, pos, d_model)
            total: dict = {}
            for k in progress_bar(range(1, steps + 1), desc="EAP-IG", disable=not progress):
                point = (base - (k / steps) * diffs[entry]).detach().requires_grad_(True)
                grads, _ = receiver_grads(model, graph, run_on, metric,
                                          interventions=[*interventions, Patch(entry, value=point)])
                for s, g in grads.items():
                    total[s] = g if s not in total else total[s] + g
            mean = {s: g / steps for s, g in total.items()}
            values = scores_from_grads(graph, diffs, mean, n)
        else:
            values = torch.zeros(graph.n_edges, dtype=torch.float64)
            for k in progress_bar(range(1, steps + 1), desc="EAP-IG (edges)", disable=not progress):
                masks = torch.full((graph.n_edges,), (k - 0.5) / steps, requires_grad=True)
                res = edge_run(model, graph, run_on, masks, ablated, metric=metric, interventions=interventions)
                (g,) = backward(res.metric.sum() / n, [masks])
                values += g.double()
            values /= steps
    how = {"method": f"EAP-IG ({interpolate}, {steps} steps)", **edge_how(spec), "metric": metric_name(metric),
           "dataset": dataset, "n": int(n), **passes.how()}
    return EdgeScores(graph, values.float(), how)
