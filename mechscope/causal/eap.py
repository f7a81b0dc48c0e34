"""Edge attribution patching (EAP): the first-order estimate of every edge's ablation effect.

Steps:
1. the ablated sender outputs (one forward pass on the reference data; none for zero ablation);
2. one forward and one backward pass on the prompts: every sender's output and the gradient of
   the metric (summed over prompts) at every receiver's input (each head's own q, k, v input,
   each MLP's input, the final residual);
3. score(s -> r) = (ablated_s - clean_s) . d metric / d input_r, summed over positions and
   d_model and averaged over prompts: the estimated change of the metric when the edge alone is
   ablated (the sign says which way).

Ablating edge s -> r adds (ablated_s - clean_s) to input_r and nothing else, so the estimate is
exact wherever the metric is linear in the receiver's input (a test checks it against
`edge_patching`). Denoising (patch ablations only) runs the counterfactual prompts and restores
clean sender outputs instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..core import Intervention
from ..core.passes import counting_passes
from ..core.run import run
from ..models import wrap
from .ablation import AblationSpec
from .edges import EdgeScores, ablated_values, differences, edge_how, metric_name, scores_from_grads
from .graph import Graph, graph_of


def eap(model: Any, inputs: Tensor, metric: Any, spec: AblationSpec, *, reference_inputs: Tensor | None = None,
        graph: Graph | None = None, dataset: str = "unnamed", interventions: Sequence[Intervention] = ()) -> EdgeScores:
    """EAP scores of every edge for `metric` (logits -> one value per prompt) on `inputs` (prompt, pos).
    `interventions` apply to the prompts' run (e.g. attention patterns held fixed).

    Example::

        from mechscope.causal import AblationSpec, eap
        spec = AblationSpec("patch", reference="corrupted", granularity="edge")
        scores = eap(model, clean, ld, spec, reference_inputs=corrupt)   # clean, corrupt (prompt, pos)
        scores.top(20)
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    run_on, ref = orient(spec, inputs, reference_inputs)
    total = lambda out: metric(model.logits(out)).sum()  # noqa: E731
    with counting_passes() as passes:
        ablated = ablated_values(model, graph, spec, run_on, ref)
        res = run(model, run_on, capture=[*graph.sender_sites, *graph.receiver_sites], grad=total,
                  interventions=list(interventions))
    clean = {s: res.cache[s] for s in graph.sender_sites}
    grads = {s: res.grads[s] for s in graph.receiver_sites}
    values = scores_from_grads(graph, differences(graph, ablated, clean), grads, run_on.shape[0])
    how = {"method": "EAP (first order)", **edge_how(spec), "metric": metric_name(metric),
           "dataset": dataset, "n": int(run_on.shape[0]), **passes.how()}
    return EdgeScores(graph, values.float(), how)


def orient(spec: AblationSpec, inputs: Tensor, reference_inputs: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(prompts to run, reference data): noising runs `inputs` with reference values swapped in;
    denoising runs the counterfactual prompts with the clean outputs swapped in."""
    if spec.direction == "noising":
        return inputs, reference_inputs
    if reference_inputs is None:
        raise ValueError("denoising needs the counterfactual prompts as reference_inputs")
    return reference_inputs, inputs
