"""Completeness and minimality of a circuit (Wang et al. 2022), over its components.

With F(X) the mean task metric when everything outside X is ablated (X a set of components):

    completeness: for subsets K of the circuit's components, the gap |F(C \\ K) - F(M \\ K)|. A
        complete circuit behaves like the model under every knockout; a small gap for every K
        tried is evidence of completeness (a large one refutes it).
    minimality:   for each component v of the circuit, max over K in C \\ {v} of
        |F(C \\ (K + {v})) - F(C \\ K)|, relative to the model's whole effect |F(M) - F(empty)|.
        A component with a small score is not needed.

Steps: list the knockouts: every subset K of C when there are at most `exhaustive` components
(then both measures are exact: the maxima run over every K), otherwise K = empty, each single
component and `n_random` random subsets of C for completeness, K = empty and `n_random` random
subsets of C - {v} for each v for minimality (all seeded); build one edge mask per distinct
configuration (removing a component = ablating every edge out of it); measure them all in
batched forward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..models import wrap
from .ablation import AblationSpec, Node
from .eap import orient
from .edges import ablated_values, metric_name, passes_how
from .graph import INPUT, OUTPUT, Circuit, Graph, graph_of
from .path_patching import run_masks


@dataclass(frozen=True)
class CompletenessReport:
    """`incompleteness`: (K, F(C\\K), F(M\\K), gap) per knockout tried; `minimality`: per component,
    (relative score, the K that gave it); F(M), F(C), F(empty) and how it was measured.

    Example::

        from mechscope.causal import completeness_minimality
        rep = completeness_minimality(model, clean, circuit, ld, spec, reference_inputs=corrupt)
        rep.worst_gap                            # the largest completeness gap over the knockouts K
        rep.least_needed(k=3)                    # the components the circuit could lose
    """

    incompleteness: tuple[tuple[tuple[Node, ...], float, float, float], ...]
    minimality: dict[Node, tuple[float, tuple[Node, ...]]]
    f_model: float
    f_circuit: float
    f_empty: float
    how: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_gap(self) -> float:
        """The largest incompleteness gap over the knockouts tried."""
        return max(g for *_, g in self.incompleteness)

    def least_needed(self, k: int = 5) -> list[tuple[Node, float]]:
        """The `k` circuit components with the smallest minimality scores: those the circuit needs least."""
        return sorted(((v, s) for v, (s, _) in self.minimality.items()), key=lambda t: t[1])[:k]

    def __str__(self) -> str:
        return (f"completeness: worst |F(C\\K) - F(M\\K)| = {self.worst_gap:.4g} over {len(self.incompleteness)} "
                f"knockouts (F(M) = {self.f_model:.4g}, F(C) = {self.f_circuit:.4g}); minimality: "
                + ", ".join(f"{v}={s:.3f}" for v, (s, _) in sorted(self.minimality.items(), key=lambda t: -t[1][0]))
                + "; " + ", ".join(f"{k}={v}" for k, v in self.how.items()))


def completeness_minimality(model: Any, inputs: Tensor, circuit: Circuit, metric: Callable[[Tensor], Tensor],
                            spec: AblationSpec, *, reference_inputs: Tensor | None = None, n_random: int = 8,
                            exhaustive: int = 6, seed: int = 0, graph: Graph | None = None, max_rows: int = 256,
                            dataset: str = "unnamed") -> CompletenessReport:
    """Completeness gaps and per-component minimality of `circuit` (node level: its components).
    A circuit of at most `exhaustive` components is measured over every subset K (2^n knockouts:
    exact); a larger one over sampled knockouts (`n_random`, `seed`).

    Example::

        from mechscope.causal import AblationSpec, completeness_minimality
        rep = completeness_minimality(model, clean, circuit, ld, AblationSpec("mean", reference="ref"),
                                      reference_inputs=ref)           # clean, ref (prompt, pos)
        rep.worst_gap
    """
    if spec.direction != "noising":
        raise ValueError("completeness and minimality knock components out: use a noising ablation")
    model = wrap(model)
    graph = graph or graph_of(model)
    comps = sorted(c for c in circuit.nodes if c not in (INPUT, OUTPUT))
    if not comps:
        raise ValueError("the circuit has no components besides the input and output")
    run_on, ref = orient(spec, inputs, reference_inputs)
    ablated = ablated_values(model, graph, spec, run_on, ref)
    g = torch.Generator().manual_seed(seed)
    in_circuit = graph.mask(circuit.edges)
    sender = {n: i for i, n in enumerate(graph.senders)}
    out_of = torch.zeros(len(graph.senders), graph.n_edges)
    for i, e in enumerate(graph.edges):
        out_of[sender[e.sender], i] = 1.0

    def knocked(nodes: tuple[Node, ...]) -> Tensor:  # (n_edges,): 1 on every edge out of the nodes
        if not nodes:
            return torch.zeros(graph.n_edges)
        return out_of[[sender[v] for v in nodes]].amax(0)

    def sample(pool: list[Node]) -> tuple[Node, ...]:
        if not pool:
            return ()
        k = int(torch.randint(1, max(2, len(pool) // 2 + 1), (1,), generator=g))
        return tuple(sorted(pool[i] for i in torch.randperm(len(pool), generator=g)[:k].tolist()))

    every = len(comps) <= exhaustive
    if every:
        knockouts = [tuple(c for j, c in enumerate(comps) if i >> j & 1) for i in range(2 ** len(comps))]
        tries = [(v, k) for v in comps for k in knockouts if v not in k]
    else:
        knockouts = list(dict.fromkeys([()] + [(c,) for c in comps] + [sample(comps) for _ in range(n_random)]))
        tries = [(v, k) for v in comps
                 for k in dict.fromkeys([()] + [sample([c for c in comps if c != v]) for _ in range(n_random)])]
    # each distinct configuration runs once: ("C", K) ablates what is not in C and the edges out of
    # K (C \ K); ("M", K) ablates the edges out of K (M \ K); ("M", everything) is the empty circuit
    configs: dict[tuple[str, frozenset[Node]], Tensor] = {}
    for k in knockouts:
        configs.setdefault(("C", frozenset(k)), 1 - in_circuit * (1 - knocked(k)))
        configs.setdefault(("M", frozenset(k)), knocked(k))
    for v, k in tries:
        configs.setdefault(("C", frozenset(k + (v,))), 1 - in_circuit * (1 - knocked(k + (v,))))
        configs.setdefault(("C", frozenset(k)), 1 - in_circuit * (1 - knocked(k)))
    configs.setdefault(("M", frozenset(graph.senders)), torch.ones(graph.n_edges))
    m, passes = run_masks(model, graph, run_on, torch.stack(list(configs.values())), ablated, metric, max_rows)
    F = dict(zip(configs, m.double().mean(1).tolist()))  # (which, K) -> mean metric

    def f(which: str, nodes: tuple[Node, ...] | frozenset[Node]) -> float:
        return F[which, frozenset(nodes)]

    f_model, f_empty = f("M", ()), f("M", graph.senders)
    gaps = tuple((k, f("C", k), f("M", k), abs(f("C", k) - f("M", k))) for k in knockouts)
    minimality: dict[Node, tuple[float, tuple[Node, ...]]] = {}
    for v, k in tries:
        score = abs(f("C", k + (v,)) - f("C", k)) / max(abs(f_model - f_empty), 1e-12)
        if v not in minimality or score > minimality[v][0]:
            minimality[v] = (score, k)
    how = {"metric": metric_name(metric), **spec.describe(), "level": "node", "dataset": dataset,
           "n": int(run_on.shape[0]),
           "knockouts": f"all {len(knockouts)} subsets" if every else f"{len(knockouts)} (empty, single, "
                                                                      f"{n_random} random, seed {seed})",
           **passes_how(passes + ablated.forward_passes, 0)}
    return CompletenessReport(gaps, minimality, f_model, f("C", ()), f_empty, how)
