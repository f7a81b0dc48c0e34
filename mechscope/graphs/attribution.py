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
backward pass; every source's effect is then a dot product with the gradient at its site.

The rest of each target's input (norm gains' biases, attention biases, decoder biases, position
embeddings) is its bias: measured by a second frozen forward pass with every source set to zero
(embeddings, codes, errors), not by subtraction, so `linearity_error`, the largest
|Σ_s A[t, s] + bias[t] − input(t)|, checks that the frozen model is linear in the sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.interventions import Patch, Replace
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
    """Memory a graph of `n_nodes` needs beside the model and its transcoders: 5 bytes per matrix entry
    and 40 kB per node.

    The float32 adjacency (4 bytes an entry) and pruning's bool edge mask (1 byte); everything else
    works a block of rows at a time: pruning's float64 blocks of 512 rows (about 8 copies of 8 bytes,
    32 kB per node) and a block of gradients. Measured on a 15,866-node SmolLM2-135M layout:
    pruning peaked 0.76 GB above the adjacency, the estimate's non-adjacency part is 0.9 GB."""
    return 5 * n_nodes * n_nodes + 40_000 * n_nodes


RUNTIME_BYTES = 350_000_000  # the interpreter, torch and a tokenizer (SmolLM2-135M graphs: 0.35 GB measured)


def resident_bytes(rep: LocalReplacement) -> int:
    """Memory held before a graph is built: the model's parameters and buffers, the latents' weights
    (each storage once) and `RUNTIME_BYTES`. `attribute` adds `graph_bytes` and checks the sum."""
    seen: dict[int, int] = {}
    module = getattr(rep.adapter, "module", None)
    tensors = list(module.parameters()) + list(module.buffers()) if isinstance(module, torch.nn.Module) else []
    for lay in rep.latents.values():
        tensors += [lay.W_enc, lay.b_enc, *lay.W_dec.values(), *lay.b_dec.values()]
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
    return RUNTIME_BYTES + sum(seen.values())


