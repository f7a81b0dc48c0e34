"""Attribution graph of a prompt: direct linear effects between latents, errors, tokens and logits.

Following Ameisen et al. (2025, "Circuit tracing: revealing computational graphs in language
models"): in the local replacement model with attention patterns and norm divisors frozen (see
replacement.py) every latent's pre-activation and every logit is a linear function of the token
embeddings and the MLP outputs. Each MLP output is a sum of sources: active latents' decoder
writes (code × decoder row, to every layer the latent writes), the error term and decoder biases.
So the direct effect of source s on target t is

    A[t, s] = <write of s, ∂ input(t) / ∂ MLP-output (or embedding) at s's layer and position>

with the gradient taken in the frozen model, where nothing flows through an MLP (its output is a
leaf), a query or a key (patterns are constants) or a norm's divisor.

The gradients come from one forward pass and batched backward passes: the inputs of all targets
(latent pre-activations `x @ W_enc[:, f] + b_enc[f]` at their positions, the chosen logits at the
last position) are one vector y, and each backward pass sends a block of one-hot rows through
`torch.autograd.grad(..., is_grads_batched=True)`, so a block of targets costs one vectorised
backward pass; every source's effect is then a dot product with the gradient at its site. A block
is differentiated from the targets it holds only (y is kept in parts, one per layer and the logits),
so a block of layer-l latents runs the backward pass through layers 0..l and no further.

The rest of each target's input (norm gains' biases, attention biases, decoder biases, position
embeddings) is its bias: measured by a second frozen forward pass with every source set to zero
(embeddings, codes, errors), not by subtraction, so `linearity_error`, the largest
|Σ_s A[t, s] + bias[t] − input(t)|, checks that the frozen model is linear in the sources.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core.interventions import Replace
from ..core.progress import progress_bar
from ..core.run import run
from ..core.site import Kind, Site
from .graph import AttributionGraph, Node, NodeKind
from .replacement import LocalReplacement, _writes


class GraphBudgetError(MemoryError):
    """A graph whose dense matrices would not fit the memory budget (says how big, and what to do).

    Example::

        from mechscope.graphs import GraphBudgetError, attribute
        try:
            g = attribute(rep, memory_budget=1e8)
        except GraphBudgetError as err:
            print(err)                           # how big, and what to do
    """


def top_logits(logits: Tensor, mass: float = 0.95, most: int = 10) -> list[int]:
    """The most probable tokens at the last position until their probability reaches `mass` (≤ `most`).

    Example::

        from mechscope.graphs import top_logits
        top_logits(logits[0, -1], mass=0.95, most=10)   # the last position's (vocab,) logits -> token ids
    """
    p = torch.softmax(logits.double(), -1)
    order = p.argsort(descending=True)[:most]
    cum = p[order].cumsum(0)
    n = int((cum < mass).sum()) + 1
    return order[:min(n, most)].tolist()


def graph_bytes(n_nodes: int) -> int:
    """Memory the dense graph and its pruning need: about 80 bytes per matrix entry.

    Measured: a SmolLM2-135M graph of 8,186 nodes peaked 4.4 GB above the same model's graph of
    2,426 nodes, 73 bytes per added entry (the float32 matrix, pruning's float64 normalised copies,
    edge scores and their sort order over every entry)."""
    return 80 * n_nodes * n_nodes


def attribute(rep: LocalReplacement, target: int | None = None, *, logits: Sequence[int] | None = None,
              batch_size: int = 64, memory_budget: float = 4e9, token_text: list[str] | None = None,
              model_name: str = "", demean: bool = True) -> AttributionGraph:
    """The attribution graph of `rep`'s prompt.

    A logit node's input is its logit minus the mean logit over the vocabulary (`demean`, the
    default): what moves the softmax; a write that raises every logit alike moves nothing.

    Logit nodes: `logits` if given, else the top ones up to 95% of the probability (at most 10),
    with `target` added when given. Their influence weights: all on `target` when given, else the
    logits' probabilities (renormalised).

    Example::

        from mechscope.graphs import LocalReplacement, attribute
        rep = LocalReplacement.build(model, ids, {1: tc1, 3: tc3})   # ids (1, pos)
        g = attribute(rep, target=token_id)
    """
    lat = rep.latents
    pos = rep.ids.shape[1]
    chosen = list(logits) if logits is not None else top_logits(rep.logits[-1])
    if target is not None and target not in chosen:
        chosen.append(int(target))
    probs = torch.softmax(rep.logits[-1].cpu().double(), -1)  # float64 on the CPU (MPS has none), like the graph

    # --- nodes ------------------------------------------------------------------------------------
    act_at: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # layer -> (pos, index, activation)
    nodes: list[Node] = []
    for l in sorted(lat):
        p, f = rep.codes[l].nonzero(as_tuple=True)
        a = rep.codes[l][p, f]
        act_at[l] = (p, f, a)
        nodes += [Node(NodeKind.LATENT, l, int(pi), int(fi), float(ai)) for pi, fi, ai in zip(p, f, a)]
    n_lat = len(nodes)
    nodes += [Node(NodeKind.ERROR, l, p, None, float(rep.errors[l][p].norm()))
              for l in range(rep.n_layers) for p in range(pos)]
    nodes += [Node(NodeKind.TOKEN, None, p, int(rep.ids[0, p]), float(rep.embed[p].norm())) for p in range(pos)]
    nodes += [Node(NodeKind.LOGIT, None, pos - 1, t, float(rep.logits[-1, t]), float(probs[t])) for t in chosen]
    N = len(nodes)
    if graph_bytes(N) > memory_budget:
        raise GraphBudgetError(
            f"the graph of this {pos}-token prompt has {N:,} nodes ({n_lat:,} active latents): its dense "
            f"matrices need about {graph_bytes(N) / 1e9:.1f} GB, over the budget of {memory_budget / 1e9:.1f} GB; "
            "shorten the prompt, give transcoders for fewer layers (or with a smaller k), or raise the budget")
    err0, tok0, log0 = n_lat, n_lat + rep.n_layers * pos, n_lat + rep.n_layers * pos + pos

    # --- the frozen forward pass with the sources as leaves --------------------------------------------
    unembed = _unembedding(rep, chosen, demean)
    parts, E, M = _frozen_inputs(rep, act_at, chosen, demean, unembed, zero_sources=False)
    with torch.no_grad():
        y0 = torch.cat(_frozen_inputs(rep, act_at, chosen, demean, unembed, zero_sources=True)[0])
    # y is the concatenation of `parts` (each layer's latents, then the logits); a block of rows is
    # differentiated from the parts it overlaps only, so its backward pass stops at their layers
    ends = torch.tensor([len(q) for q in parts]).cumsum(0).tolist()
    spans = list(zip([0, *ends[:-1]], ends))

    A = torch.zeros(N, N, dtype=torch.float32)
    rows = list(range(n_lat)) + list(range(log0, N))  # the targets, in the order of y
    leaves = [E] + [M[l] for l in range(rep.n_layers)]
    n_y = ends[-1]
    row_sums = torch.zeros(n_y, dtype=torch.float64)  # in the model's precision, before A is stored as float32
    for start in progress_bar(range(0, n_y, batch_size), desc="graph rows", total=-(-n_y // batch_size)):
        stop = min(start + batch_size, n_y)
        outs, gos = [], []
        for (a, b), q in zip(spans, parts):
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                go = torch.zeros(stop - start, b - a, dtype=q.dtype, device=q.device)
                go[torch.arange(lo - start, hi - start), torch.arange(lo - a, hi - a)] = 1
                outs.append(q)
                gos.append(go)
        g = torch.autograd.grad(outs, leaves, gos, retain_graph=True, is_grads_batched=True, allow_unused=True)
        gE = _or_zero(g[0], E)[:, 0]  # (B, pos, d)
        gM = {l: _or_zero(g[1 + l], M[l])[:, 0] for l in range(rep.n_layers)}
        block = torch.zeros(stop - start, N, dtype=gE.dtype, device=gE.device)
        block[:, tok0:log0] = (gE * rep.embed.detach()).sum(-1)
        for l in range(rep.n_layers):
            block[:, err0 + l * pos: err0 + (l + 1) * pos] = (gM[l] * rep.errors[l]).sum(-1)
        col = 0
        for l in sorted(lat):
            p, f, a = act_at[l]
            eff = torch.zeros(stop - start, len(p), dtype=gE.dtype, device=gE.device)
            for t, W in lat[l].W_dec.items():
                eff += torch.einsum("bnd,nd->bn", gM[t][:, p], W[f].to(gE))
            block[:, col:col + len(p)] = eff * a
            col += len(p)
        block = block.cpu()  # the dense graph and its float64 sums live on the CPU (MPS has no float64)
        A[rows[start:stop]] = block.float()
        row_sums[start:stop] = block.double().sum(1)
    del parts, leaves, E, M

    inputs = torch.zeros(N, dtype=torch.float64)
    bias = torch.zeros(N, dtype=torch.float64)
    y_val = _y_values(rep, act_at, chosen, demean)
    inputs[rows] = y_val
    bias[rows] = y0.cpu().double()
    lin = float((row_sums + bias[rows] - inputs[rows]).abs().max()) if rows else 0.0
    w = torch.zeros(N, dtype=torch.float64)
    if target is not None:
        w[log0 + chosen.index(int(target))] = 1.0
    else:
        pw = probs[chosen]
        w[log0:] = pw / pw.sum()
    return AttributionGraph(model_name, rep.ids[0].tolist(), nodes, A, bias.float(), inputs.float(), w.float(),
                            lin, rep.exactness, token_text,
                            meta={"n_layers": rep.n_layers, "layers_with_latents": sorted(lat),
                                  "target": target, "batch_size": batch_size, "demeaned_logits": demean})


def _or_zero(g: Tensor | None, like: Tensor) -> Tensor:
    return g if g is not None else torch.zeros(1, *like.shape, dtype=like.dtype, device=like.device)


def logit_input(logits: Tensor, chosen: list[int], demean: bool) -> Tensor:
    """(..., len(chosen)) the logit nodes' inputs from logits (..., vocab)."""
    out = logits[..., chosen]
    return out - logits.mean(-1, keepdim=True) if demean else out


