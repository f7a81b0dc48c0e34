"""Logit lens ends at the model's logits; direct logit attributions add up to the logit difference."""

import pytest
import torch

import mechscope as ms
from mechscope.circuits import direct_logit_attribution, logit_lens
from conftest import CAUSAL, make_family


@pytest.mark.parametrize("family", CAUSAL)
def test_logit_lens_last_row_is_the_models_logits(family):
    f = make_family(family)
    model, ids = f.hf, f.ids
    lens = logit_lens(model, ids)
    assert lens.logits.shape[0] == ms.wrap(model).n_layers + 1
    torch.testing.assert_close(lens.logits[-1], ms.run(model, ids).logits, atol=1e-5, rtol=1e-5)
    assert lens.rank_of(int(lens.top(1)[-1, 0])).tolist()[-1] == 0


@pytest.mark.parametrize("family", CAUSAL)
def test_attributions_sum_to_the_logit_difference(family):
    f = make_family(family)
    model, ids = f.hf, f.ids
    dla = direct_logit_attribution(model, ids, token=3, minus=7, neurons=True)
    torch.testing.assert_close(dla.sum(), dla.total, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dla.neurons.sum(1) + dla.mlp_bias, dla.mlps, atol=1e-4, rtol=1e-4)


def test_dla_of_a_head_matches_removing_only_its_direct_path():
    # zeroing head h's result changes the final residual by exactly -result_h; with the norm's
    # scale frozen, the logit difference moves by exactly -dla_h: check against a real run
    f = make_family("gpt2")
    model, ids = f.hf, f.ids
    dla = direct_logit_attribution(model, ids, token=3, minus=7)
    last = ms.wrap(model).n_layers - 1
    run = ms.run(model, ids, interventions=[ms.Zero(f"blocks.{last}.attn.hook_result", heads=[1])])
    # the real run re-normalises; compare only where the scale barely moves (first-order check)
    moved = (run.logits[..., 3] - run.logits[..., 7]) - dla.total
    assert torch.corrcoef(torch.stack([moved.flatten(), -dla.heads[last, 1].flatten()]))[0, 1] > 0.9
