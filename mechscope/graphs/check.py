"""Checking a graph by intervention: predicted against measured effects of removing latents.

Measured: the real model with the error terms held fixed, that is the local replacement run with
*live* attention patterns and norms, every MLP's error term held at its value on the prompt, once
per latent with that latent's code set to zero at its position. Effects propagate through every
later layer, latents downstream are re-encoded from their changed inputs (TopK may pick others),
and the change of the target logit is the latent's measured effect. This is iterative patching as
circuit-tracer's `ReplacementModel.feature_intervention` does it (effects propagate; norm
denominators are frozen only when every layer is constrained, which leaves direct effects alone),
with two differences: nothing is frozen here (circuit-tracer freezes attention patterns by
default: `hold=(Kind.PATTERN,)` reproduces that), and later MLPs are the replacement's latents plus
fixed errors, not the real MLPs.

Predicted, from the graph's own linear model. The graph is the exact linearisation of the
*frozen* replacement (patterns and every norm's divisor written back) with each latent's active
set fixed: removing latent s (activation a_s) changes the input of node t by

    −a_s · Σ_paths Π (edge / activation of the edge's source)

(`predicted_removal`: the total linear effect along every path from s to t, each active latent on
the way passing on changes of its pre-activation one for one, as an active TopK, ReLU or JumpReLU
latent's code is its pre-activation). The same linear model also predicts how the last position's
final residual moves. The check's prediction (`predicted`) reads that predicted residual through the
model's own final norm and unembedding: the divisor of the final norm sits after every node of the
graph, on the readout, and rescales every logit together. Attribution has to freeze it (with a live
divisor the logit is scale-invariant in the residual, so its edges would sum to about zero instead
of decomposing the logit), but the effect of a removal on the logit the model outputs goes through
the live divisor. Norms inside the network stay frozen in the prediction: they are part of the paths
the graph claims. The graph's own frozen-readout prediction is kept as `graph_predicted`.

Both predictions and the measurement read the logit as the graph reads it (minus the mean logit
unless the graph was built without). `intervention_check` compares them over a graph's most
influential latents with Spearman's rank correlation.

Measured in the model as well (`measured_in_model`, reported beside the check as `spearman_model`):
the real model with every MLP live, each latent's decoder writes subtracted from the MLP outputs it
writes (so the error at its own layer is held fixed), as circuit-tracer's `feature_intervention`
measures without constrained layers (but with attention live; `hold=(Kind.PATTERN,)` freezes the
patterns as circuit-tracer does by default). Later MLPs then answer as the model's
own MLPs do, not as latents re-encoded by TopK: on SmolLM2 with every layer transcoded, TopK
re-selecting latents in later layers moves the live replacement's logits by up to about two logits
for early latents whose effect in the model itself is about a tenth of that.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.interventions import Replace
from ..core.run import run
from ..core.site import Kind, Site
from .attribution import logit_input
from .graph import AttributionGraph, NodeKind
from .latents import LatentError
from .prune import _flow, _levels
from .replacement import LocalReplacement


PATH_SUM_NODES = 6000  # above this, `graph_predicted` runs the frozen replacement instead of summing paths
# over an (N, N) float64 copy of the adjacency (2 GB at 16k nodes)


@dataclass
class InterventionCheck:
    """The intervention check of a graph: the latents tested (layer, pos, index), most influential first, the
    predicted and measured changes of the target logit (n,), and their Spearman rank correlation.

    `predicted` reads the graph's predicted change through the live final norm (the check's
    prediction, see the module); `graph_predicted` is the graph's frozen-readout prediction
    (`predicted_removal`) and `spearman_graph` its correlation with the measurement.

    Example::

        from mechscope.graphs import intervention_check
        chk = intervention_check(rep, g, target=token_id, top=20)
        chk.predicted, chk.measured              # (n,) each
        chk.spearman, chk.spearman_graph, chk.spearman_model
    """

    latents: list[tuple[int, int, int]]  # (layer, pos, index), most influential first
    predicted: Tensor  # (n,) predicted change of the target logit, through the live final norm
    measured: Tensor  # (n,) measured change in the live replacement, errors fixed
    spearman: float
    graph_predicted: Tensor  # (n,) the graph's frozen-readout prediction
    spearman_graph: float
    measured_model: Tensor  # (n,) measured change in the real model (`measured_in_model`)
    spearman_model: float  # of `predicted` against `measured_model`


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


def predicted_through_final_norm(rep: LocalReplacement, latents: Sequence[tuple[int, int, int]], target: int,
                                 demean: bool = True, batch: int = 32) -> Tensor:
    """(n,) the predicted change of logit `target` when each latent (layer, pos, index) is removed,
    read through the model's live final norm (see the module).

    The frozen replacement with every latent's active set fixed (the graph's own linear model) is
    run with each removal, every pattern and divisor inside the network written back, the final
    norm's divisor left live: the graph's predicted final residual, read out as the model reads it.
    A model without a final-norm divisor gives the graph's frozen-readout prediction.

    Example::

        from mechscope.graphs import predicted_through_final_norm
        predicted_through_final_norm(rep, [(1, 4, 17)], target=token_id)   # (1,)
    """
    inner = {s.kind for s in rep.frozen} - {Kind.LN_FINAL_SCALE}
    return _removals(rep, latents, target, demean, batch, frozen=inner, fixed_active=True)


def _removals(rep: LocalReplacement, latents: Sequence[tuple[int, int, int]], target: int, demean: bool,
              batch: int, **how) -> Tensor:
    """(n,) the change of the target logit's input when each latent alone is removed, `rep.run(**how)`."""
    base = logit_input(rep.run(**how).logits[0, -1].double(), [target], demean)[0]
    out = []
    for start in range(0, len(latents), batch):
        group = [[c] for c in latents[start:start + batch]]
        out.append(logit_input(rep.run(ablate=group, **how).logits[:, -1].double(), [target], demean)[:, 0] - base)
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.float64)


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
    inf = _flow(graph.adjacency, w, graph.of_kind(NodeKind.ERROR), _levels(graph)).influence  # no N x N copy
    latent = graph.of_kind(NodeKind.LATENT)
    ids = latent.nonzero().flatten()
    ids = ids[inf[ids].argsort(descending=True)][:top]
    chosen = [(graph.nodes[i].layer, graph.nodes[i].pos, graph.nodes[i].index) for i in ids.tolist()]
    demean = bool(graph.meta.get("demeaned_logits", False))
    if len(graph.nodes) <= PATH_SUM_NODES:
        graph_pred = predicted_removal(graph, t_node)[ids]
    else:  # the same linear model run rather than summed over paths (equal to rounding; tested)
        graph_pred = _removals(rep, chosen, target, demean, batch, frozen=True, fixed_active=True)
    pred = predicted_through_final_norm(rep, chosen, target, demean, batch)
    meas = measured_removals(rep, chosen, target, demean, batch, hold)
    in_model = measured_in_model(rep, chosen, target, demean, batch)
    return InterventionCheck(chosen, pred, meas, spearman(pred, meas), graph_pred, spearman(graph_pred, meas),
                             in_model, spearman(pred, in_model))


