"""Networks whose circuits are known by construction, with datasets and ground-truth edges.

    reverse      RASP: length (selector width), opp_index = length - index - 1, then each position
                 reads the token at opp_index; 3 layers, non-causal. Distractors: an unused
                 previous-token program, a leak head.
    histogram    RASP: how many times the current token occurs (selector width); 1 layer, with an
                 unused sort-like program and a leak head.
    sort         RASP: target position = number of smaller tokens (selector width), then each position
                 reads the token whose target is its index (unique tokens); 2 layers.
    induction    hand-set weights, 2 attention-only layers, causal: a previous-token head writes the
                 previous token into a subspace, an induction head matches the current token against it
                 (latest match wins, by a recency term) and copies the token after the match.
                 Distractor heads: a current-token copier and a fake induction head writing where
                 nothing reads, a BOS sink writing the same amount to every logit, a leak head.

Each model is checked against its program on every input of its domain when built. A
`KnownCircuit` holds the adapter, prompts (token ids), counterfactual prompts (another input of
the domain per prompt, seeded), the expected answers (-1 where there is none), and the
ground-truth edge set for each ablation kind, as pairs of (site, head) node ids (the input is
(resid_pre.0, None), heads (attn.z.L, h), MLPs (mlp_out.L, None); receivers (attn.q_in.L, h) etc.,
the output (logits, None)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.site import Kind, Site
from ..models import wrap
from ..models.tiny import TinyConfig, TinyTransformer
from . import (EQ, LT, TRUE, Aggregate, Leak, Map, Select, SelectorWidth, SequenceMap, compile_program, indices,
               tokens)
from .compiler import INPUT_ID, OUTPUT_ID, NodeId

KINDS = ("zero", "mean", "resample", "patch")


@dataclass(frozen=True, eq=False)
class KnownCircuit:
    """A network, its task data, and the edges of its algorithm per ablation kind."""

    name: str
    model: Any  # the adapter
    inputs: Tensor  # (prompt, pos) token ids
    counterfactuals: Tensor  # (prompt, pos): another input of the domain per prompt
    answers: Tensor  # (prompt, pos): the expected output token, -1 where there is none
    truth: dict[str, frozenset[tuple[NodeId, NodeId]]]
    verified: int  # inputs checked exhaustively against the program when built
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def names() -> list[str]:
    """The names of the known-circuit networks."""
    return list(_BUILDERS)


def load_known(name: str, n_prompts: int = 64, seed: int = 0) -> KnownCircuit:
    """Build (and verify) a known-circuit network with `n_prompts` prompts drawn from its domain."""
    if name not in _BUILDERS:
        raise KeyError(f"no known circuit {name!r}; known: {', '.join(_BUILDERS)}")
    return _BUILDERS[name](n_prompts, seed)


def _draw(domain: list[tuple], n: int, seed: int) -> tuple[list[tuple], list[tuple]]:
    """`n` inputs of the domain and, for each, a counterfactual: another input drawn at random."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(domain), generator=g)[:n].tolist()
    if len(pick) < n:  # small domain: draw with repetition
        pick = torch.randint(len(domain), (n,), generator=g).tolist()
    inputs = [domain[i] for i in pick]
    cf = []
    for x in inputs:
        while True:
            y = domain[int(torch.randint(len(domain), (1,), generator=g))]
            if y != x:
                cf.append(y)
                break
    return inputs, cf


def _from_program(name: str, compiled, length: int, n: int, seed: int, description: str) -> KnownCircuit:
    verified = compiled.verify()
    inputs, cf = _draw(compiled.domain(length), n, seed)
    truth = {k: compiled.ground_truth(k, inputs, cf if k == "patch" else None) for k in KINDS}
    return KnownCircuit(name, wrap(compiled.module, name=name), compiled.tokens(inputs), compiled.tokens(cf),
                        compiled.answers(inputs), truth, verified, description, {"compiled": compiled})


def _reverse(n: int, seed: int) -> KnownCircuit:
    length = SelectorWidth(Select(tokens, tokens, TRUE), name="length")
    opp = SequenceMap(lambda l, i: l - i - 1, length, indices, name="opp_index")
    program = Aggregate(Select(indices, opp, EQ), tokens, name="reverse")
    prev = Aggregate(Select(indices, Map(lambda i: i - 1, indices, name="prev_index"), EQ), tokens,
                     name="prev_token")
    c = compile_program(program, "abc", 4, distractors=[prev], leaks=[Leak(tokens)], name="reverse")
    # length 3 of at most 4: the length head matters under zero ablation too (a silent head reads as 4)
    return _from_program("reverse", c, 3, n, seed, "reverse the input (RASP, 3 layers)")


