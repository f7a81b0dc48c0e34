"""The edge engine: per-head input sites, exact edge ablation, and the graph, across adapters.

Claims checked a second way:
- ablating no edge is the bare forward pass, bit for bit;
- ablating every edge out of a sender equals ablating the sender's output (a node intervention);
- a batched run of several mask configurations equals the runs one at a time (up to rounding: the
  sums over senders are grouped differently);
- per-head inputs: changing one head's key input changes that head only, also under grouped-query
  attention (keys ungrouped), and changing every head's input equals changing the attention's input;
- denoising with every edge restored is the clean run.
"""

import pytest
import torch

import mechscope as ms
from mechscope import Kind, Patch, Replace, Site, Zero
from mechscope.causal import AblationSpec, Circuit, Node, ablated_values, edge_run, graph_of
from mechscope.causal.edge_faithfulness import circuit_masks
from mechscope.causal.graph import INPUT, OUTPUT, label, owner
from mechscope.models.tiny import TinyConfig, TinyTransformer

from conftest import make_family, make_ids

EDGE_FAMILIES = ["gpt2", "neox_parallel", "neox_sequential", "llama_gqa", "qwen2_gqa", "qwen3_gqa"]


def _tiny(layer_norm: bool = True, mlp: bool = True):
    torch.manual_seed(0)
    cfg = TinyConfig(n_layers=2, d_model=24, n_heads=3, d_head=8, d_mlp=32 if mlp else None, n_ctx=16,
                     d_vocab=101, layer_norm=layer_norm)
    return ms.wrap(TinyTransformer(cfg).eval())


def _models():
    out = {name: make_family(name).model for name in EDGE_FAMILIES}
    out["tiny_ln"] = _tiny()
    out["tiny_attn_only"] = _tiny(layer_norm=False, mlp=False)
    return out


MODELS = _models()
IDS = make_ids()
OTHER = make_ids(seed=5)


def _ablated(model, graph, kind):
    spec = AblationSpec(kind, reference="" if kind == "zero" else "other prompts")
    return ablated_values(model, graph, spec, IDS, None if kind == "zero" else OTHER)


@pytest.mark.parametrize("name", list(MODELS))
def test_no_edge_ablated_is_the_bare_forward_bit_for_bit(name):
    model = MODELS[name]
    graph = graph_of(model)
    ref = ms.run(model, IDS).logits
    for kind in ("zero", "patch"):
        out = edge_run(model, graph, IDS, torch.zeros(graph.n_edges), _ablated(model, graph, kind))
        assert torch.equal(out.logits, ref)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kind", ["zero", "mean", "resample", "patch"])
