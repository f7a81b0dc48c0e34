"""Pruning an attribution graph by influence on the chosen logits, and its two scores.

The influence of a node is how much of the logits' input reaches it through any path, measured on
the *normalised* adjacency matrix Â (each target's row of |A| divided by its sum, so a row says
what fraction of that node's direct input each source gives):

    influence = w Â + w Â² + w Â³ + ... = w Â (I − Â)⁻¹

with w the logit nodes' weights (their probabilities, or all on one target). The graph is acyclic
(edges go to later layers or positions), so Â is nilpotent and the series ends; it is summed
until a term vanishes. This is the indirect-influence measure of Ameisen et al. (2025, "Circuit
tracing", section on graph pruning).

Pruning, in two steps as there:
1. nodes: latents sorted by influence, the fewest whose influence reaches `node_threshold` of the
   latents' total are kept; every token, error and logit node is kept;
2. edges: on the graph of the kept nodes (Â recomputed), an edge s → t scores
   Â[t, s] · (influence[t] + w[t]); the highest-scoring edges up to `edge_threshold` of the total
   are kept, and latents left with no kept edge towards the logits are dropped.

Scores (Ameisen et al. 2025, "Graph evaluation"; both in [0, 1], 1 with no error at all):
- replacement score: of the influence that reaches the graph's inputs (token embeddings and error
  nodes, where paths end), the fraction that reaches tokens: how much of the logits' computation
  the replacement explains from the prompt through latents alone;
- completeness score: for every node with inputs (latents, logits), the fraction of its normalised
  input that comes from non-error nodes, averaged with the weights influence + w (how much each
  node matters to the logits).
Scores of a pruned graph count the latents it dropped as error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .graph import AttributionGraph, NodeKind


def normalised(A: Tensor) -> Tensor:
    """Each row of |A| divided by its sum (rows without inputs stay zero).

    Example::

        from mechscope.graphs import normalised
        normalised(torch.tensor([[1.0, -3.0], [0.0, 0.0]]))   # (N, N): [[0.25, 0.75], [0, 0]]
    """
    a = A.abs().double()
    s = a.sum(1, keepdim=True)
    return torch.where(s > 0, a / s.clamp_min(1e-300), torch.zeros_like(a))


def influence(An: Tensor, w: Tensor, max_terms: int | None = None) -> Tensor:
    """w Â + w Â² + ... (N,): each node's indirect influence on the weighted targets.

    Example::

        from mechscope.graphs import influence, normalised
        inf = influence(normalised(g.adjacency), g.logit_weights)   # (N,); logit_weights (N,)
    """
    v = w.double()
    total = torch.zeros_like(v)
    for _ in range(max_terms or An.shape[0] + 1):
        v = v @ An
        if not bool(v.abs().sum() > 0):
            break
        total += v
    return total


@dataclass
class Pruned:
    """Which nodes and edges a pruning kept, with the graph's scores before and after.

    Example::

        from mechscope.graphs import prune
        p = prune(g, node_threshold=0.8, edge_threshold=0.98)
        p.keep                                   # (N,) bool
        p.scores                                 # replacement and completeness, before and after
    """

    keep: Tensor  # (N,) bool
    edges: Tensor  # (N, N) bool, edges[t, s]
    influence: Tensor  # (N,) node influence in the full graph
    scores: dict[str, float]


def graph_scores(A: Tensor, w: Tensor, error: Tensor, token: Tensor) -> dict[str, float]:
    """Replacement and completeness scores of adjacency A with logit weights w (see the module).

    Example::

        from mechscope.graphs import NodeKind, graph_scores
        error, token = g.of_kind(NodeKind.ERROR), g.of_kind(NodeKind.TOKEN)   # (N,) bool each
        graph_scores(g.adjacency, g.logit_weights, error, token)              # A (N, N), w (N,)
    """
    An = normalised(A)
    inf = influence(An, w)
    tok, err = float(inf[token].sum()), float(inf[error].sum())
    replacement = tok / (tok + err) if tok + err > 0 else float("nan")
    has_input = An.sum(1) > 0
    clean = 1 - An[:, error].sum(1)
    weight = (inf + w.double())[has_input]
    completeness = float((clean[has_input] * weight).sum() / weight.sum()) if weight.sum() > 0 else float("nan")
    return {"replacement": replacement, "completeness": completeness}


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the latents and edges that carry most of the influence on the chosen logits.

    Example::

        from mechscope.graphs import prune
        p = prune(g, node_threshold=0.8, edge_threshold=0.98)
        p.keep.sum(), p.scores
    """
    A, w = graph.adjacency, graph.logit_weights
    latent, error, token = (graph.of_kind(k) for k in (NodeKind.LATENT, NodeKind.ERROR, NodeKind.TOKEN))
    full = graph_scores(A, w, error, token)
    inf = influence(normalised(A), w)

    keep = ~latent.clone()
    keep[_top_share(inf, latent, node_threshold)] = True
    A_kept = A * (keep[:, None] & keep[None, :])
    An = normalised(A_kept)
    inf_kept = influence(An, w)
    score = An * (inf_kept + w.double())[:, None]
    flat = score.flatten()
    order = flat.argsort(descending=True)
    total = float(flat.sum())
    edges = torch.zeros_like(flat, dtype=torch.bool)
    if total > 0:
        cum = flat[order].cumsum(0) / total
        n = int((cum < edge_threshold).sum()) + 1
        edges[order[:n]] = True
    edges = edges.reshape(A.shape) & (A_kept != 0)
    # latents with no kept path to the logits are dropped: walk back from the logits along kept edges
    reach = graph.of_kind(NodeKind.LOGIT).clone()
    for _ in range(A.shape[0]):
        new = reach | (edges & reach[:, None]).any(0)
        if bool((new == reach).all()):
            break
        reach = new
    keep = keep & (reach | ~latent)
    edges = edges & keep[:, None] & keep[None, :]
    dropped = latent & ~keep
    A_p = A * (~dropped)[:, None]  # a dropped latent keeps its output (now an error) but no inputs
    pruned = graph_scores(A_p, w, error | dropped, token)
    return Pruned(keep, edges, inf.float(), {"replacement": full["replacement"], "completeness": full["completeness"],
                                              "pruned_replacement": pruned["replacement"],
                                              "pruned_completeness": pruned["completeness"],
                                              "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                                              "kept_latents": int((keep & latent).sum()),
                                              "latents": int(latent.sum()), "kept_edges": int(edges.sum())})


def _top_share(values: Tensor, among: Tensor, share: float) -> Tensor:
    """Ids of the fewest nodes in `among` whose values reach `share` of their total."""
    ids = among.nonzero().flatten()
    if len(ids) == 0:
        return ids
    v = values[ids]
    order = v.argsort(descending=True)
    total = float(v.sum())
    if total <= 0:
        return ids[:0]
    cum = v[order].cumsum(0) / total
    n = int((cum < share).sum()) + 1
    return ids[order[:n]]
