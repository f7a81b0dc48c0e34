"""Edge attribution (EAP, EAP-IG) against real edge ablations.

Where the metric is linear in an edge's receiver input, the first-order estimate is the effect
itself: in an attention-only model without layer norm whose attention patterns are held fixed,
every edge; with patterns free, the value and output edges (queries and keys go through the
softmax, and there the estimate is only approximate: the control).
"""

import pytest
import torch

import mechscope as ms
from mechscope import Kind, Replace, Site
from mechscope.causal import AblationSpec, eap, eap_ig, edge_patching, edge_run, ablated_values, graph_of
from mechscope.core import metrics
from mechscope.models.tiny import TinyConfig, TinyTransformer

import hand_forward
from conftest import make_family, make_ids

G = torch.Generator().manual_seed(1)
CLEAN = torch.randint(0, 20, (6, 7), generator=G)
CORRUPT = torch.randint(0, 20, (6, 7), generator=G)
METRIC = metrics.logit_diff(torch.full((6,), 3), torch.full((6,), 4))
SPEC = AblationSpec("patch", reference="random counterfactuals", granularity="edge")


def _attn_only(n_layers: int):
    torch.manual_seed(n_layers)
    cfg = TinyConfig(n_layers=n_layers, d_model=16, n_heads=3, d_head=4, d_mlp=None, n_ctx=8, d_vocab=20,
                     init_std=0.5)
    return ms.wrap(TinyTransformer(cfg).eval())