def attribute(rep: LocalReplacement, target: int | None = None, *, logits: Sequence[int] | None = None,
              batch_size: int = 64, memory_budget: float = 4e9, token_text: list[str] | None = None,
              model_name: str = "", demean: bool = True) -> AttributionGraph:
    """The attribution graph of `rep`'s prompt.

    A logit node's input is its logit minus the mean logit over the vocabulary (`demean`, the
    default): what moves the softmax; a write that raises every logit alike moves nothing.

    Logit nodes: `logits` if given, else the top ones up to 95% of the probability (at most 10),
    with `target` added when given. Their influence weights: all on `target` when given, else the
    logits' probabilities (renormalised).

    `memory_budget` is for the whole process: the graph's matrices (`graph_bytes`) plus what is
    already held (`resident_bytes`: model, latents, runtime); a graph over it raises
    `GraphBudgetError` before anything large is allocated.

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
    held = resident_bytes(rep)
    if graph_bytes(N) + held > memory_budget:
        raise GraphBudgetError(
            f"the graph of this {pos}-token prompt has {N:,} nodes ({n_lat:,} active latents): its dense "
            f"matrices need about {graph_bytes(N) / 1e9:.1f} GB beside the {held / 1e9:.1f} GB the model, the "
            f"latents and the runtime hold, over the budget of {memory_budget / 1e9:.1f} GB; shorten the prompt, "
            "give transcoders for fewer layers (or with a smaller k), or raise the budget")
    err0, tok0, log0 = n_lat, n_lat + rep.n_layers * pos, n_lat + rep.n_layers * pos + pos

    # --- the bias: the frozen model with every source zero -----------------------------------------
    unembed = _unembedding(rep, chosen, demean)
    with torch.no_grad():
        y0 = _zero_source_inputs(rep, act_at, chosen, demean, unembed)

    # --- the rows: one backward pass per block of targets, the block a real batch ---------------------
    A = torch.zeros(N, N, dtype=torch.float32)
    rows = list(range(n_lat)) + list(range(log0, N))  # the targets, in the order of y
    row_sums = _rows(rep, act_at, chosen, demean, unembed, A, rows, batch_size, (err0, tok0, log0))

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


def _frozen_run(rep: LocalReplacement, E: Tensor, M: dict[int, Tensor], unembed, length: int | None = None
                ) -> tuple[dict, Tensor]:
    """The frozen model on the prompt's first `length` tokens (all by default), embeddings `E` and MLP outputs
    `M` (1, pos, d) written in: the latents' inputs (layer -> (1, length, d)), the unembedding's input
    ("unembed") when read, and the logits. In a causal model the first tokens' values do not depend on
    later ones, so a prefix gives them exactly, with the frozen values cut to the prefix."""
    n = rep.ids.shape[1] if length is None else length
    seen: dict = {}

    def record(key):
        def fn(x: Tensor, ctx) -> Tensor:
            seen[key] = x
            return x
        return fn

    ivs = [Patch(s, value=_prefix(s, v.detach(), n)) for s, v in rep.frozen.items()]
    ivs += [Replace(Site(Kind.EMBED), fn=lambda x, ctx: E[:, :n])]
    ivs += [Replace(Site(Kind.MLP_OUT, l), fn=(lambda m: lambda x, ctx: m[:, :n])(M[l])) for l in range(rep.n_layers)]
    ivs += [Replace(rep.latents[l].reads, fn=record(l)) for l in rep.latents]
    if unembed is not None:
        ivs.append(Replace(unembed[0], fn=record("unembed")))
    res = run(rep.adapter, rep.ids[:, :n], interventions=ivs, track_grad=E.requires_grad)
    return seen, res.logits


def _prefix(site: Site, value: Tensor, n: int) -> Tensor:
    """A frozen value (a pattern (1, head, pos, kpos) or a norm divisor (1, pos, 1)) for the first n tokens."""
    if site.kind is Kind.PATTERN:
        return value[..., :n, :n]
    return value.narrow(site.layout.pos % value.dim(), 0, n)


def _causal(rep: LocalReplacement) -> bool:
    """Whether every frozen attention pattern is causal (no weight on a later position): then a target at
    position p depends on the first p + 1 tokens only."""
    for s, v in rep.frozen.items():
        if s.kind is Kind.PATTERN and bool(v.detach().triu(1).ne(0).any()):
            return False
    return True


def _zero_source_inputs(rep: LocalReplacement, act_at, chosen: list[int], demean: bool, unembed) -> Tensor:
    """The targets' bias: their inputs in the frozen model with embeddings, codes and errors zero (the MLP
    outputs are the decoder biases alone). A difference from the real run's values not made up by the
    edges (a nonlinearity after the unembedding's input, say) shows in the graph's linearity error."""
    lat = rep.latents
    zero_codes = {l: torch.zeros_like(c) for l, c in rep.codes.items()}
    E = torch.zeros_like(rep.embed)[None]
    M = {l: _writes(lat, zero_codes, l, rep.mlp_out[l])[None] for l in range(rep.n_layers)}
    seen, logits = _frozen_run(rep, E, M, unembed)
    parts = []
    for l in sorted(lat):
        p, f, _ = act_at[l]
        x = seen[l][0]  # (pos, d)
        parts.append((x[p] * lat[l].W_enc.to(x)[:, f].t()).sum(-1) + lat[l].b_enc[f].to(x))
    if unembed is not None:
        x = seen["unembed"][0, -1]
        parts.append(x @ unembed[1].to(x) + unembed[2].to(x))
    else:
        parts.append(logit_input(logits[0, -1], chosen, demean))
    return torch.cat(parts)


@dataclass
class _Targets:
    """Targets reading one tensor of the frozen run: rows `first`.. of y, each the dot product of `vectors[i]`
    (n, d) with that tensor at position `pos[i]`."""

    key: object  # a latent layer, "unembed" or "logits"
    first: int
    pos: Tensor  # (n,)
    vectors: Tensor  # (n, d)


def _targets(rep: LocalReplacement, act_at, chosen: list[int], demean: bool, unembed, vocab: int) -> list[_Targets]:
    """The targets in the order of y: each latent layer's active latents (W_enc columns at their positions),
    then the logits (W_U's chosen columns, or the logits themselves, at the last position)."""
    out, first = [], 0
    last = rep.ids.shape[1] - 1
    for l in sorted(act_at):
        p, f, _ = act_at[l]
        out.append(_Targets(l, first, p, rep.latents[l].W_enc[:, f].t()))
        first += len(p)
    if unembed is not None:
        vec = unembed[1].t()
        key = "unembed"
    else:
        vec = torch.zeros(len(chosen), vocab, dtype=rep.logits.dtype, device=rep.logits.device)
        vec[torch.arange(len(chosen)), torch.as_tensor(chosen)] = 1
        if demean:
            vec -= 1 / vocab
        key = "logits"
    out.append(_Targets(key, first, torch.full((len(chosen),), last, dtype=torch.long), vec))
    return out


def _rows(rep: LocalReplacement, act_at, chosen: list[int], demean: bool, unembed, A: Tensor, rows: list[int],
          batch_size: int, offsets: tuple[int, int, int]) -> Tensor:
    """Fill the target rows of A (in place); returns their sums in float64 (before A stores them as float32).

    Targets are taken position by position. For the targets at position p, the frozen model runs on the
    prompt's first p + 1 tokens (a causal model's values there do not depend on later tokens), with the
    embeddings and MLP outputs as leaves; each block of `batch_size` targets is then one vectorised
    backward pass (`is_grads_batched`), target i's read vector seeding its read at p. A block's
    backward pass starts at its highest layer and covers p + 1 positions, so its cost falls with both.
    The effect of each source is a dot product of the gradient at its site with its write.
    """
    err0, tok0, log0 = offsets
    lat, pos = rep.latents, rep.ids.shape[1]
    n_y = len(rows)
    dev = rep.embed.device
    E = rep.embed.detach().clone()[None].requires_grad_(True)
    M = {l: rep.mlp_out[l].detach().clone()[None].requires_grad_(True) for l in range(rep.n_layers)}
    leaves = [E] + [M[l] for l in range(rep.n_layers)]
    targets = _targets(rep, act_at, chosen, demean, unembed, rep.logits.shape[-1])
    # each target's place: (its group's index, its position); taken in order of position, then group
    which = torch.cat([torch.full((len(tg.pos),), k, dtype=torch.long) for k, tg in enumerate(targets)])
    where = torch.cat([tg.pos.cpu() for tg in targets])
    by_prefix = where + 1 if _causal(rep) else torch.full_like(where, pos)
    order = torch.argsort(by_prefix * len(targets) + which, stable=True)
    # each source layer's active latents: decoder rows per written layer, and their span per position
    writes = {l: {t: W[act_at[l][1]] for t, W in lat[l].W_dec.items()} for l in sorted(lat)}
    spans = {l: _spans(act_at[l][0], pos) for l in sorted(lat)}
    row_sums = torch.zeros(n_y, dtype=torch.float64)
    blocks = []
    for n in by_prefix.unique().tolist():
        ids = order[by_prefix[order] == n]
        blocks += [(n, ids[s:s + batch_size]) for s in range(0, len(ids), batch_size)]
    outs, outs_n = None, 0
    for n, ids in progress_bar(blocks, desc="graph rows"):
        if n != outs_n:
            # free the previous prefix's graph before building the next: drop every name that holds it
            outs = seen = logits = outputs = x = None
            seen, logits = _frozen_run(rep, E, M, unembed, n)
            outs, outs_n = {**seen, "logits": logits}, n
        b = len(ids)
        outputs, seeds = [], []
        for k in which[ids].unique().tolist():
            tg = targets[k]
            mine = (which[ids] == k).nonzero().flatten()
            local = ids[mine] - tg.first
            x = outs[tg.key]  # (1, n, d)
            seed = torch.zeros(b, *x.shape, dtype=x.dtype, device=dev)
            seed[mine.to(dev), 0, tg.pos[local].to(dev)] = tg.vectors[local.to(tg.vectors.device)].to(x)
            outputs.append(x)
            seeds.append(seed)
        g = torch.autograd.grad(outputs, leaves, seeds, retain_graph=True, is_grads_batched=True, allow_unused=True)
        gE = g[0][:, 0, :n] if g[0] is not None else torch.zeros(b, n, E.shape[-1], dtype=E.dtype, device=dev)
        gM = {l: g[1 + l][:, 0, :n] for l in range(rep.n_layers) if g[1 + l] is not None}
        block = torch.zeros(b, A.shape[1], dtype=gE.dtype, device=dev)
        block[:, tok0:tok0 + n] = (gE * rep.embed[:n].detach()).sum(-1)
        for t, gt in gM.items():
            block[:, err0 + t * pos: err0 + t * pos + n] = (gt * rep.errors[t][:n]).sum(-1)
        col = 0
        for l in sorted(lat):
            p, _, a = act_at[l]
            for t, W in writes[l].items():
                if t not in gM:
                    continue
                for q, (s0, s1) in spans[l]:
                    if q < n:
                        block[:, col + s0:col + s1] += gM[t][:, q] @ W[s0:s1].to(gE).t()
            block[:, col:col + len(p)] *= a.to(gE)
            col += len(p)
        block = block.cpu()  # the dense graph and its float64 sums live on the CPU (MPS has no float64)
        A[[rows[i] for i in ids.tolist()]] = block.float()
        row_sums[ids] = block.double().sum(1)
    return row_sums


def _spans(p: Tensor, pos: int) -> list[tuple[int, tuple[int, int]]]:
    """(position, (start, stop)) of each position's run in `p`, the positions of a layer's active latents in
    ascending order (as `nonzero` gives them)."""
    counts = torch.bincount(p.cpu(), minlength=pos).tolist()
    out, s = [], 0
    for q, c in enumerate(counts):
        if c:
            out.append((q, (s, s + c)))
        s += c
    return out
