"""Path patching and exact edge patching against interventions written by hand, and against a
forward pass written out edge by edge (brute force: every edge's effect recomputed from scratch)."""

import pytest
import torch

import hand_forward
import mechscope as ms
from mechscope import Add, Kind, Patch, Site
from mechscope.causal import AblationSpec, Node, OUTPUT, edge_patching, graph_of, path_patching
from mechscope.causal.graph import INPUT, label
from mechscope.core import metrics

from conftest import make_family, make_ids

IDS, OTHER = make_ids(), make_ids(seed=5)
METRIC = metrics.logit_diff(torch.tensor([3]), torch.tensor([4]))


def test_through_every_receiver_equals_patching_the_sender():
    model = make_family("llama_gqa").model
    graph = graph_of(model)
    head = Node(Site(Kind.Z, 0), 2)
    downstream = sorted({e.receiver for e in graph.out_edges([head])})
    res = path_patching(model, IDS, OTHER, [head], downstream, METRIC)
    site = Site(Kind.RESULT, 0)
    other = ms.run(model, OTHER, capture=[site]).cache[site]
    want = METRIC(ms.run(model, IDS, interventions=[Patch(site, value=other, heads=[2])]).logits)
    torch.testing.assert_close(res.values[0, 0], want, atol=2e-6, rtol=0)
    assert res.how["method"] == "path patching" and res.how["forward_passes"] >= 2


def test_to_the_output_only_is_the_direct_effect():
    """sender -> output alone: the final residual gets (counterfactual - clean) output of the head,
    nothing else changes."""
    model = make_family("gpt2").model
    head = Node(Site(Kind.Z, 0), 1)
    res = path_patching(model, IDS, OTHER, [head], [OUTPUT], METRIC)
    site = Site(Kind.RESULT, 0)
    clean = ms.run(model, IDS, capture=[site]).cache[site][:, :, 1]
    other = ms.run(model, OTHER, capture=[site]).cache[site][:, :, 1]
    want = METRIC(ms.run(model, IDS, interventions=[Add(Site(Kind.RESID_POST, 1), vector=other - clean)]).logits)
    torch.testing.assert_close(res.values[0, 0], want, atol=2e-6, rtol=0)
    # and it differs from the head's total effect (which also goes through layer 1)
    total = path_patching(model, IDS, OTHER, [head], sorted({e.receiver for e in graph_of(model).out_edges([head])}),
                          METRIC)
    assert (total.values - res.values).abs().max() > 1e-4


def test_each_receiver_grid_and_edge_patching_agree():
    model = make_family("gpt2").model
    graph = graph_of(model)
    senders = [Node(Site(Kind.Z, 0), h) for h in range(4)]
    receivers = [Node(Site(Kind.V_IN, 1), 0), Node(Site(Kind.MLP_IN, 1)), OUTPUT]
    grid = path_patching(model, IDS, OTHER, senders, receivers, METRIC, each_receiver=True, max_rows=6)
    assert grid.values.shape == (4, 3, 2)
    edges = [e for e in graph.edges if e.sender in senders and e.receiver in receivers]
    exact = edge_patching(model, IDS, METRIC, AblationSpec("patch", reference="other"), reference_inputs=OTHER,
                          edges=edges)
    for e in edges:
        i, j = senders.index(e.sender), receivers.index(e.receiver)
        assert abs(float(exact.values[graph.index(e)]) - float(grid.effect()[i, j])) < 1e-6
    assert torch.isnan(exact.values).sum() == graph.n_edges - len(edges)


# --- brute force: the forward pass written out edge by edge (tests/hand_forward.py) ------------------

BF_MODEL = hand_forward.tiny_model()
BF_IDS = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(1))
BF_OTHER = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(2))
BF_REF = torch.randint(0, 11, (5, 6), generator=torch.Generator().manual_seed(3))  # mean / resample data
BF_ANSWERS = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(4))
BF_ANSWERS[:, :2] = -1
BF_METRIC = metrics.sequence_logprob(BF_ANSWERS)  # reads every position from the third on


def _hand_metric(swap: dict) -> float:
    return float(BF_METRIC(hand_forward.forward(BF_MODEL, BF_IDS, swap)[0]).mean())


def test_hand_written_forward_is_the_model():
    torch.testing.assert_close(hand_forward.forward(BF_MODEL, BF_IDS)[0], BF_MODEL(BF_IDS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,positions", [("zero", None), ("mean", None), ("resample", None), ("patch", None),
                                            ("mean", (2, 4))])
def test_every_edge_patched_alone_equals_brute_force(kind, positions):
    spec = AblationSpec(kind, reference="" if kind == "zero" else "random tokens", granularity="edge",
                        positions=positions, seed=3)
    ref = {"zero": None, "patch": BF_OTHER}.get(kind, BF_REF)
    graph = graph_of(BF_MODEL)
    exact = edge_patching(BF_MODEL, BF_IDS, BF_METRIC, spec, reference_inputs=ref, graph=graph)
    ablated = hand_forward.ablated(BF_MODEL, BF_IDS, kind, ref, spec.seed)
    _, clean = hand_forward.forward(BF_MODEL, BF_IDS)
    if positions is not None:  # the edge reads the ablated value at those positions, its own elsewhere
        at = torch.zeros(BF_IDS.shape[1], 1, dtype=torch.bool)
        at[list(positions)] = True
        ablated = {s: torch.where(at, a, clean[s]) for s, a in ablated.items()}
    base = _hand_metric({})
    want = torch.tensor([_hand_metric({(label(e.sender), label(e.receiver)): ablated[label(e.sender)]}) - base
                         for e in graph.edges])
    assert graph.n_edges == 46 and float(want.abs().max()) > 0.05  # 46 real edges, some with large effects
    torch.testing.assert_close(exact.values, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("each_receiver", [False, True])
def test_path_patching_equals_brute_force(each_receiver):
    """Senders patched from the counterfactual prompts through chosen receivers only (a head
    stands for its three inputs), every other edge as it was."""
    senders = [Node(Site(Kind.Z, 0), 0), Node(Site(Kind.Z, 0), 1), Node(Site(Kind.MLP_OUT, 0)), INPUT]
    receivers = [Node(Site(Kind.Z, 1), 1), Node(Site(Kind.K_IN, 1), 0), Node(Site(Kind.MLP_IN, 1)), OUTPUT]
    ports = {"a1.1": ["a1.1<q", "a1.1<k", "a1.1<v"]}
    res = path_patching(BF_MODEL, BF_IDS, BF_OTHER, senders, receivers, BF_METRIC, each_receiver=each_receiver)
    _, other = hand_forward.forward(BF_MODEL, BF_OTHER)
    sets = [[r] for r in receivers] if each_receiver else [receivers]
    for i, s in enumerate(senders):
        for j, rs in enumerate(sets):
            reads = [p for r in rs for p in ports.get(label(r), [label(r)])]
            swap = {(label(s), p): other[label(s)] for p in reads}
            per_prompt = BF_METRIC(hand_forward.forward(BF_MODEL, BF_IDS, swap)[0])
            torch.testing.assert_close(res.values[i, j], per_prompt, atol=2e-5, rtol=0)
    torch.testing.assert_close(res.baseline, BF_METRIC(BF_MODEL(BF_IDS)), atol=2e-5, rtol=0)