def _y_values(rep: LocalReplacement, act_at, chosen: list[int], demean: bool) -> Tensor:
    """The targets' inputs from the real run: latents' pre-activations, then the chosen logits (float64, on the
    CPU: MPS has no float64)."""
    parts = []
    for l in sorted(act_at):
        p, f, _ = act_at[l]
        pre = rep.latents[l].preactivations(rep.inputs[l])  # (pos, n)
        parts.append(pre[p, f].cpu().double())
    parts.append(logit_input(rep.logits[-1].cpu().double(), chosen, demean))
    return torch.cat(parts)


def _unembedding(rep: LocalReplacement, chosen: list[int], demean: bool) -> tuple[Site, Tensor, Tensor] | None:
    """(site the unembedding reads, U (d_model, n), c (n,)) with logit nodes' inputs = x[-1] @ U + c.

    Reading the chosen columns of W_U at the unembedding's input keeps the whole vocabulary out of
    the backward passes. None when the model has no unembedding weights to read (then the logits
    themselves are differentiated).
    """
    sites = set(rep.adapter.sites())
    site = Site(Kind.LN_FINAL) if Site(Kind.LN_FINAL) in sites else Site(Kind.RESID_POST, rep.n_layers - 1)
    weights = getattr(rep.adapter, "weights", None)
    w = weights() if weights is not None else None
    if w is None or getattr(w, "W_U", None) is None or site not in sites:
        return None
    W = w.W_U.detach()
    b = w.b_U.detach() if w.b_U is not None else torch.zeros(W.shape[1], dtype=W.dtype, device=W.device)
    U, c = W[:, chosen], b[chosen]
    if demean:
        U, c = U - W.mean(1, keepdim=True), c - b.mean()
    return site, U, c