def _frozen_patterns(model, n_layers):
    """Replace interventions holding every pattern at its clean value, for any number of rows."""
    sites = [Site(Kind.PATTERN, layer) for layer in range(n_layers)]
    clean = ms.run(model, CLEAN, capture=sites).cache
    return [Replace(s, fn=lambda x, ctx, p=clean[s]: p.repeat(x.shape[0] // p.shape[0], 1, 1, 1)) for s in sites]


def test_eap_is_exact_when_patterns_are_fixed():
    model = _attn_only(2)
    frozen = _frozen_patterns(model, 2)
    est = eap(model, CLEAN, METRIC, SPEC, reference_inputs=CORRUPT, interventions=frozen)
    real = edge_patching(model, CLEAN, METRIC, SPEC, reference_inputs=CORRUPT, interventions=frozen)
    torch.testing.assert_close(est.values, real.values, atol=1e-5, rtol=1e-4)
    assert real.values.abs().max() > 0.05, "some edges must matter for the check to mean anything"
    # with fixed patterns the queries and keys cannot matter: the estimate is exactly zero, the real
    # effect zero up to float32 rounding between a batched patch run and the baseline run (it reads
    # -1.7e-6 on some CPUs), the tolerance of the comparison above
    qk = torch.tensor([e.receiver.site.kind in (Kind.Q_IN, Kind.K_IN) for e in est.graph.edges])
    assert est.values[qk].abs().max() == 0 and real.values[qk].abs().max() < 1e-5
    assert est.how["forward_passes"] == 2 and est.how["backward_passes"] == 1


def test_eap_is_exact_on_value_and_output_edges_and_only_approximate_through_the_softmax():
    model = _attn_only(1)
    est = eap(model, CLEAN, METRIC, SPEC, reference_inputs=CORRUPT)
    real = edge_patching(model, CLEAN, METRIC, SPEC, reference_inputs=CORRUPT)
    kinds = [e.receiver.site.kind for e in est.graph.edges]
    linear = torch.tensor([k not in (Kind.Q_IN, Kind.K_IN) for k in kinds])
    torch.testing.assert_close(est.values[linear], real.values[linear], atol=1e-5, rtol=1e-4)
    assert (est.values[~linear] - real.values[~linear]).abs().max() > 1e-4  # the control


def test_eap_ig_is_exact_when_patterns_are_fixed():
    """A linear model has one gradient everywhere: every interpolation step gives the exact effect."""
    model = _attn_only(2)
    frozen = _frozen_patterns(model, 2)
    real = edge_patching(model, CLEAN, METRIC, SPEC, reference_inputs=CORRUPT, interventions=frozen)
    ig = eap_ig(model, CLEAN, METRIC, SPEC, reference_inputs=CORRUPT, steps=3, interventions=frozen)
    torch.testing.assert_close(ig.values, real.values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa", "qwen2_gqa", "neox_parallel"])
def test_eap_is_the_derivative_of_the_metric_in_each_edge(family):
    """EAP(e) = d m / d mask_e at mask 0: checked by central finite differences of fractional masks."""
    model = make_family(family).model
    ids, other = make_ids(), make_ids(seed=5)
    metric = metrics.logit_diff(torch.tensor([3]), torch.tensor([4]))
    graph = graph_of(model)
    est = eap(model, ids, metric, SPEC, reference_inputs=other, graph=graph)
    ab = ablated_values(model, graph, SPEC, ids, other)
    pick = torch.linspace(0, graph.n_edges - 1, 12).long()
    eps = 1e-2
    masks = torch.zeros(2 * len(pick), graph.n_edges)
    masks[torch.arange(len(pick)), pick] = eps
    masks[torch.arange(len(pick)) + len(pick), pick] = -eps
    m = edge_run(model, graph, ids, masks, ab, metric=metric).metric.double().mean(1)
    fd = (m[:len(pick)] - m[len(pick):]) / (2 * eps)
    torch.testing.assert_close(est.values[pick].double(), fd, atol=2e-4, rtol=0.03)


def test_eap_ig_with_one_step_is_eap():
    model = make_family("gpt2").model
    ids, other = make_ids(), make_ids(seed=5)
    metric = metrics.logit_diff(torch.tensor([3]), torch.tensor([4]))
    a = eap(model, ids, metric, SPEC, reference_inputs=other)
    b = eap_ig(model, ids, metric, SPEC, reference_inputs=other, steps=1)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)
    assert b.how["method"].startswith("EAP-IG") and b.how["backward_passes"] == 1


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa"])
def test_eap_ig_over_edges_is_complete(family):
    """Integrated gradients along the masks add up to m(every edge ablated) - m(intact)."""
    model = make_family(family).model
    ids, other = make_ids(), make_ids(seed=5)
    metric = metrics.logit_diff(torch.tensor([3]), torch.tensor([4]))
    graph = graph_of(model)
    ig = eap_ig(model, ids, metric, SPEC, reference_inputs=other, steps=32, interpolate="edges", graph=graph)
    ab = ablated_values(model, graph, SPEC, ids, other)
    ends = edge_run(model, graph, ids, torch.stack([torch.zeros(graph.n_edges), torch.ones(graph.n_edges)]), ab,
                    metric=metric).metric.mean(1)
    total = float(ends[1] - ends[0])
    assert abs(total) > 0.02
    assert float(ig.values.sum()) == pytest.approx(total, rel=0.02, abs=2e-4)
    assert ig.how["forward_passes"] == 33 and ig.how["backward_passes"] == 32


def test_eap_tracks_real_edge_effects_on_a_random_model():
    """(On random tiny Llama/Qwen models, whose randomised RMSNorms make whole-output patches far from
    linear, first order is poorer; the derivative itself is checked above.)"""
    model = make_family("gpt2").model
    ids, other = make_ids(), make_ids(seed=5)
    metric = metrics.logit_diff(torch.tensor([3]), torch.tensor([4]))
    est = eap(model, ids, metric, SPEC, reference_inputs=other)
    real = edge_patching(model, ids, metric, SPEC, reference_inputs=other)
    r = torch.corrcoef(torch.stack([est.values.double(), real.values.double()]))[0, 1]
    assert r > 0.9
    text = str(est)
    for part in ("EAP (first order)", "ablation=patch", "level=edge", "metric=logit_diff", "forward_passes=2"):
        assert part in text


def test_zero_ablating_the_only_input_of_a_layer_norm_is_invisible_to_gradients():
    """A layer-0 head input reads the embeddings alone, through a LayerNorm. Zero-ablating that edge
    scales what the norm sees down to 0, and LN(a x) = LN(x) for every a > 0 (up to eps): the
    gradient along -x is 0 (the norm's Jacobian annihilates x), and on any path that scales x the
    metric holds still until the very end. EAP and both EAP-IG paths then score these edges near 0
    while exact patching measures real effects; mean ablation (not a rescaling) is the control."""
    model = hand_forward.tiny_model()
    graph = graph_of(model)
    ids = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(1))
    metric = metrics.sequence_logprob(torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(4)))
    ref = torch.randint(0, 11, (16, 6), generator=torch.Generator().manual_seed(7))
    into_layer0 = torch.tensor([i for i, e in enumerate(graph.edges) if e.receiver.site.layer == 0
                                and e.receiver.site.kind in (Kind.Q_IN, Kind.K_IN, Kind.V_IN)])
    assert len(into_layer0) == 6
    for kind in ("zero", "mean"):
        spec = AblationSpec(kind, reference="" if kind == "zero" else "random tokens", granularity="edge")
        kw = dict(reference_inputs=None if kind == "zero" else ref, graph=graph)
        size = lambda s: float(s.values[into_layer0].abs().sum())  # noqa: E731
        exact = size(edge_patching(model, ids, metric, spec, **kw))
        first = size(eap(model, ids, metric, spec, **kw))
        ig = [size(eap_ig(model, ids, metric, spec, steps=10, interpolate=p, **kw)) for p in ("inputs", "edges")]
        assert exact > 0.05
        if kind == "zero":
            assert first < 1e-3 * exact and max(ig) < 0.05 * exact
        else:
            assert first > 0.3 * exact and min(ig) > 0.3 * exact
