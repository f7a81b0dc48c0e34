"""Batched activation patching equals patching one component at a time."""

import pytest
import torch
import transformers as tf

import mechscope as ms
from mechscope.core import Metric, metrics
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
    qwen3 = tf.Qwen3ForCausalLM._from_config(
        tf.Qwen3Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=8, intermediate_size=64, vocab_size=50), attn_implementation="eager").eval()
    gemma3 = tf.Gemma3ForCausalLM._from_config(  # a sliding-window layer: no windows of positions
        tf.Gemma3TextConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
                            head_dim=8, intermediate_size=64, vocab_size=50, query_pre_attn_scalar=8,
                            sliding_window=3, layer_types=["sliding_attention", "full_attention"]),
        attn_implementation="eager").eval()
    return {"gpt2": gpt2, "llama": llama, "qwen3": qwen3, "gemma3": gemma3}


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


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_batched_sweep_equals_single_patches(family, direction):
    model = MODELS[family]
    sites = [Site(Kind.RESID_PRE, 1), Site(Kind.Z, 0), Site(Kind.K, 1)]
    res = activation_patching(model, CLEAN, CORRUPT, sites, metric, direction=direction, max_rows=10,
                              progress=False)
    source, target = (CLEAN, CORRUPT) if direction == "denoising" else (CORRUPT, CLEAN)
    n_heads = {Site(Kind.RESID_PRE, 1): 1, Site(Kind.Z, 0): 4, Site(Kind.K, 1): ms.wrap(model).n_kv_heads}
    assert res.values.shape == (3, 4, 6, 2)
    for i, site in enumerate(sites):
        for h in range(n_heads[site]):
            for p in range(6):
                want = _one_at_a_time(model, source, target, site, h if site.per_head else None, p)
                torch.testing.assert_close(res.values[i, h, p], want, atol=1e-5, rtol=1e-5)
        assert torch.isnan(res.values[i, n_heads[site]:]).all()  # padding beyond a site's heads
    # jobs are grouped by the first block their run computes (the site's layer): layer-1 runs
    # start from the target's resid_pre 1 and skip block 0; chunks hold at most 10 // 2 jobs
    by_start = {0: 6 * n_heads[Site(Kind.Z, 0)], 1: 6 * (n_heads[Site(Kind.RESID_PRE, 1)] + n_heads[Site(Kind.K, 1)])}
    assert res.forward_passes == 2 + sum(-(-n // (10 // 2)) for n in by_start.values())
    assert res.how["blocks_skipped"] == by_start[1]
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


@pytest.mark.parametrize("family", list(MODELS))
def test_a_last_position_metric_unembeds_only_the_last_position(family):
    # The same sweep read through a Metric that declares it needs only the last position: the
    # patch runs unembed one position, and every value is the same as with full logits.
    model = MODELS[family]
    sites = [Site(Kind.RESID_PRE, 1), Site(Kind.Z, 1), Site(Kind.MLP_OUT, 0)]
    seen = []

    def spy(logits):
        seen.append(logits.shape[1])
        return metrics.logit_diff(torch.full((logits.shape[0],), 3), torch.full((logits.shape[0],), 4)).fn(logits)

    declared = Metric("logit_diff", spy, last_position_only=True)
    fast = activation_patching(model, CLEAN, CORRUPT, sites, declared, max_rows=16, progress=False)
    full = activation_patching(model, CLEAN, CORRUPT, sites, metric, max_rows=16, progress=False)
    torch.testing.assert_close(fast.values, full.values, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert set(seen) == {1}  # every run, the target and source runs too, unembeds only the last position
    assert metrics.logit_diff(torch.tensor([3]), torch.tensor([4])).last_position_only
    assert not metrics.logit_diff(torch.tensor([3]), torch.tensor([4]), positions=torch.tensor([2])).last_position_only


@pytest.mark.parametrize("family", list(MODELS))
def test_a_metric_of_a_few_tokens_gets_only_their_logits(family):
    # logit_diff declares the two token ids it reads: patch runs compute just those columns (the
    # rest NaN), and every value equals the sweep computed with every logit.
    model = MODELS[family]
    sites = [Site(Kind.Z, 0), Site(Kind.MLP_OUT, 1)]
    ld = metrics.logit_diff(torch.full((2,), 3), torch.full((2,), 4))
    assert ld.logit_columns == (3, 4)
    seen = []

    def spy(logits):
        seen.append(int(torch.isnan(logits[:, -1]).sum(-1).max()))
        rows = logits.shape[0]
        return metrics.logit_diff(torch.full((rows,), 3), torch.full((rows,), 4)).fn(logits)

    few = activation_patching(model, CLEAN, CORRUPT, sites, Metric("logit_diff", spy, last_position_only=True,
                                                                      logit_columns=(3, 4)), progress=False)
    full = activation_patching(model, CLEAN, CORRUPT, sites, metric, progress=False)
    torch.testing.assert_close(few.values, full.values, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert set(seen) == {50 - 2}  # every run: 48 of 50 logits never computed
    assert ms.run(model, CLEAN).logits.isfinite().all()  # the unembedding is itself again afterwards
    assert metrics.logit_diff(torch.arange(2000), torch.arange(2000)).logit_columns is None  # too many


def test_start_at_skips_blocks_and_restores_them():
    model = ms.wrap(MODELS["gpt2"])
    blocks = list(model.module.transformer.h)
    entry = Site(Kind.RESID_PRE, 1)
    ref = ms.run(model, CLEAN, capture=[entry])
    with model.start_at(1):  # block 0 passes its input on; block 1 keeps its place in the loop
        h = model.module.transformer.h
        assert len(h) == 2 and h[1] is blocks[1] and h[0] is not blocks[0]
        assert sum(p.numel() for p in h[0].parameters()) == 0
        out = ms.run(model, CLEAN, interventions=[ms.Patch(entry, value=ref.cache[entry])])
    assert list(model.module.transformer.h) == blocks
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="blocks 0..1"):
        with model.start_at(2):
            pass