def _histogram(n: int, seed: int) -> KnownCircuit:
    program = SelectorWidth(Select(tokens, tokens, EQ), name="histogram")
    smaller = SelectorWidth(Select(tokens, tokens, LT), name="n_smaller")
    c = compile_program(program, "abcd", 5, distractors=[smaller], leaks=[Leak(indices)], name="histogram")
    return _from_program("histogram", c, 5, n, seed, "count of the current token (RASP, 1 layer)")


def _sort(n: int, seed: int) -> KnownCircuit:
    target = SelectorWidth(Select(tokens, tokens, LT), name="target_pos")
    program = Aggregate(Select(target, indices, EQ), tokens, name="sort")
    first = Aggregate(Select(indices, Map(lambda i: 0, indices, name="zero_index"), EQ), tokens, name="first_token")
    c = compile_program(program, (0, 1, 2, 3, 4, 5), 5, distractors=[first], leaks=[Leak(tokens)],
                        valid=lambda xs: len(set(xs)) == len(xs), name="sort")
    return _from_program("sort", c, 5, n, seed, "sort distinct tokens (RASP, 2 layers)")


# --- a hand-set induction circuit -------------------------------------------------------------------

V_IND, N_IND = 4, 6  # tokens 0..3 (BOS = 4), sequences of 6 tokens after BOS


def induction_answer(xs: tuple[int, ...]) -> list[int | None]:
    """At each position, the token after the latest earlier occurrence of the current token."""
    out: list[int | None] = []
    for i, a in enumerate(xs):
        js = [j for j in range(i) if xs[j] == a]
        out.append(xs[js[-1] + 1] if js else None)
    return out


def build_induction() -> TinyTransformer:
    """The hand-set induction network (see the module docstring); weights in the x @ W convention."""
    V, n = V_IND, N_IND
    # residual layout
    one, bos = 0, 1
    tok = {v: 2 + v for v in range(V)}
    idx = {i: 2 + V + i for i in range(n)}
    prev = {v: 2 + V + n + v for v in range(V)}
    out = {v: 2 + 2 * V + n + v for v in range(V)}
    junk1 = {v: 2 + 3 * V + n + v for v in range(V)}
    junk2 = {v: 2 + 4 * V + n + v for v in range(V)}
    d_model, d_head, H = 2 + 5 * V + n, 8, 3
    cfg = TinyConfig(n_layers=2, d_model=d_model, n_heads=H, d_head=d_head, d_mlp=None, n_ctx=n + 1,
                     d_vocab=V + 1, d_vocab_out=V, layer_norm=False, pos_embed=True, bias=True, causal=True)
    torch.manual_seed(0)
    m = TinyTransformer(cfg)
    s = math.sqrt(d_head)  # scores are divided by sqrt(d_head)
    beta, recency = 40.0, 3.0
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        E, P = m.embed.weight, m.pos_embed.weight  # (vocab, d_model), (n_ctx, d_model)
        for v in range(V):
            E[v, one], E[v, tok[v]] = 1.0, 1.0
        E[V, one], E[V, bos] = 1.0, 1.0
        for i in range(n):
            P[i + 1, idx[i]] = 1.0

        def head(layer: int, h: int):
            a = m.blocks[layer].attn
            c = slice(h * d_head, (h + 1) * d_head)
            # nn.Linear weights are (out, in): rows are head coordinates, columns residual dims
            return a.W_Q.weight[c], a.W_K.weight[c], a.W_V.weight[c], a.W_O.weight[:, c]

        # L0.0 previous-token head: query at index i scores key index i - 1 by beta; BOS by beta/2
        q, k, v_, o = head(0, 0)
        for i in range(n):
            k[i, idx[i]] = 1.0
            if i >= 1:
                q[i - 1, idx[i]] = beta * s
        k[n, bos], q[n, one] = 1.0, beta * s / 2  # coordinate n: the BOS default
        for t in range(V):
            v_[t, tok[t]], o[prev[t], t] = 1.0, 1.0
        # L0.1 distractor: attends to itself, copies the token where nothing reads
        q, k, v_, o = head(0, 1)
        for i in range(min(n, d_head)):
            q[i, idx[i]], k[i, idx[i]] = beta * s, 1.0
        for t in range(V):
            v_[t, tok[t]], o[junk1[t], t] = 1.0, 1.0
        # L0.2 distractor: attends to BOS and adds the same amount to every output logit
        q, k, v_, o = head(0, 2)
        q[0, one], k[0, bos], v_[0, bos] = beta * s, 1.0, 1.0
        for t in range(V):
            o[out[t], 0] = 0.5
        # L1.0 induction head: current token a matches prev(key) = a (beta), latest match wins
        # (recency * key index), BOS is the default (beta/2)
        q, k, v_, o = head(1, 0)
        for t in range(V):
            q[t, tok[t]], k[t, prev[t]] = beta * s, 1.0
        q[V, one] = recency * s
        for i in range(n):
            k[V, idx[i]] = float(i)
        q[V + 1, one], k[V + 1, bos] = beta * s / 2, 1.0
        for t in range(V):
            v_[t, tok[t]], o[out[t], t] = 1.0, 1.0
        # L1.1 leak: uniform attention, a small copy of the tokens into the output block
        q, k, v_, o = head(1, 1)
        for t in range(V):
            v_[t, tok[t]], o[out[t], t] = 1.0, 0.02
        # L1.2 distractor: an induction-like head that writes where nothing reads
        q, k, v_, o = head(1, 2)
        for t in range(V):
            q[t, tok[t]], k[t, prev[t]] = beta * s, 1.0
            v_[t, tok[t]], o[junk2[t], t] = 1.0, 1.0
        for t in range(V):
            m.unembed.weight[t, out[t]] = 5.0
    return m.eval()


