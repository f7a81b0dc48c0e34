"""The IOI study's pieces on SmolLM2-135M (slow: loads the real network)."""

import pytest
import torch

from mechscope.causal import AblationSpec, eap_ig, edge_faithfulness, graph_of
from mechscope.studies.ioi import logit_diff, make_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    import mechscope as ms
    torch.set_num_threads(1)
    return ms.load("smollm2-135m")


def test_prompts_and_counterfactuals(model):
    d = make_prompts(model.tokenizer, 16, seed=0)
    assert d.clean.shape == d.corrupt.shape and d.clean.shape[0] == 16
    differ = (d.clean != d.corrupt)
    assert bool((differ.sum(1) == 1).all())  # only the subject's second mention changes
    pos = differ.float().argmax(1)
    rows = torch.arange(16)
    assert bool((d.clean[rows, pos] == d.s).all()) and bool((d.corrupt[rows, pos] == d.io).all())
    assert make_prompts(model.tokenizer, 16, seed=0).texts == d.texts  # seeded
    ld = logit_diff(d.io, d.s)
    clean, cf = ld(model.run(d.clean).logits), ld(model.run(d.corrupt).logits)
    assert clean.mean() > 2 and cf.mean() < -2  # the model does IOI, and the counterfactual flips it
    rows = ld(torch.cat([model.run(d.clean).logits] * 2))  # repeated prompts, as a patching sweep runs them
    torch.testing.assert_close(rows, torch.cat([clean, clean]))


def test_eap_ig_circuit_is_faithful_on_a_few_prompts(model):
    d = make_prompts(model.tokenizer, 4, seed=1)
    ld = logit_diff(d.io, d.s)
    graph = graph_of(model)
    assert graph.n_edges == 123211 and graph.n_heads == 9
    spec = AblationSpec("patch", reference="name swaps", granularity="edge")
    # the passes it reports are the passes that ran, counted a second way: hooks on the network see
    # every forward call and every backward pass that reaches the unembedding
    forward, backward = [], []
    hooks = [model.module.register_forward_pre_hook(lambda m, args: forward.append(1)),
             model.module.lm_head.register_full_backward_pre_hook(lambda m, grad: backward.append(1))]
    try:
        scores = eap_ig(model, d.clean, ld, spec, steps=2, reference_inputs=d.corrupt, graph=graph)
    finally:
        for h in hooks:
            h.remove()
    assert (scores.how["forward_passes"], scores.how["backward_passes"]) == (len(forward), len(backward))
    assert len(backward) == 2  # one per step
    f = edge_faithfulness(model, d.clean, scores.circuit(k=3000), ld, spec, reference_inputs=d.corrupt,
                          dataset="ioi-4", graph=graph, n_boot=100)
    assert f.value > 0.7 and "level=edge" in str(f)