def measured_removals(rep: LocalReplacement, latents: Sequence[tuple[int, int, int]], target: int,
                      demean: bool = True, batch: int = 32, hold: Collection[Kind] = ()) -> Tensor:
    """(n,) the measured change of logit `target` when each latent (layer, pos, index) is removed: the
    live replacement, errors fixed, with the frozen sites of the kinds in `hold` kept at their real values.

    Example::

        from mechscope.core.site import Kind
        from mechscope.graphs import measured_removals
        measured_removals(rep, chk.latents, token_id, hold=(Kind.PATTERN,))   # (n,)
    """
    return _removals(rep, latents, target, demean, batch, frozen=set(hold) if hold else False)


def measured_in_model(rep: LocalReplacement, latents: Sequence[tuple[int, int, int]], target: int,
                      demean: bool = True, batch: int = 32, hold: Collection[Kind] = ()) -> Tensor:
    """(n,) the measured change of logit `target` when each latent (layer, pos, index) is removed from the
    real model: every MLP, attention pattern and norm live, the latent's code times its decoder row
    subtracted from each MLP output it writes, at its position (see the module). `hold` keeps the
    frozen sites of those kinds at the prompt's values: `hold=(Kind.PATTERN,)` is circuit-tracer's
    `feature_intervention` with its defaults (attention patterns frozen, the real MLPs and norms live).

    Example::

        from mechscope.graphs import measured_in_model
        measured_in_model(rep, chk.latents, token_id)   # (n,)
    """
    held = rep.freeze(set(hold))  # none when hold is empty
    base = logit_input(rep.logits[-1].double(), [target], demean)[0]
    out = []
    for start in range(0, len(latents), batch):
        group = latents[start:start + batch]
        deltas: dict[int, Tensor] = {}
        for r, (l, p, f) in enumerate(group):
            if l not in rep.latents:
                raise LatentError(f"no latents at layer {l} to ablate")
            lat = rep.latents[l]
            for t, W in lat.W_dec.items():
                d = deltas.setdefault(t, torch.zeros(len(group), *rep.mlp_out[t].shape, dtype=rep.mlp_out[t].dtype,
                                                     device=rep.mlp_out[t].device))
                d[r, p] -= rep.codes[l][p, f] * W[f].to(d)
        ivs = [Replace(Site(Kind.MLP_OUT, t), fn=(lambda d: lambda x, ctx: x + d.to(x))(d)) for t, d in deltas.items()]
        logits = run(rep.adapter, rep.ids.expand(len(group), -1), interventions=held + ivs).logits[:, -1].double()
        out.append(logit_input(logits, [target], demean)[:, 0] - base.to(logits.device))
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.float64)
