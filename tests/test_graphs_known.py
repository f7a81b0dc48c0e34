"""Attribution graphs on networks whose circuits are known by construction.

Both induction networks (the hand-set one of the known-circuit suite, with distractor heads, and
mechscope/circuits/handwritten.py) are attention-only: there is no MLP to transcode, so their graphs
have no latent and no error node, and every edge runs from a token embedding to a logit through
the frozen attention. The induction circuit's answer is the token after the latest earlier
occurrence of the current token, copied by the induction head's values: the graph recovers the
circuit when that position's token node carries the largest edge into the answer's logit. The
score is the ROC AUC, over all prompts pooled, of token nodes ranked by their edge into the answer
(positives: the copied position). How the head *finds* that position (its queries and keys) lives
in the frozen attention pattern, not in the graph's edges.
"""

from __future__ import annotations

import torch

from mechscope import graphs as G
from mechscope.circuits.handwritten import handwritten_induction
from mechscope.graphs.graph import NodeKind
from mechscope.rasp.known_circuits import induction_answer, load_known


def auc(scores: list[float], labels: list[bool]) -> float:
    """ROC AUC by pairwise comparison (ties count half)."""
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def induction_auc(model, prompts: torch.Tensor, first: int) -> tuple[float, int]:
    """AUC of token nodes' edges into the induction answer; `first` is the first position of the task."""
    scores, labels, n = [], [], 0
    for ids in prompts:
        xs = tuple(ids[first:].tolist())
        answer = induction_answer(xs)[-1]
        if answer is None:
            continue
        j = max(i for i in range(len(xs) - 1) if xs[i] == xs[-1])
        rep = G.LocalReplacement.build(model, ids[None], {})
        assert rep.exactness <= 1e-4
        g = G.attribute(rep, answer, logits=[answer])
        t = g.find(NodeKind.LOGIT, index=answer)
        for i, node in enumerate(g.nodes):
            if node.kind is NodeKind.TOKEN:
                scores.append(float(g.adjacency[t, i]))
                labels.append(node.pos == first + j + 1)
        n += 1
    return auc(scores, labels), n


def test_known_induction_circuit_is_recovered_despite_distractor_heads():
    kc = load_known("induction", n_prompts=64)
    assert not any(s.kind.value == "mlp_out" for s in kc.model.sites())  # nothing to transcode
    value, n = induction_auc(kc.model, kc.inputs, first=1)
    assert n >= 20
    assert value >= 0.95


def test_handwritten_induction_circuit_is_recovered():
    model = handwritten_induction(d_vocab=12, n_ctx=16)
    g = torch.Generator().manual_seed(0)
    prompts = []
    while len(prompts) < 30:  # random tokens whose last one occurred once before
        xs = torch.randint(0, 12, (12,), generator=g)
        if int((xs[:-1] == xs[-1]).sum()) == 1:
            prompts.append(xs)
    value, n = induction_auc(model, torch.stack(prompts), first=0)
    assert n == 30
    assert value >= 0.95


def test_compiled_reverse_graph_reads_the_reversed_token_through_exact_neuron_latents():
    """RASP reverse (3 layers, ReLU MLPs): the MLPs' own neurons are exact latents (errors zero). The
    last position's output is the first input token, read by the final aggregate's values: that
    token's node must carry the most influence on the answer (length and opposite index, computed
    by selector width and MLPs, steer the frozen pattern, not the edges)."""
    kc = load_known("reverse", n_prompts=40)
    m = kc.model
    n_layers = sum(s.kind.value == "mlp_out" for s in m.sites())
    scores, labels, n = [], [], 0
    for ids, ans in zip(kc.inputs, kc.answers):
        answer = int(ans[-1])
        rep = G.LocalReplacement.build(m, ids[None], {l: G.neuron_latents(m, l) for l in range(n_layers)})
        assert max(float(e.abs().max()) for e in rep.errors.values()) <= 1e-4  # neurons replace the MLPs exactly
        assert rep.exactness <= 1e-4
        g = G.attribute(rep, answer, logits=[answer])
        p = G.prune(g)
        assert p.scores["replacement"] >= 0.999  # no error anywhere: every path ends at a token
        for i, node in enumerate(g.nodes):
            if node.kind is NodeKind.TOKEN:
                scores.append(float(p.influence[i]))
                labels.append(node.pos == 1)
        n += 1
    assert n == 40
    assert auc(scores, labels) >= 0.95
