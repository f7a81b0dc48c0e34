"""Faithfulness of an edge circuit: f(C) = (m(C) - m(empty)) / (m(M) - m(empty)), and what it recovers.

m(M) is the intact model, m(empty) the model with every edge ablated, m(C) the model with every
edge outside C ablated (or, with `spec.ablate == "circuit"`, with C's edges ablated). At node
granularity a circuit stands for its components: every edge out of a component outside it is
ablated, which equals ablating those components' outputs. Denoising (patch only) runs the
counterfactual prompts and restores clean sender outputs along C instead.

Steps:
1. the ablated sender outputs under `spec` (one forward pass; none for zero ablation);
2. one batched forward pass with three mask configurations: nothing, everything, the complement
   of C; each gives one metric value per prompt;
3. aggregate in the stated order ("mean-then-normalise": average each m over prompts, then the
   ratio; "normalise-then-mean": the ratio per prompt, then the average) and bootstrap over
   prompts, the three m's resampled together.

`recovery` measures several task metrics from the same runs (logit difference recovered, loss
recovered, ...) and the KL divergence of the circuit's output from the model's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from ..core import Score, bootstrap_ci
from ..core import metrics as core_metrics
from ..models import wrap
from .ablation import AblationSpec
from .eap import orient
from .edges import ablated_values, edge_run, metric_name, passes_how
from .graph import INPUT, Circuit, Graph, graph_of

Aggregation = Literal["mean-then-normalise", "normalise-then-mean"]


def circuit_masks(graph: Graph, circuit: Circuit, spec: AblationSpec) -> Tensor:
    """(3, n_edges) masks, 1 = swap in the ablated value: intact model, empty circuit, the circuit.

    Noising swaps reference values in; denoising runs the counterfactual and swaps clean values
    in, so there the intact model is all ones and the empty circuit all zeros."""
    if spec.granularity == "node":
        keep = circuit.nodes | {INPUT}
        inside = torch.tensor([e.sender in keep for e in graph.edges], dtype=torch.float32)
    else:
        missing = [str(e) for e in circuit.edges if e not in graph]
        if missing:
            raise ValueError(f"circuit edges not in the graph: {missing[:5]}")
        inside = graph.mask(circuit.edges)
    ones, zeros = torch.ones(graph.n_edges), torch.zeros(graph.n_edges)
    if spec.direction == "noising":
        removed = 1 - inside if spec.ablate == "complement" else inside
        return torch.stack([zeros, ones, removed])
    restored = inside if spec.ablate == "complement" else 1 - inside
    return torch.stack([ones, zeros, restored])


def _three_runs(model: Any, graph: Graph, inputs: Tensor, circuit: Circuit, spec: AblationSpec,
                reference_inputs: Tensor | None, metrics: Mapping[str, Callable[[Tensor], Tensor]],
                last_only: bool = False) -> tuple[dict[str, Tensor], Tensor, int]:
    """Per metric (3, prompt) values [intact, empty, circuit], the logits (3, prompt, pos, vocab)
    and the forward passes."""
    run_on, ref = orient(spec, inputs, reference_inputs)
    ablated = ablated_values(model, graph, spec, run_on, ref)
    last_only = last_only and all(getattr(m, "last_position_only", False) for m in metrics.values())
    res = edge_run(model, graph, run_on, circuit_masks(graph, circuit, spec), ablated, last_only=last_only)
    logits = res.logits.detach().unflatten(0, (3, run_on.shape[0]))
    values = {name: torch.stack([m(logits[c]) for c in range(3)]).double() for name, m in metrics.items()}
    return values, logits, 1 + ablated.forward_passes


def normalised(m: Tensor, aggregation: Aggregation, *, metric: str, dataset: str, seed: int, n_boot: int,
               how: dict[str, Any]) -> Score:
    """f from (3, prompt) values [intact, empty, circuit], with a paired bootstrap over prompts."""
    if aggregation not in ("mean-then-normalise", "normalise-then-mean"):
        raise ValueError(f"unknown aggregation {aggregation!r}")
    full, empty, circ = m[0], m[1], m[2]
    per_prompt = (circ - empty) / (full - empty)

    def ratio(idx: Tensor) -> Tensor:
        i = idx.long()
        if aggregation == "normalise-then-mean":
            return per_prompt[i].mean()
        return (circ[i].mean() - empty[i].mean()) / (full[i].mean() - empty[i].mean())

    everything = torch.arange(len(per_prompt), dtype=torch.float64)
    ci = bootstrap_ci(everything, statistic=ratio, n_boot=n_boot, seed=seed)
    how = how | {"m_full": float(full.mean()), "m_empty": float(empty.mean()), "m_circuit": float(circ.mean())}
    return Score(value=float(ratio(everything)), metric=metric, ci=ci, aggregation=aggregation, dataset=dataset,
                 n=len(per_prompt), seed=seed, how=how, per_item=tuple(per_prompt.tolist()))


def edge_faithfulness(model: Any, inputs: Tensor, circuit: Circuit, metric: Callable[[Tensor], Tensor],
                      spec: AblationSpec, *, reference_inputs: Tensor | None = None, dataset: str,
                      aggregation: Aggregation = "mean-then-normalise", seed: int = 0, n_boot: int = 1000,
                      graph: Graph | None = None) -> Score:
    """Normalised faithfulness of `circuit` on `inputs` (prompt, pos) under `spec`, as a Score that
    carries the ablation, metric, aggregation, dataset, n, seed, CI and per-prompt values.

    Example::

        from mechscope.causal import edge_faithfulness
        score = edge_faithfulness(model, clean, circuit, ld, spec, reference_inputs=corrupt,
                                  dataset="ioi")  # clean, corrupt (prompt, pos)
        print(score)                             # value, CI, ablation, n ...
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    values, _, passes = _three_runs(model, graph, inputs, circuit, spec, reference_inputs, {"m": metric},
                                    last_only=True)
    how = {"method": "faithfulness", **spec.describe(), "circuit_edges": len(circuit),
           "graph_edges": graph.n_edges, **passes_how(passes, 0)}
    return normalised(values["m"], aggregation, metric=f"faithfulness[{metric_name(metric)}]", dataset=dataset,
                      seed=seed, n_boot=n_boot, how=how)