def test_every_edge_out_of_a_sender_equals_ablating_its_output(name, kind):
    model = MODELS[name]
    graph = graph_of(model)
    ab = _ablated(model, graph, kind)
    senders = [Node(Site(Kind.Z, 0), 1), Node(Site(Kind.Z, graph.n_layers - 1), 0)]
    if Site(Kind.MLP_OUT, 0) in set(model.sites()):
        senders.append(Node(Site(Kind.MLP_OUT, 0)))
    clean = ms.run(model, IDS).logits
    for node in senders:
        edges = graph.out_edges([node])
        got = edge_run(model, graph, IDS, graph.mask(edges), ab).logits
        site = Site(Kind.RESULT, node.site.layer) if node.site.kind is Kind.Z else node.site
        heads = None if node.head is None else [node.head]
        if kind == "zero":
            iv = Zero(site, heads=heads)
        else:
            v = ab.values[site]
            iv = Patch(site, value=v.expand(IDS.shape[0], *v.shape[1:]), heads=heads)
        want = ms.run(model, IDS, interventions=[iv]).logits
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
        assert (got - clean).abs().max() > 1e-4, f"ablating {node} should change the output"


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "tiny_ln"])
def test_batched_configurations_equal_single_runs(name):
    model = MODELS[name]
    graph = graph_of(model)
    ab = _ablated(model, graph, "patch")
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, graph.n_edges, generator=g) < 0.3).float()
    masks[1] = 0.5 * masks[1]  # fractions scale the change
    both = edge_run(model, graph, IDS, masks, ab, metric=lambda lg: lg[:, -1, 3])
    for c in range(3):
        one = edge_run(model, graph, IDS, masks[c], ab)
        torch.testing.assert_close(both.logits[c * IDS.shape[0]:(c + 1) * IDS.shape[0]], one.logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(both.metric[c], one.logits[:, -1, 3])


@pytest.mark.parametrize("name", EDGE_FAMILIES + ["tiny_ln"])
def test_one_heads_key_input_changes_that_head_only(name):
    model = MODELS[name]
    delta = torch.randn(IDS.shape + (model.d_model if hasattr(model, "d_model") else model.cfg.d_model,),
                        generator=torch.Generator().manual_seed(1))

    def head0(x, ctx):
        y = x.clone()
        y[:, :, 0] += delta
        return y

    z = Site(Kind.Z, 1)
    clean = ms.run(model, IDS, capture=[z]).cache[z]
    changed = ms.run(model, IDS, capture=[z], interventions=[Replace(Site(Kind.K_IN, 1), fn=head0)]).cache[z]
    assert (changed[:, :, 0] - clean[:, :, 0]).abs().max() > 1e-4
    # heads 1.. read the keys as before, including head 1 that shares head 0's key/value head under GQA
    assert torch.equal(changed[:, :, 1:], clean[:, :, 1:])


@pytest.mark.parametrize("name", EDGE_FAMILIES)
def test_every_heads_input_changed_alike_equals_changing_the_attention_input(name):
    f = make_family(name)
    model = f.model
    delta = torch.randn(IDS.shape + (model.d_model,), generator=torch.Generator().manual_seed(2))
    add = lambda x, ctx: x + delta[:, :, None]  # noqa: E731
    ivs = [Replace(Site(k, 1), fn=add) for k in (Kind.Q_IN, Kind.K_IN, Kind.V_IN)]
    got = ms.run(model, IDS, interventions=ivs).logits
    ln = model.blocks[1].get_submodule(model.spec.block[Kind.LN1].path)
    h = ln.register_forward_pre_hook(lambda mod, args: (args[0] + delta,))
    try:
        want = ms.run(model, IDS).logits
    finally:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_mlp_input_is_the_mlps_alone():
    """Changing mlp_in changes the MLP's output but not the residual stream it was read from."""
    model = MODELS["gpt2"]
    delta = torch.randn(IDS.shape + (64,), generator=torch.Generator().manual_seed(3))
    sites = [Site(Kind.RESID_MID, 0), Site(Kind.MLP_OUT, 0), Site(Kind.RESID_POST, 0)]
    clean = ms.run(model, IDS, capture=sites).cache
    res = ms.run(model, IDS, capture=sites, interventions=[Replace(Site(Kind.MLP_IN, 0), fn=lambda x, c: x + delta)])
    assert torch.equal(res.cache[sites[0]], clean[sites[0]])
    assert not torch.allclose(res.cache[sites[1]], clean[sites[1]])
    torch.testing.assert_close(res.cache[sites[2]], res.cache[sites[0]] + res.cache[sites[1]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "tiny_ln"])
def test_denoising_with_every_edge_restored_is_the_clean_run(name):
    model = MODELS[name]
    graph = graph_of(model)
    spec = AblationSpec("patch", reference="clean", direction="denoising")
    ab = ablated_values(model, graph, spec, OTHER, IDS)  # run the counterfactual, swap clean outputs in
    out = edge_run(model, graph, OTHER, torch.ones(graph.n_edges), ab)
    torch.testing.assert_close(out.logits, ms.run(model, IDS).logits, atol=2e-5, rtol=0)


def test_graph_layout():
    seq, par = graph_of(MODELS["neox_sequential"]), graph_of(MODELS["neox_parallel"])
    L, H = 2, 4
    assert len(seq.senders) == 1 + L * (H + 1) and len(seq.receivers) == L * (3 * H + 1) + 1
    # a parallel block's MLP does not read its own layer's heads: H fewer edges into each MLP
    assert seq.n_edges - par.n_edges == L * H
    mlp0 = Node(Site(Kind.MLP_IN, 0))
    assert {e.sender for e in par.into([mlp0])} == {INPUT}
    assert {e.sender for e in seq.into([mlp0])} == {INPUT} | {Node(Site(Kind.Z, 0), h) for h in range(H)}
    # edges are stored group by group, sender-major, and the index finds them
    for i, e in enumerate(seq.edges):
        assert seq.index(e) == i
    assert owner(Node(Site(Kind.K_IN, 1), 2)) == Node(Site(Kind.Z, 1), 2) and owner(OUTPUT) is None
    assert label(Node(Site(Kind.V_IN, 1), 2)) == "a1.2<v" and str(seq.edges[0]) == "input -> a0.0<q"
    attn_only = graph_of(MODELS["tiny_attn_only"])
    assert all(n.site.kind is not Kind.MLP_OUT for n in attn_only.senders)


def test_node_granularity_equals_the_circuit_of_its_nodes():
    model = MODELS["gpt2"]
    graph = graph_of(model)
    nodes = [Node(Site(Kind.Z, 0), 1), Node(Site(Kind.Z, 1), 3), Node(Site(Kind.MLP_OUT, 1))]
    circuit = Circuit.from_nodes(graph, nodes)
    assert circuit.nodes == set(nodes) | {INPUT, OUTPUT}
    node_masks = circuit_masks(graph, circuit, AblationSpec("zero", granularity="node"))
    edge_masks = circuit_masks(graph, circuit, AblationSpec("zero", granularity="edge"))
    ab = _ablated(model, graph, "zero")
    a = edge_run(model, graph, IDS, node_masks[2], ab).logits
    b = edge_run(model, graph, IDS, edge_masks[2], ab).logits
    torch.testing.assert_close(a, b, atol=2e-6, rtol=0)


def test_models_without_per_head_inputs_fail_clearly():
    with pytest.raises(ValueError, match="no edge graph"):
        graph_of(make_family("bert").model)
    # Gemma's post-norms: the heads' results are not their writes to the residual
    with pytest.raises(ValueError, match="normalises each attention and MLP output"):
        graph_of(make_family("gemma3_mqa").model)
    with pytest.raises(ValueError, match="masks have"):
        edge_run(MODELS["gpt2"], None, IDS, torch.zeros(3), _ablated(MODELS["gpt2"], graph_of(MODELS["gpt2"]), "zero"))
    with pytest.raises(ValueError, match="counterfactual"):
        g = graph_of(MODELS["gpt2"])
        ablated_values(MODELS["gpt2"], g, AblationSpec("patch", reference="x"), IDS, OTHER[:1])
