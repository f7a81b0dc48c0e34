"""Faithfulness of a node-level circuit: f(C) = (m(C) - m(empty)) / (m(M) - m(empty)).

Steps:
1. record the reference activations the ablation needs (none for zero ablation);
2. run the model intact (m(M)), with every node ablated (m(empty)), and with every node outside
   the circuit ablated (m(C)); each gives one metric value per prompt;
3. aggregate in the stated order: "mean-then-normalise" averages each m over prompts before
   the ratio; "normalise-then-mean" takes the ratio per prompt and averages those;
4. bootstrap over prompts (paired: all three m's resampled together) for the interval.

The Score keeps per-prompt faithfulness for quantiles and the worst case, and carries the
ablation specification, metric, aggregation, dataset, n and seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..core import Score, bootstrap_ci
from ..core.metrics import Metric
from ..core.run import run
from ..core.site import Kind, Site
from ..models import wrap
from .ablation import AblationKind, AblationSpec, Node


def faithfulness(
    model: Any,
    inputs: Tensor,
    circuit: Iterable[Node],
    nodes: Sequence[Node],
    metric: Metric,
    spec: AblationSpec,
    *,
    reference_inputs: Tensor | None = None,
    dataset: str,
    aggregation: Literal["mean-then-normalise", "normalise-then-mean"] = "mean-then-normalise",
    seed: int = 0,
    n_boot: int = 1000,
) -> Score:
    """Faithfulness of `circuit` (a subset of `nodes`) on `inputs` under `spec`.

    Example::

        from mechscope.causal import AblationSpec, component_nodes, faithfulness
        nodes = component_nodes(model)
        circuit = [n for n in nodes if n.site.layer == 1]
        faithfulness(model, clean, circuit, nodes, ld, AblationSpec("zero"), dataset="induction")  # clean (prompt, pos)
    """
    if aggregation not in ("mean-then-normalise", "normalise-then-mean"):
        raise ValueError(f"unknown aggregation {aggregation!r}")
    model = wrap(model)
    circuit = set(circuit)
    unknown = circuit - set(nodes)
    if unknown:
        raise ValueError(f"circuit nodes not among the nodes considered: {sorted(map(str, unknown))}")
    reference = None
    if spec.kind is not AblationKind.ZERO:
        if reference_inputs is None:
            raise ValueError(f"a {spec.kind.value} ablation needs reference_inputs ({spec.reference!r})")
        reference = run(model, reference_inputs, capture=list(dict.fromkeys(n.site for n in nodes))).cache

    def measure(ablated: Iterable[Node]) -> Tensor:  # (prompt,)
        out = run(model, inputs, interventions=spec.interventions(ablated, reference))
        return metric(out.logits).detach().double()

    m_full = measure([])
    m_empty = measure(nodes)
    m_circ = measure([n for n in nodes if n not in circuit])
    per_prompt = (m_circ - m_empty) / (m_full - m_empty)

    def ratio(idx: Tensor) -> Tensor:
        i = idx.long()
        if aggregation == "normalise-then-mean":
            return per_prompt[i].mean()
        return (m_circ[i].mean() - m_empty[i].mean()) / (m_full[i].mean() - m_empty[i].mean())

    everything = torch.arange(len(per_prompt), dtype=torch.float64)
    ci = bootstrap_ci(everything, statistic=ratio, n_boot=n_boot, seed=seed)
    how = spec.describe() | {"circuit_nodes": len(circuit), "nodes": len(nodes),
                             "m_full": float(m_full.mean()), "m_empty": float(m_empty.mean()),
                             "m_circuit": float(m_circ.mean())}
    return Score(value=float(ratio(everything)), metric=f"faithfulness[{metric.name}]", ci=ci,
                 aggregation=aggregation, dataset=dataset, n=len(per_prompt), seed=seed, how=how,
                 per_item=tuple(per_prompt.tolist()))


def component_nodes(model: Any) -> list[Node]:
    """Every attention head (at attn.z) and every MLP (at mlp_out) of a transformer adapter.

    Example::

        from mechscope.causal import component_nodes
        nodes = component_nodes(ms.load("zoo:induction-quick"))   # every head and MLP
        [n for n in nodes if n.site.layer == 1]
    """
    model = wrap(model)
    valid = set(model.sites())
    out: list[Node] = []
    for layer in range(model.n_layers):
        out += [Node(Site(Kind.Z, layer), h) for h in range(model.n_heads)]
        if Site(Kind.MLP_OUT, layer) in valid:
            out.append(Node(Site(Kind.MLP_OUT, layer)))
    return out