def recovery(model: Any, inputs: Tensor, circuit: Circuit, metrics: Mapping[str, Callable[[Tensor], Tensor]],
             spec: AblationSpec, *, reference_inputs: Tensor | None = None, dataset: str,
             aggregation: Aggregation = "mean-then-normalise", kl_positions: Literal["last", "all"] = "last",
             seed: int = 0, n_boot: int = 1000, graph: Graph | None = None) -> dict[str, Score]:
    """From one set of runs: "<name> recovered" (the normalised faithfulness) for each metric, e.g.
    {"logit_diff": ..., "loss": ...}, and "kl": KL(model || circuit) of the next-token
    distribution (mean over prompts; at the last position or averaged over all).

    Example::

        from mechscope.causal import recovery
        from mechscope.core import metrics
        got = recovery(model, clean, circuit, {"logit_diff": ld, "loss": metrics.next_token_loss(clean)},
                       spec, reference_inputs=corrupt, dataset="ioi")   # clean, corrupt (prompt, pos)
        got["logit_diff recovered"], got["kl"]
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    values, logits, passes = _three_runs(model, graph, inputs, circuit, spec, reference_inputs, metrics,
                                         last_only=kl_positions == "last")
    base = {**spec.describe(), "circuit_edges": len(circuit), "graph_edges": graph.n_edges, **passes_how(passes, 0)}
    out = {f"{name} recovered": normalised(v, aggregation, metric=f"{name} recovered", dataset=dataset, seed=seed,
                                           n_boot=n_boot, how={"method": "faithfulness", **base})
           for name, v in values.items()}
    kl = core_metrics.kl_from(logits[0]) if kl_positions == "last" else core_metrics.sequence_kl_from(logits[0])
    per_prompt = kl(logits[2]).double()
    out["kl"] = Score.from_items(per_prompt, f"KL(model || circuit), {kl_positions} position"
                                 f"{'s' if kl_positions == 'all' else ''}", dataset=dataset, seed=seed,
                                 how={"method": "KL divergence", **base}, n_boot=n_boot)
    return out
