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


_CHUNK = 512  # rows of |A| converted to float64 at a time: memory stays O(chunk x N), never another N x N


@dataclass
class _Flow:
    """One pass over the rows of |A| restricted to kept rows and columns: each row's sum, the part of it from
    error columns, and the influence (w Â + w Â² + ...) of the normalised matrix."""

    sums: Tensor  # (N,) float64
    error_sums: Tensor  # (N,) float64
    influence: Tensor  # (N,) float64
    ordered: bool  # whether every edge went from a lower level to a higher one (so one sweep was exact)


def _chunk(A: Tensor, ids: Tensor, cols: Tensor | None) -> Tensor:
    a = A[ids].abs().double()
    return a * cols if cols is not None else a


def _flow(A: Tensor, w: Tensor, error: Tensor, levels: Tensor | None = None, rows: Tensor | None = None,
          cols: Tensor | None = None) -> _Flow:
    """Row sums, error sums and influence of Â = normalised(A masked to `rows` x `cols`).

    With `levels` (N,) — a node's layer, +inf for logits — the influence is one sweep over the rows from
    the highest level down: a node's influence is final once every row above it has passed it on,
    provided every edge goes from a lower level to a strictly higher one (a layer's latents read only
    earlier layers). The sweep checks that as it goes and falls back to summing the series term by term
    (Â's powers applied to a vector, chunk by chunk) when an edge breaks it or no levels are given.
    """
    N = A.shape[0]
    w = w.double()
    colf = cols.double() if cols is not None else None
    row_ok = torch.ones(N, dtype=torch.bool) if rows is None else rows
    sums = torch.zeros(N, dtype=torch.float64)
    error_sums = torch.zeros(N, dtype=torch.float64)
    targets = row_ok.nonzero().flatten()
    for s in range(0, len(targets), _CHUNK):
        ids = targets[s:s + _CHUNK]
        a = _chunk(A, ids, colf)
        sums[ids] = a.sum(1)
        error_sums[ids] = a[:, error].sum(1)
    has = sums > 0
    if levels is not None:
        inf = torch.zeros(N, dtype=torch.float64)
        ordered = True
        for level in levels[has].unique().flip(0):
            ids = (has & (levels == level)).nonzero().flatten()
            above = levels >= level
            for s in range(0, len(ids), _CHUNK):
                part = ids[s:s + _CHUNK]
                a = _chunk(A, part, colf)
                if bool((a[:, above] > 0).any()):
                    ordered = False
                    break
                inf += ((inf[part] + w[part]) / sums[part]) @ a
            if not ordered:
                break
        if ordered:
            return _Flow(sums, error_sums, inf, True)
    v, total = w, torch.zeros(N, dtype=torch.float64)
    for _ in range(N + 1):
        coef = torch.where(has, v / sums.clamp_min(1e-300), torch.zeros_like(v))
        ids = coef.nonzero().flatten()
        v = torch.zeros(N, dtype=torch.float64)
        for s in range(0, len(ids), _CHUNK):
            part = ids[s:s + _CHUNK]
            v += coef[part] @ _chunk(A, part, colf)
        if not bool(v.abs().sum() > 0):
            break
        total += v
    return _Flow(sums, error_sums, total, False)


def _levels(graph: AttributionGraph) -> Tensor:
    """(N,) each node's level for `_flow`: a latent's layer, +inf for logits, -inf for tokens and errors
    (sources without inputs)."""
    out = []
    for n in graph.nodes:
        if n.kind is NodeKind.LATENT:
            out.append(float(n.layer))
        else:
            out.append(float("inf") if n.kind is NodeKind.LOGIT else float("-inf"))
    return torch.tensor(out, dtype=torch.float64)


def _scores(flow: _Flow, w: Tensor, token: Tensor, error: Tensor) -> dict[str, float]:
    inf = flow.influence
    tok, err = float(inf[token].sum()), float(inf[error].sum())
    replacement = tok / (tok + err) if tok + err > 0 else float("nan")
    has = flow.sums > 0
    clean = 1 - flow.error_sums[has] / flow.sums[has]
    weight = (inf + w.double())[has]
    completeness = float((clean * weight).sum() / weight.sum()) if weight.sum() > 0 else float("nan")
    return {"replacement": replacement, "completeness": completeness}


