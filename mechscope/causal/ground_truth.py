"""Scoring circuit discovery against a known answer: ROC AUC of edge scores against true edges.

    auc = P(score of a random true edge > score of a random other edge), ties counted as 1/2,

computed from average ranks (the Mann-Whitney statistic), so it needs no thresholds. Edges are
ranked by |score| by default: an edge matters whichever way it moves the metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .ablation import Node
from .edges import EdgeScores
from .graph import Circuit, Edge, Graph


def roc_auc(scores: Sequence[float] | Tensor, truth: Sequence[bool] | Tensor) -> float:
    """Area under the ROC curve of `scores` for the binary labels `truth` (ties count 1/2).

    Example::

        from mechscope.causal import roc_auc
        roc_auc(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([True, False, False]))   # (n,) each: 1.0
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(truth, dtype=torch.bool).flatten()
    if s.shape != y.shape:
        raise ValueError(f"{s.numel()} scores for {y.numel()} labels")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes: {n_pos} positives, {n_neg} negatives")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    for v in torch.unique(s):  # tied scores share their average rank
        tie = s == v
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def edges_from_ids(pairs: Iterable[tuple[Any, Any]]) -> frozenset[Edge]:
    """Ground truth given as ((site, head), (site, head)) pairs, as Edges.

    Example::

        from mechscope.causal import edges_from_ids
        z0, k1 = ms.Site(ms.Kind.Z, 0), ms.Site(ms.Kind.K_IN, 1)
        truth = edges_from_ids([((z0, 2), (k1, 1))])   # previous-token head -> induction head's key
    """
    return frozenset(Edge(Node(*s), Node(*r)) for s, r in pairs)


def edge_auc(scores: EdgeScores, truth: Iterable[Edge] | Circuit, absolute: bool = True) -> float:
    """ROC AUC of an edge ranking against the true edges (by |score| unless `absolute=False`).

    Example::

        from mechscope.causal import edge_auc
        edge_auc(scores, true_circuit)           # 1.0: every true edge ranked above every other
    """
    graph: Graph = scores.graph
    true = set(truth.edges if isinstance(truth, Circuit) else truth)
    missing = [str(e) for e in true if e not in graph]
    if missing:
        raise ValueError(f"true edges not in the graph: {missing[:5]}")
    labels = torch.tensor([e in true for e in graph.edges])
    v = scores.values.abs() if absolute else scores.values
    return roc_auc(v, labels)
