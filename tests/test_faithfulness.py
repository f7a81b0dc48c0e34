"""Faithfulness scores: exact at the extremes, known answers, and the setting printed with them."""

import pytest
import torch
import transformers as tf

from mechscope.causal import AblationSpec, Node, component_nodes, faithfulness
from mechscope.core import metrics
from mechscope.core.site import Kind, Site


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tf.GPT2LMHeadModel._from_config(
        tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16),
        attn_implementation="eager").eval()
    with torch.no_grad():  # a dead MLP in layer 1: removing it cannot change anything
        m.transformer.h[1].mlp.c_proj.weight.zero_()
        m.transformer.h[1].mlp.c_proj.bias.zero_()
    return m


G = torch.Generator().manual_seed(1)
INPUTS = torch.randint(0, 40, (8, 6), generator=G)
REFERENCE = torch.randint(0, 40, (16, 6), generator=G)
METRIC = metrics.logit_diff(torch.full((8,), 3), torch.full((8,), 4))


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
@pytest.mark.parametrize("aggregation", ["mean-then-normalise", "normalise-then-mean"])
def test_whole_model_is_one_and_empty_circuit_is_zero(model, kind, aggregation):
    nodes = component_nodes(model)
    assert len(nodes) == 2 * 4 + 2
    spec = AblationSpec(kind, reference="" if kind == "zero" else "uniform-random-tokens")
    kw = dict(reference_inputs=None if kind == "zero" else REFERENCE, dataset="random-8", aggregation=aggregation)
    full = faithfulness(model, INPUTS, nodes, nodes, METRIC, spec, **kw)
    empty = faithfulness(model, INPUTS, [], nodes, METRIC, spec, **kw)
    assert full.value == pytest.approx(1.0, abs=1e-9) and empty.value == pytest.approx(0.0, abs=1e-9)
    assert full.n == 8 and full.how["ablation"] == kind and full.aggregation == aggregation


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_a_dead_component_is_not_needed(model, kind):
    nodes = component_nodes(model)
    dead = Node(Site(Kind.MLP_OUT, 1))
    spec = AblationSpec(kind, reference="" if kind == "zero" else "uniform-random-tokens")
    s = faithfulness(model, INPUTS, [n for n in nodes if n != dead], nodes, METRIC, spec,
                     reference_inputs=REFERENCE, dataset="random-8")
    assert s.value == pytest.approx(1.0, abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in s.per_item)


def test_partial_circuit_score_prints_its_setting_and_varies_with_the_ablation(model):
    nodes = component_nodes(model)
    circuit = [n for n in nodes if n.site.layer == 1]
    zero = faithfulness(model, INPUTS, circuit, nodes, METRIC, AblationSpec("zero"), dataset="random-8")
    mean = faithfulness(model, INPUTS, circuit, nodes, METRIC, AblationSpec("mean", reference="rand16"),
                        reference_inputs=REFERENCE, dataset="random-8")
    assert zero.value != pytest.approx(mean.value)
    text = str(mean)
    for part in ("faithfulness[logit_diff]", "ablation=mean", "reference=rand16", "level=node",
                 "mean-then-normalise", "random-8", "n=8", "CI"):
        assert part in text
    assert mean.ci[0] <= mean.value <= mean.ci[1]


def test_specs_check_their_inputs(model):
    with pytest.raises(ValueError, match="reference"):
        AblationSpec("mean")
    with pytest.raises(ValueError):
        AblationSpec("zero", granularity="wire")
    nodes = component_nodes(model)
    with pytest.raises(ValueError, match="not among"):
        faithfulness(model, INPUTS, [Node(Site(Kind.Z, 5), 0)], nodes, METRIC, AblationSpec("zero"), dataset="x")
    with pytest.raises(ValueError, match="reference_inputs"):
        faithfulness(model, INPUTS, nodes, nodes, METRIC, AblationSpec("mean", reference="r"), dataset="x")
