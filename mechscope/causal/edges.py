"""Edge ablation: each receiver reads the residual with some senders' writes swapped for ablated ones.

An ablated edge s -> r changes what r reads, and nothing else:

    input_r = residual_r - sum over ablated s of (out_s - ablated_s)

where `residual_r` and `out_s` are this run's own values (an ablation upstream changes them) and
`ablated_s` is the sender's output under the ablation (zero, a mean over a reference set, a row
resampled from it, or the counterfactual prompt's own). Ablating every edge out of a sender equals
ablating the sender's output (a test checks it); ablating no edge leaves the run bit for bit as it was.

Steps of one `edge_run`:
1. repeat the prompts once per mask configuration (configuration c owns rows c*B .. (c+1)*B - 1);
2. capture every sender's output as the forward pass produces it (input, each head's result,
   each MLP's output);
3. at each receiver group with a nonzero mask, add delta_r = sum_s mask[c, s, r] (ablated_s - out_s)
   to the receivers' inputs (per-head inputs for q, k, v; the MLP's input; the final residual),
   only over senders that some mask uses;
4. read the metric per configuration.

Masks may be fractional and may require gradients (integrated gradients over masks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core import Intervention, Replace, Site
from ..core.cache import Cache
from ..core.interventions import Context
from ..core.metrics import metric_columns
from ..core.run import run
from ..models import wrap
from .ablation import AblationKind, AblationSpec, Node
from .graph import Circuit, Edge, Graph, Group, SenderBlock, graph_of


@dataclass(frozen=True, eq=False)
class AblatedValues:
    """Each sender's output under an ablation, keyed by the sender block's site: tensors
    broadcastable to the run's (batch, pos, [head,] d_model). An absent site means zero.
    `positions` (pos,) is 1 where edges are ablated (the spec's positions), else None for all.

    Example::

        from mechscope.causal import ablated_values, graph_of
        vals = ablated_values(model, graph_of(model), spec, clean, reference_inputs=corrupt)
        vals.at(ms.Site(ms.Kind.Z, 0))           # broadcastable to (batch, pos, head, d_model), or None for zero
    """

    spec: AblationSpec
    values: dict[Site, Tensor]
    rows: int | None  # prompts the values are for (None: broadcast to any batch)
    positions: Tensor | None = None
    forward_passes: int = 0

    def at(self, site: Site) -> Tensor | None:
        """The ablated output of the senders at `site`, or None (zero)."""
        return self.values.get(site)


def ablated_values(model: Any, graph: Graph, spec: AblationSpec, inputs: Tensor,
                   reference_inputs: Tensor | None = None) -> AblatedValues:
    """Sender outputs under `spec` for a run on `inputs` (prompt, pos).

    zero: nothing to compute. mean: the mean over `reference_inputs` per position. resample: for
    each prompt a reference row drawn with `spec.seed` (the same row for every sender). patch:
    the outputs on `reference_inputs`, each prompt's own counterfactual (same shape as `inputs`).

    Example::

        from mechscope.causal import AblationSpec, ablated_values, graph_of
        spec = AblationSpec("mean", reference="random tokens", granularity="edge")
        vals = ablated_values(model, graph_of(model), spec, clean, reference_inputs=ref)   # clean, ref (prompt, pos)
    """
    model = wrap(model)
    n, n_pos = inputs.shape[0], inputs.shape[-1]
    pos = None
    if spec.positions is not None:
        pos = torch.zeros(n_pos)
        pos[list(spec.positions)] = 1.0
    if spec.kind is AblationKind.ZERO:
        return AblatedValues(spec, {}, None, pos, 0)
    if reference_inputs is None:
        raise ValueError(f"a {spec.kind.value} ablation needs reference_inputs ({spec.reference!r})")
    if reference_inputs.shape[-1] != n_pos:
        raise ValueError(f"reference prompts have {reference_inputs.shape[-1]} positions, the prompts {n_pos}: "
                         "edge ablation replaces sender outputs position by position")
    ref = run(model, reference_inputs, capture=graph.sender_sites).cache
    if spec.kind is AblationKind.MEAN:
        values = {s: ref[s].mean(0, keepdim=True) for s in graph.sender_sites}
        return AblatedValues(spec, values, None, pos, 1)
    if spec.kind is AblationKind.RESAMPLE:
        g = torch.Generator().manual_seed(spec.seed)
        pick = torch.randint(reference_inputs.shape[0], (n,), generator=g)
        return AblatedValues(spec, {s: ref[s][pick] for s in graph.sender_sites}, n, pos, 1)
    if reference_inputs.shape != inputs.shape:
        raise ValueError(f"patch ablation needs one counterfactual per prompt: reference "
                         f"{tuple(reference_inputs.shape)} vs prompts {tuple(inputs.shape)}")
    return AblatedValues(spec, {s: ref[s] for s in graph.sender_sites}, n, pos, 1)


@dataclass
class EdgeRunResult:
    """Logits (configs * prompt, pos, vocab), the metric per configuration and prompt (configs,
    prompt) when one was given, and the run's captures."""

    logits: Tensor
    metric: Tensor | None
    cache: Cache
    forward_passes: int = 1


class _Deltas:
    """Per run: each receiver group's delta, computed once for its sites.

    For sender block b, D_b = ablated_b - current_b (current: this run's captured outputs), and
    delta[c, r] = sum_s mask[c, s, r] D_s. Senders that no mask uses are skipped; senders whose
    every edge into the group is ablated add one sum shared by all receivers; the rest take a
    per-receiver product with their weights (or, when most of those are ablated, the shared sum
    minus the product with the kept ones), gathered term by term when few weights are nonzero."""

    def __init__(self, graph: Graph, ablated: AblatedValues, masks: Tensor, n_cfg: int):
        self.graph, self.ablated, self.masks, self.n_cfg = graph, ablated, masks, n_cfg
        self.groups: dict[int, Tensor] = {}
        self.sums: dict[int, Tensor] = {}
        self.grad = masks.requires_grad

    def _diff(self, b: SenderBlock, cache: dict, rows: Tensor | None) -> Tensor:
        """(configs, prompt, pos, k, d_model): ablated minus current outputs of block b's senders
        (only those in `rows`)."""
        cur = cache[b.site]
        cur = cur if b.per_head else cur.unsqueeze(-2)  # (configs*prompt, pos, k, d_model)
        cur = cur.unflatten(0, (self.n_cfg, -1))
        if rows is not None:
            cur = cur.index_select(3, rows)
        abl = self.ablated.at(b.site)
        if abl is None:
            return -cur
        abl = (abl if b.per_head else abl.unsqueeze(-2)).to(cur.dtype)  # (1 or prompt, pos, k, d_model)
        if rows is not None:
            abl = abl.index_select(2, rows)
        return abl.unsqueeze(0) - cur

    def _sum(self, i: int, b: SenderBlock, cache: dict) -> Tensor:
        """(configs, prompt, pos, d_model): sum over block b's senders of ablated minus current (memoised)."""
        if i not in self.sums:
            self.sums[i] = self._diff(b, cache, None).sum(3)
        return self.sums[i]

    def group(self, gi: int, cache: dict) -> Tensor:
        """(configs*prompt, pos, n_recv, d_model): what group gi's receivers add to their inputs."""
        if gi in self.groups:
            return self.groups[gi]
        g = self.graph.groups[gi]
        m = self.graph.group_view(self.masks, g)  # (configs, n_up, n_recv)
        common = None  # (configs, prompt, pos, d_model): added to every receiver of the group
        ds: list[Tensor] = []  # (configs, prompt, pos, k_i, d_model) differences of some senders ...
        ws: list[Tensor] = []  # (configs, k_i, n_recv) ... and their weights: one einsum at the end
        for i, b in enumerate(self.graph.blocks):
            if b.start >= g.n_up:
                break
            mb = m[:, b.start: b.start + b.count]  # (configs, k, n_recv)
            if self.grad:
                ds.append(self._diff(b, cache, None))
                ws.append(mb)
                continue
            # a sender whose edges into the group are all ablated, in every configuration, adds the
            # same to every receiver: one sum, no per-receiver product (node-level masks are all such)
            full = (mb == 1).all(2).all(0)  # (k,)
            partial = ~full & (mb != 0).any(2).any(0)
            if bool(full.all()):
                common = self._sum(i, b, cache) if common is None else common + self._sum(i, b, cache)
            elif bool(full.any()):
                part = self._diff(b, cache, full.nonzero().flatten()).sum(3)
                common = part if common is None else common + part
            if bool(partial.any()):
                rows = partial.nonzero().flatten()
                d = self._diff(b, cache, rows)
                w = mb.index_select(1, rows)
                if int((w != 1).sum()) < int((w != 0).sum()):  # mostly ablated: all of them minus the kept
                    part = d.sum(3)
                    common = part if common is None else common + part
                    w = w - 1
                ds.append(d)
                ws.append(w)
        specific = None
        if ds:
            specific = _weighted(torch.cat(ds, 3), torch.cat(ws, 1), g.n_recv)
        if common is None and specific is None:
            raise RuntimeError("a group with a nonzero mask found no sender")  # pragma: no cover
        if specific is None:
            total = common.unsqueeze(3).expand(-1, -1, -1, g.n_recv, -1)
        else:
            total = specific if common is None else specific + common.unsqueeze(3)
        if self.ablated.positions is not None:
            total = total * self.ablated.positions.to(total)[:, None, None]
        out = total.flatten(0, 1)
        self.groups[gi] = out
        return out


def _weighted(d: Tensor, w: Tensor, n_recv: int) -> Tensor:
    """sum_k w[c, k, r] d[c, b, p, k, :] -> (configs, prompt, pos, n_recv, d_model).

    A dense product when the weights are dense; when few are nonzero (a circuit's kept edges, a
    few patched paths), only those terms are gathered and added, so the cost follows them."""
    nnz = w.nonzero()  # (n, 3): config, sender, receiver
    if w.requires_grad or nnz.shape[0] * 16 >= w.numel():
        return torch.einsum("cbpkd,ckr->cbprd", d, w.to(d.dtype))
    n_cfg = d.shape[0]
    per_sender = d.permute(0, 3, 1, 2, 4)  # (configs, k, prompt, pos, d_model)
    out = d.new_zeros(n_cfg * n_recv, *per_sender.shape[2:])
    for chunk in nnz.split(256):  # bounded memory: at most 256 gathered terms at a time
        c, k, r = chunk.unbind(1)
        terms = per_sender[c, k] * w[c, k, r].to(d.dtype)[:, None, None, None]  # (n, prompt, pos, d_model)
        out.index_add_(0, c * n_recv + r, terms)
    return out.unflatten(0, (n_cfg, n_recv)).permute(0, 2, 3, 1, 4)


def _group_active(graph: Graph, masks: Tensor) -> list[bool]:
    if masks.requires_grad:
        return [True] * len(graph.groups)
    return [bool(graph.group_view(masks, g).any()) for g in graph.groups]


def receiver_interventions(graph: Graph, deltas: _Deltas, active: Sequence[bool]) -> list[Intervention]:
    """A Replace at every receiver site of an active group: input + delta."""
    ivs: list[Intervention] = []
    for gi, g in enumerate(graph.groups):
        if not active[gi]:
            continue
        for j, site in enumerate(g.sites):
            def fn(x: Tensor, ctx: Context, gi: int = gi, j: int = j, g: Group = g) -> Tensor:
                delta = deltas.group(gi, ctx.cache)  # (rows, pos, n_recv, d_model)
                part = delta[:, :, j * g.heads:(j + 1) * g.heads]
                return x + (part if x.dim() == 4 else part.squeeze(2)).to(x.dtype)
            ivs.append(Replace(site, fn=fn))
    return ivs


def edge_run(model: Any, graph: Graph | None, inputs: Tensor, masks: Tensor, ablated: AblatedValues, *,
             metric: Callable[[Tensor], Tensor] | None = None, interventions: Sequence[Intervention] = (),
             capture: Sequence[Site] = (), track_grad: bool = False, last_only: bool = False) -> EdgeRunResult:
    """Run `inputs` (prompt, pos) once per row of `masks` (configs, n_edges) or (n_edges,), each
    configuration with its own edges ablated (mask 1; fractions scale the change).

    `interventions` are applied too, on every row. `last_only`: only the last position's logits are
    needed (the adapter may skip the rest of the unembedding).

    Example::

        from mechscope.causal import ablated_values, edge_run, graph_of
        graph = graph_of(model)
        vals = ablated_values(model, graph, spec, clean, reference_inputs=corrupt)
        masks = torch.eye(graph.n_edges)[:4]     # (configs, n_edges): each row ablates one edge
        out = edge_run(model, graph, clean, masks, vals, metric=ld)
    """
    model = wrap(model)
    graph = graph or graph_of(model)
    masks = masks.unsqueeze(0) if masks.dim() == 1 else masks
    if masks.shape[-1] != graph.n_edges:
        raise ValueError(f"masks have {masks.shape[-1]} entries, the graph {graph.n_edges} edges")
    n_cfg, n = masks.shape[0], inputs.shape[0]
    if ablated.rows is not None and ablated.rows != n:
        raise ValueError(f"ablated values are for {ablated.rows} prompts, the run has {n}")
    active = _group_active(graph, masks)
    deltas = _Deltas(graph, ablated, masks, n_cfg)
    batch = inputs.repeat(n_cfg, 1) if n_cfg > 1 else inputs
    senders = graph.sender_sites if any(active) else []
    ivs = list(interventions) + receiver_interventions(graph, deltas, active)
    prepared = model.prepare(batch)
    prepared.last_logits_only = last_only
    prepared.logit_columns = metric_columns(metric) if last_only else None
    out = run(model, prepared, capture=list(dict.fromkeys([*senders, *capture])), interventions=ivs,
              track_grad=track_grad or masks.requires_grad)
    m = None
    if metric is not None:
        logits = out.logits.unflatten(0, (n_cfg, n))
        m = torch.stack([metric(logits[c]) for c in range(n_cfg)])
    keep = {s: out.cache[s] for s in capture}
    return EdgeRunResult(out.logits, m, Cache(keep))


def receiver_grads(model: Any, graph: Graph, inputs: Tensor, metric: Callable[[Tensor], Tensor], *,
                   interventions: Sequence[Intervention] = ()) -> tuple[dict[Site, Tensor], Tensor]:
    """Gradients of the metric summed over prompts at every receiver input (one forward and one
    backward pass): {receiver site: (prompt, pos, [head,] d_model)}, and the metric per prompt."""
    model = wrap(model)
    total = lambda out: metric(model.logits(out)).sum()  # noqa: E731
    res = run(model, inputs, capture=graph.receiver_sites, interventions=list(interventions), grad=total)
    per_prompt = metric(res.logits.detach()).detach()
    return {s: res.grads[s] for s in graph.receiver_sites}, per_prompt


def scores_from_grads(graph: Graph, diffs: dict[Site, Tensor], grads: dict[Site, Tensor], n_prompts: int) -> Tensor:
    """(n_edges,): diff_s . grad_r summed over positions and d_model, averaged over prompts.

    `diffs` per sender site (prompt, pos, [head,] d_model): ablated minus clean outputs;
    `grads` per receiver site, as `receiver_grads` returns them."""
    out = torch.zeros(graph.n_edges, dtype=torch.float64)
    for g in graph.groups:
        # receivers' gradients, (prompt, pos, n_recv, d_model), site-major as the group lists them
        gr = torch.cat([grads[s] if grads[s].dim() == 4 else grads[s].unsqueeze(2) for s in g.sites], 2)
        gr = gr.permute(2, 0, 1, 3).reshape(g.n_recv, -1)  # (n_recv, prompt*pos*d_model)
        block = torch.zeros(g.n_up, g.n_recv, dtype=torch.float64)
        for b in graph.blocks:
            if b.start >= g.n_up:
                break
            d = diffs[b.site]
            d = d if b.per_head else d.unsqueeze(2)  # (prompt, pos, k, d_model)
            d = d.permute(2, 0, 1, 3).reshape(b.count, -1).to(gr.dtype)  # (k, prompt*pos*d_model)
            block[b.start: b.start + b.count] = (d @ gr.T).double()
        out[g.offset: g.offset + g.size] = block.flatten() / n_prompts
    return out


def differences(graph: Graph, ablated: AblatedValues, clean: dict[Site, Tensor]) -> dict[Site, Tensor]:
    """Per sender site: ablated minus clean output, restricted to the ablated positions."""
    out = {}
    for s in graph.sender_sites:
        a = ablated.at(s)
        d = -clean[s] if a is None else a.to(clean[s].dtype).expand_as(clean[s]) - clean[s]
        if ablated.positions is not None:
            shape = [1, -1] + [1] * (d.dim() - 2)
            d = d * ablated.positions.to(d).view(shape)
        out[s] = d
    return out


@dataclass(frozen=True)
class EdgeScores:
    """A score per edge of `graph` (an estimate or a measurement of the metric's change when the
    edge alone is ablated), with how it was made: method, ablation, metric, prompts, passes.

    Example::

        from mechscope.causal import eap
        scores = eap(model, clean, ld, spec, reference_inputs=corrupt)
        scores.values                            # (n_edges,)
        scores.top(10)                           # [(Edge, score), ...] by |score|
        circuit = scores.circuit(k=200)
    """

    graph: Graph
    values: Tensor  # (n_edges,)
    how: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.shape != (self.graph.n_edges,):
            raise ValueError(f"expected {self.graph.n_edges} edge scores, got shape {tuple(self.values.shape)}")

    def ranking(self) -> list[int]:
        """Edge indices by decreasing |score| (ties in graph order, unscored (NaN) edges last)."""
        key = torch.nan_to_num(self.values.double().abs(), nan=-1.0)
        return torch.argsort(-key, stable=True).tolist()

    def top(self, k: int) -> list[tuple[Edge, float]]:
        """The k edges of largest |score|, with their scores."""
        return [(self.graph.edges[i], float(self.values[i])) for i in self.ranking()[:k]]

    def circuit(self, k: int | None = None, threshold: float | None = None, name: str = "") -> Circuit:
        """The k edges of largest |score|, or those with |score| >= threshold."""
        if (k is None) == (threshold is None):
            raise ValueError("give exactly one of k and threshold")
        if k is not None:
            idx = self.ranking()[:k]
        else:
            idx = (self.values.abs() >= threshold).nonzero().flatten().tolist()
        return Circuit(frozenset(self.graph.edges[i] for i in idx), name or f"{self.how.get('method', '')} top")

    def node_scores(self) -> dict[Node, float]:
        """Per sender: the sum of |score| over its outgoing edges."""
        out: dict[Node, float] = {}
        for e, v in zip(self.graph.edges, self.values.tolist()):
            out[e.sender] = out.get(e.sender, 0.0) + abs(v)
        return out

    def describe(self) -> dict[str, Any]:
        """How the scores were measured (`how`), as plain data."""
        return dict(self.how)

    def __str__(self) -> str:
        how = ", ".join(f"{k}={v}" for k, v in self.how.items())
        return f"EdgeScores({self.graph.n_edges} edges; {how})"

    def _repr_html_(self) -> str:
        from ..report.notebook import edge_scores_html

        return edge_scores_html(self)


def metric_name(metric: Callable) -> str:
    """A metric's name: its `name` attribute, else the function's name."""
    return getattr(metric, "name", getattr(metric, "__name__", "metric"))


def edge_how(spec: AblationSpec) -> dict[str, Any]:
    """The ablation's description for an edge-level measurement."""
    return spec.describe() | {"level": "edge"}


def passes_how(forward: int, backward: int) -> dict[str, int]:
    """{"forward_passes", "backward_passes"}: what a method cost, for its `how`."""
    return {"forward_passes": int(forward), "backward_passes": int(backward)}


__all__ = ["AblatedValues", "EdgeRunResult", "EdgeScores", "ablated_values", "differences", "edge_how", "edge_run",
           "metric_name", "passes_how", "receiver_grads", "scores_from_grads"]