def _frozen_inputs(rep: LocalReplacement, act_at, chosen: list[int], demean: bool, unembed, zero_sources: bool
                   ) -> tuple[list[Tensor], Tensor, dict[int, Tensor]]:
    """y (targets' inputs) from the frozen model, with the embeddings and MLP outputs as leaves: y in parts
    (each layer's latents in order, then the logits), whose concatenation is y.

    With `zero_sources`, embeddings, codes and errors are zero: the MLP outputs are the decoder
    biases alone, and y is the targets' bias. A difference between y and the real run's values
    (a nonlinearity after the unembedding's input, say) shows in the graph's linearity error.
    """
    lat = rep.latents
    if zero_sources:
        zero_codes = {l: torch.zeros_like(c) for l, c in rep.codes.items()}
        E = torch.zeros_like(rep.embed)[None]
        M = {l: _writes(lat, zero_codes, l, rep.mlp_out[l])[None] for l in range(rep.n_layers)}
    else:
        E = rep.embed.detach().clone()[None].requires_grad_(True)
        M = {l: rep.mlp_out[l].detach().clone()[None].requires_grad_(True) for l in range(rep.n_layers)}
    seen: dict = {}

    def record(key):
        def fn(x: Tensor, ctx) -> Tensor:
            seen[key] = x
            return x
        return fn

    ivs = rep.freeze() + [Replace(Site(Kind.EMBED), fn=lambda x, ctx: E)]
    ivs += [Replace(Site(Kind.MLP_OUT, l), fn=(lambda m: lambda x, ctx: m)(M[l])) for l in range(rep.n_layers)]
    ivs += [Replace(lat[l].reads, fn=record(l)) for l in lat]
    if unembed is not None:
        ivs.append(Replace(unembed[0], fn=record("unembed")))
    res = run(rep.adapter, rep.ids, interventions=ivs, track_grad=not zero_sources)
    parts = []
    for l in sorted(lat):
        p, f, _ = act_at[l]
        x = seen[l][0]  # (pos, d)
        W = lat[l].W_enc.to(x)
        parts.append((x[p] * W[:, f].t()).sum(-1) + lat[l].b_enc[f].to(x))
    if unembed is not None:
        x = seen["unembed"][0, -1]
        parts.append(x @ unembed[1].to(x) + unembed[2].to(x))
    else:
        parts.append(logit_input(res.logits[0, -1], chosen, demean))
    return parts, E, M
