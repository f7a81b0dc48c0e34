"""Batched activation patching equals patching one component at a time."""

import pytest
import torch
import transformers as tf

import mechscope as ms
from mechscope.causal import activation_patching
from mechscope.core.site import Kind, Site


def _models():
    torch.manual_seed(0)
    gpt2 = tf.GPT2LMHeadModel._from_config(
        tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16),
        attn_implementation="eager").eval()
    llama = tf.LlamaForCausalLM._from_config(
        tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=50), attn_implementation="eager").eval()
    return {"gpt2": gpt2, "llama": llama}


MODELS = _models()
G = torch.Generator().manual_seed(3)
CLEAN = torch.randint(0, 50, (2, 6), generator=G)
CORRUPT = CLEAN.clone()
CORRUPT[:, 1] = (CLEAN[:, 1] + 7) % 50


def metric(logits):  # (rows,): logit difference of two tokens at the last position
    return logits[:, -1, 3] - logits[:, -1, 4]


def _one_at_a_time(model, source, target, site, head, pos):
    src = ms.run(model, source, capture=[site])
    iv = ms.Patch(site, value=src.cache[site], heads=None if head is None else [head],
                  positions=None if pos is None else [pos])
    return metric(ms.run(model, target, interventions=[iv]).logits)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_batched_sweep_equals_single_patches(family, direction):
    model = MODELS[family]
    sites = [Site(Kind.RESID_PRE, 1), Site(Kind.Z, 0), Site(Kind.K, 1)]
    res = activation_patching(model, CLEAN, CORRUPT, sites, metric, direction=direction, max_rows=10,
                              progress=False)
    source, target = (CLEAN, CORRUPT) if direction == "denoising" else (CORRUPT, CLEAN)
    n_heads = {Site(Kind.RESID_PRE, 1): 1, Site(Kind.Z, 0): 4, Site(Kind.K, 1): 4 if family == "gpt2" else 2}
    assert res.values.shape == (3, 4, 6, 2)
    for i, site in enumerate(sites):
        for h in range(n_heads[site]):
            for p in range(6):
                want = _one_at_a_time(model, source, target, site, h if site.per_head else None, p)
                torch.testing.assert_close(res.values[i, h, p], want, atol=1e-5, rtol=1e-5)
        assert torch.isnan(res.values[i, n_heads[site]:]).all()  # padding beyond a site's heads
    expected_jobs = 6 * sum(n_heads.values())
    assert res.forward_passes == 2 + -(-expected_jobs // (10 // 2))
    torch.testing.assert_close(res.baseline, metric(ms.run(model, target).logits))
    torch.testing.assert_close(res.reference, metric(ms.run(model, source).logits))


def test_patching_everything_restores_the_source_exactly():
    model = MODELS["gpt2"]
    site = Site(Kind.RESID_PRE, 0)
    res = activation_patching(model, CLEAN, CORRUPT, [site], metric, each_position=False, progress=False)
    torch.testing.assert_close(res.values[0, 0, 0], res.reference)
    assert torch.allclose(res.normalised(), torch.ones(()))
    # position 1 carries the whole difference at resid_pre 0; other positions change nothing
    per_pos = activation_patching(model, CLEAN, CORRUPT, [site], metric, progress=False).normalised()[0, 0]
    torch.testing.assert_close(per_pos[1], torch.tensor(1.0))
    torch.testing.assert_close(per_pos[[0, 2, 3, 4, 5]], torch.zeros(5), atol=1e-5, rtol=0)
    assert res.how["direction"] == "denoising" and res.how["ablation"] == "counterfactual patch"


def test_patching_rejects_misaligned_prompts():
    with pytest.raises(ValueError, match="same shape"):
        activation_patching(MODELS["gpt2"], CLEAN, CORRUPT[:, :5], ["resid_pre.0"], metric, progress=False)