def _induction_truth() -> dict[str, frozenset[tuple[NodeId, NodeId]]]:
    z0, z1 = (Site(Kind.Z, 0), 0), (Site(Kind.Z, 1), 0)
    port = lambda kind, layer: (Site(kind, layer), 0)  # noqa: E731
    informative = {  # input -> L0.0 v (tokens), L0.0 -> L1.0 k (previous token), input -> L1.0 q, v (tokens)
        (INPUT_ID, port(Kind.V_IN, 0)), (z0, port(Kind.K_IN, 1)), (INPUT_ID, port(Kind.Q_IN, 1)),
        (INPUT_ID, port(Kind.V_IN, 1)), (z1, OUTPUT_ID)}
    constant = {  # positions, BOS and `one`: the same in every prompt, removed only by zero ablation
        (INPUT_ID, port(Kind.Q_IN, 0)), (INPUT_ID, port(Kind.K_IN, 0)), (INPUT_ID, port(Kind.K_IN, 1))}
    return {"zero": frozenset(informative | constant), "mean": frozenset(informative),
            "resample": frozenset(informative), "patch": frozenset(informative)}


def _induction(n: int, seed: int) -> KnownCircuit:
    module = build_induction()
    domain = list(itertools.product(range(V_IND), repeat=N_IND))
    ids = torch.tensor([[V_IND, *xs] for xs in domain])
    answers = torch.tensor([[-1] + [-1 if a is None else a for a in induction_answer(xs)] for xs in domain])
    with torch.no_grad():
        pred = module(ids).argmax(-1)
    ok = (answers < 0) | (pred == answers)
    if not bool(ok.all()):
        i = int((~ok).any(-1).nonzero()[0])
        raise AssertionError(f"hand-set induction disagrees with its program on {domain[i]}: "
                             f"{pred[i, 1:].tolist()} vs {answers[i, 1:].tolist()}")
    inputs, cf = _draw(domain, n, seed)
    tok = lambda rows: torch.tensor([[V_IND, *xs] for xs in rows])  # noqa: E731
    ans = torch.tensor([[-1] + [-1 if a is None else a for a in induction_answer(xs)] for xs in inputs])
    return KnownCircuit("induction", wrap(module, name="induction"), tok(inputs), tok(cf), ans, _induction_truth(),
                        len(domain), "hand-set induction (2 attention-only layers)")


_BUILDERS = {"reverse": _reverse, "histogram": _histogram, "sort": _sort, "induction": _induction}
