"""Checking a graph by intervention: predicted against measured effects of removing latents.

Predicted (from the graph alone): removing latent s (activation a_s) changes the target logit by

    −a_s · Σ_paths Π (edge / activation of the edge's source)

the total linear effect along every path from s to the logit, each active latent on the way
passing on changes of its pre-activation one for one (an active TopK, ReLU or JumpReLU latent's
code is its pre-activation). It is the graph read as the frozen replacement model's Jacobian.

The logit is read as the graph reads it (minus the mean logit unless the graph was built
without). Measured: the local replacement model with *live* attention patterns and norms (not frozen),
error terms held fixed, run once per latent with that latent's code set to zero at its position;
latents downstream are re-encoded (TopK may pick others). The change of the target logit there is
the latent's effect. `intervention_check` compares the two over a graph's most influential latents
with Spearman's rank correlation.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.site import Kind
from .attribution import logit_input
from .graph import AttributionGraph, NodeKind
from .prune import influence, normalised
from .replacement import LocalReplacement


@dataclass
class InterventionCheck:
    """The intervention check of a graph: the latents tested (layer, pos, index), most influential first, the
    predicted and measured changes of the target logit (n,), and their Spearman rank correlation.

    Example::

        from mechscope.graphs import intervention_check
        chk = intervention_check(rep, g, target=token_id, top=20)
        chk.predicted, chk.measured              # (n,) each
        chk.spearman
    """

    latents: list[tuple[int, int, int]]  # (layer, pos, index), most influential first
    predicted: Tensor  # (n,) predicted change of the target logit
    measured: Tensor  # (n,) measured change
    spearman: float


def predicted_removal(graph: AttributionGraph, target_node: int) -> Tensor:
    """(N,) the linearised change of node `target_node`'s input when each latent is removed (0 elsewhere).

    Example::

        from mechscope.graphs import predicted_removal
        change = predicted_removal(g, target_node=len(g.nodes) - 1)   # (N,)
    """
    latent = graph.of_kind(NodeKind.LATENT)
    act = torch.tensor([n.value for n in graph.nodes], dtype=torch.float64)
    J = graph.adjacency.double().clone()
    J[:, latent] = J[:, latent] / act[latent]
    v = torch.zeros(len(graph.nodes), dtype=torch.float64)
    v[target_node] = 1.0
    total = torch.zeros_like(v)
    for _ in range(len(graph.nodes) + 1):
        v = v @ J
        if not bool(v.abs().sum() > 0):
            break
        total += v
    return torch.where(latent, -act * total, torch.zeros_like(total))


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties).

    Example::

        from mechscope.graphs import spearman
        spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0]))   # (n,) each: 0.5
    """
    def ranks(x: Tensor) -> Tensor:
        x = x.double()
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # ties share their mean rank
            m = x == v
            if int(m.sum()) > 1:
                r[m] = r[m].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def intervention_check(rep: LocalReplacement, graph: AttributionGraph, target: int, top: int = 50,
                       batch: int = 32, hold: Collection[Kind] = ()) -> InterventionCheck:
    """Predicted against measured effects on logit `target` of removing the `top` most influential latents.

    `hold` names kinds of frozen sites (attention patterns, norm scales) to keep at their real
    values while measuring, to see which of the live model's nonlinearities a disagreement comes
    from; by default everything is live.

    Example::

        from mechscope.graphs import intervention_check
        chk = intervention_check(rep, g, target=token_id, top=50)
        print(chk.spearman)
    """
    t_node = graph.find(NodeKind.LOGIT, index=int(target))
    w = torch.zeros(len(graph.nodes), dtype=torch.float64)
    w[t_node] = 1.0
    inf = influence(normalised(graph.adjacency), w)
    latent = graph.of_kind(NodeKind.LATENT)
    ids = latent.nonzero().flatten()
    ids = ids[inf[ids].argsort(descending=True)][:top]
    pred = predicted_removal(graph, t_node)[ids]
    chosen = [(graph.nodes[i].layer, graph.nodes[i].pos, graph.nodes[i].index) for i in ids.tolist()]
    measured = []
    frozen = set(hold) if hold else False
    demean = bool(graph.meta.get("demeaned_logits", False))
    base = logit_input(rep.run(frozen=frozen).logits[0, -1].double(), [target], demean)[0]
    for start in range(0, len(chosen), batch):
        group = [[c] for c in chosen[start:start + batch]]
        out = logit_input(rep.run(frozen=frozen, ablate=group).logits[:, -1].double(), [target], demean)[:, 0]
        measured.append(out - base)
    meas = torch.cat(measured) if measured else torch.zeros(0, dtype=torch.float64)
    return InterventionCheck(chosen, pred, meas, spearman(pred, meas))
