"""Path patching and exact edge patching against interventions written by hand."""

import torch

import mechscope as ms
from mechscope import Add, Kind, Patch, Site
from mechscope.causal import AblationSpec, Node, OUTPUT, edge_patching, graph_of, path_patching
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