def graph_scores(A: Tensor, w: Tensor, error: Tensor, token: Tensor, levels: Tensor | None = None) -> dict[str, float]:
    """Replacement and completeness scores of adjacency A with logit weights w (see the module); `levels`
    (N,), when given, lets the influence be one sweep (see `_flow`).

    Example::

        from mechscope.graphs import NodeKind, graph_scores
        error, token = g.of_kind(NodeKind.ERROR), g.of_kind(NodeKind.TOKEN)   # (N,) bool each
        graph_scores(g.adjacency, g.logit_weights, error, token)              # A (N, N), w (N,)
    """
    return _scores(_flow(A, w, error, levels), w, token, error)


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the latents and edges that carry most of the influence on the chosen logits.

    Works on the graph's matrix in place, a block of rows at a time: beside the (N, N) float32
    adjacency it needs the (N, N) bool edge mask and O(N) vectors, no further N x N copy.

    Example::

        from mechscope.graphs import prune
        p = prune(g, node_threshold=0.8, edge_threshold=0.98)
        p.keep.sum(), p.scores
    """
    A, w = graph.adjacency, graph.logit_weights.double()
    latent, error, token = (graph.of_kind(k) for k in (NodeKind.LATENT, NodeKind.ERROR, NodeKind.TOKEN))
    levels = _levels(graph)
    flow = _flow(A, w, error, levels)
    full = _scores(flow, w, token, error)
    inf = flow.influence

    keep = ~latent.clone()
    keep[_top_share(inf, latent, node_threshold)] = True
    kept = _flow(A, w, error, levels, rows=keep, cols=keep)
    edges = _top_edges(A, kept, w, keep, edge_threshold)
    # latents with no kept path to the logits are dropped: walk back from the logits along kept edges
    reach = _reach(edges, graph.of_kind(NodeKind.LOGIT), levels if kept.ordered else None)
    keep = keep & (reach | ~latent)
    for s in range(0, A.shape[0], _CHUNK):
        edges[s:s + _CHUNK] &= keep[s:s + _CHUNK, None] & keep[None, :]
    dropped = latent & ~keep
    # a dropped latent keeps its output (now an error) but no inputs
    pruned = _scores(_flow(A, w, error | dropped, levels, rows=~dropped), w, token, error | dropped)
    return Pruned(keep, edges, inf.float(), {"replacement": full["replacement"], "completeness": full["completeness"],
                                              "pruned_replacement": pruned["replacement"],
                                              "pruned_completeness": pruned["completeness"],
                                              "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                                              "kept_latents": int((keep & latent).sum()),
                                              "latents": int(latent.sum()), "kept_edges": int(edges.count_nonzero())})


def _edge_score_rows(A: Tensor, kept: _Flow, w: Tensor, keep: Tensor):
    """(row ids, scores (rows, N) float64) chunk by chunk: Â[t, s] · (influence[t] + w[t]) on the kept graph."""
    colf = keep.double()
    ids = (kept.sums > 0).nonzero().flatten()
    for s in range(0, len(ids), _CHUNK):
        part = ids[s:s + _CHUNK]
        yield part, _chunk(A, part, colf) * ((kept.influence[part] + w[part]) / kept.sums[part])[:, None]


def _top_edges(A: Tensor, kept: _Flow, w: Tensor, keep: Tensor, share: float) -> Tensor:
    """(N, N) bool: the highest-scoring edges of the kept graph until they carry `share` of the total score.

    Exact without sorting N x N scores: a first pass sums the scores in fine logarithmic bins (64 per
    factor of 2) and finds the bin where the running total from the top reaches the share; a second
    pass keeps every edge above that bin and sorts only the edges inside it. Edges of equal score at
    the boundary are all kept.
    """
    N = A.shape[0]
    edges = torch.zeros(N, N, dtype=torch.bool)
    total = float(((kept.influence + w) * (kept.sums > 0)).sum())  # each kept row of Â sums to 1
    if total <= 0:
        return edges
    bins = 64 * 2100  # log2 of a float64 score lies within about ±1075
    hist = torch.zeros(bins, dtype=torch.float64)

    def bin_of(x: Tensor) -> Tensor:  # scores below 1e-300 share the lowest bins, the same in both passes
        return ((torch.log2(x.clamp_min(1e-300)) + 1075) * 64).long().clamp(0, bins - 1)

    for _, sc in _edge_score_rows(A, kept, w, keep):
        pos = sc[sc > 0]
        hist += torch.bincount(bin_of(pos), weights=pos, minlength=bins)
    above = hist.flip(0).cumsum(0).flip(0)  # above[i]: the score of every bin >= i
    goal = share * total
    cut = int((above >= goal).nonzero().max()) if bool((above >= goal).any()) else 0
    rest = goal - float(above[cut + 1]) if cut + 1 < bins else goal
    cand_ids, cand_vals = [], []
    for part, sc in _edge_score_rows(A, kept, w, keep):
        b = torch.where(sc > 0, bin_of(sc), torch.full_like(sc, -1, dtype=torch.long))
        edges[part] = b > cut
        t, s = (b == cut).nonzero(as_tuple=True)
        cand_ids.append(part[t] * N + s)
        cand_vals.append(sc[t, s])
    ids, vals = torch.cat(cand_ids), torch.cat(cand_vals)
    if len(vals) and rest > 0:
        order = vals.argsort(descending=True)
        cum = vals[order].cumsum(0)
        n = min(int((cum < rest).sum()) + 1, len(vals))
        last = vals[order[n - 1]]
        chosen = ids[vals >= last]
        edges.view(-1)[chosen] = True
    return edges


def _reach(edges: Tensor, start: Tensor, levels: Tensor | None) -> Tensor:
    """(N,) bool: the nodes with a path of `edges` (edges[t, s]: s -> t) to a node of `start`.

    With `levels` (every edge from a lower level to a higher one), one sweep from the top level down;
    without, repeated until nothing changes."""
    reach = start.clone()
    if levels is not None:
        for level in levels.unique().flip(0):
            ids = (reach & (levels == level)).nonzero().flatten()
            for s in range(0, len(ids), _CHUNK):
                reach |= edges[ids[s:s + _CHUNK]].any(0)
        return reach
    for _ in range(edges.shape[0]):
        new = reach.clone()
        ids = reach.nonzero().flatten()
        for s in range(0, len(ids), _CHUNK):
            new |= edges[ids[s:s + _CHUNK]].any(0)
        if bool((new == reach).all()):
            break
        reach = new
    return reach


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
