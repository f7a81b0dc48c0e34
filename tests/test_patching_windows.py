"""Patch runs in windows of positions (the target run's keys and values for a shared prefix, the
final block's work for the last position only) give the values of one full pass per patch."""

import pytest
import torch
import transformers as tf

import mechscope as ms
from mechscope.causal import activation_patching
from mechscope.core import Metric, Window
from mechscope.core.site import Kind, Site
from mechscope.models import hf_attention
from mechscope.models.tiny import TinyConfig, TinyTransformer

from conftest import VOCAB, assert_no_hooks, randomise_norms

SEQ = 7


def _neox(parallel: bool) -> tf.GPTNeoXConfig:
    common = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                  vocab_size=VOCAB, max_position_embeddings=32, use_parallel_residual=parallel)
    try:
        return tf.GPTNeoXConfig(**common, partial_rotary_factor=0.5)
    except TypeError:  # older configs spell it rotary_pct
        return tf.GPTNeoXConfig(**common, rotary_pct=0.5)


# three blocks, so that a chunk may start in a middle block and still have blocks before the final one
CONFIGS = {
    "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32)),
    "llama_gqa": (tf.LlamaForCausalLM, tf.LlamaConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=32)),
    "neox_sequential": (tf.GPTNeoXForCausalLM, _neox(False)),
    "neox_parallel": (tf.GPTNeoXForCausalLM, _neox(True)),
    "qwen3_gqa": (tf.Qwen3ForCausalLM, tf.Qwen3Config(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=32)),
    # global layers only: a sliding-window layer's cache keeps too few positions for windows
    "gemma3_mqa": (tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=32, query_pre_attn_scalar=8,
        layer_types=["full_attention"] * 3)),
}
MODELS: dict = {}


def _model(family: str):
    if family not in MODELS:
        cls, cfg = CONFIGS[family]
        torch.manual_seed(0)
        hf = cls._from_config(cfg, attn_implementation="eager").to(torch.float32).eval()
        randomise_norms(hf)
        MODELS[family] = ms.wrap(hf)
    return MODELS[family]


G = torch.Generator().manual_seed(5)
CLEAN = torch.randint(0, VOCAB, (2, SEQ), generator=G)
CORRUPT = CLEAN.clone()
CORRUPT[0, 2] = (CLEAN[0, 2] + 11) % VOCAB  # the prompts agree on positions 0 and 1
CORRUPT[1, 4] = (CLEAN[1, 4] + 5) % VOCAB
SITES = [Site(Kind.Z, 0), Site(Kind.Z, 2), Site(Kind.ATTN_OUT, 1), Site(Kind.MLP_OUT, 0), Site(Kind.MLP_OUT, 2),
         Site(Kind.RESID_PRE, 0), Site(Kind.RESID_PRE, 1), Site(Kind.RESID_PRE, 2)]


def plain(logits):  # (rows,): a logit difference at the last position, read from full logits
    return logits[:, -1, 3] - logits[:, -1, 4]


LAST = Metric("logit_diff", plain, last_position_only=True, logit_columns=(3, 4))


@pytest.mark.parametrize("each_position", [True, False])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_windowed_sweep_equals_one_pass_per_chunk(family, direction, each_position):
    model = _model(family)
    fast = activation_patching(model, CLEAN, CORRUPT, SITES, LAST, direction=direction, each_position=each_position,
                               max_rows=10, progress=False)
    slow = activation_patching(model, CLEAN, CORRUPT, SITES, plain, direction=direction,
                               each_position=each_position, max_rows=10, progress=False)
    torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(fast.baseline, slow.baseline, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.reference, slow.reference, atol=1e-5, rtol=1e-5)
    # the fast sweep ran in windows, the slow one did not
    assert fast.how["shared_prefix"] == 2 and slow.how["shared_prefix"] == 0
    assert slow.how["last_position_split"] == 0 and fast.how["last_position_split"] > 0
    n_jobs = (4 + 4 + 1 + 1 + 1 + 1 + 1 + 1) * (SEQ if each_position else 1)
    assert fast.how["unchanged_patches"] == (2 * n_jobs // SEQ if each_position else 0)
    assert_no_hooks(model.module)
    assert not hf_attention._ACTIVE and model.config._attn_implementation == "eager"


def test_windows_of_a_model_with_sdpa_attention():
    # the windows' masks come from the model's own attention implementation (a query run that
    # starts after position 0); sites outside attention keep it, z switches to mechscope's
    cls, cfg = CONFIGS["llama_gqa"]
    torch.manual_seed(0)
    model = ms.wrap(cls._from_config(cfg, attn_implementation="sdpa").eval())
    for sites in ([Site(Kind.RESID_PRE, 1), Site(Kind.MLP_OUT, 0), Site(Kind.ATTN_OUT, 2)], [Site(Kind.Z, 1)]):
        fast = activation_patching(model, CLEAN, CORRUPT, sites, LAST, progress=False)
        slow = activation_patching(model, CLEAN, CORRUPT, sites, plain, progress=False)
        torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=1e-5, equal_nan=True)
        assert fast.how["last_position_split"] > 0
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ["gpt2", "llama_gqa", "neox_sequential", "qwen3_gqa", "gemma3_mqa"])
def test_windowed_sweep_equals_single_patches(family):
    # every patch of two sites against its own full forward pass, patched one at a time
    model = _model(family)
    sites = [Site(Kind.Z, 1), Site(Kind.MLP_OUT, 2)]
    fast = activation_patching(model, CLEAN, CORRUPT, sites, LAST, direction="noising", progress=False)
    assert fast.how["last_position_split"] > 0
    for i, site in enumerate(sites):
        src = ms.run(model, CORRUPT, capture=[site])
        for h in range(4 if site.per_head else 1):
            for p in range(SEQ):
                iv = ms.Patch(site, value=src.cache[site], heads=[h] if site.per_head else None, positions=[p])
                want = plain(ms.run(model, CLEAN, interventions=[iv]).logits)
                torch.testing.assert_close(fast.values[i, h, p], want, atol=1e-5, rtol=1e-5)


def test_forward_passes_count_every_call_of_the_model():
    model = _model("gpt2")
    calls = []
    handle = model.module.register_forward_pre_hook(lambda mod, args: calls.append(1))
    try:
        for each_position in (True, False):
            calls.clear()
            res = activation_patching(model, CLEAN, CORRUPT, SITES, LAST, each_position=each_position, max_rows=10,
                                      progress=False)
            assert res.forward_passes == len(calls)
    finally:
        handle.remove()


def test_identical_prompts_change_nothing():
    # every position is shared: per-position patches need no run, and a patch of every position
    # runs the last position alone against the target run's keys and values
    model = _model("llama_gqa")
    per_pos = activation_patching(model, CLEAN, CLEAN, SITES, LAST, progress=False)
    assert per_pos.how["unchanged_patches"] == per_pos.values.isfinite().sum() // 2
    assert per_pos.forward_passes == 2
    all_pos = activation_patching(model, CLEAN, CLEAN, SITES, LAST, each_position=False, progress=False)
    finite = all_pos.values[all_pos.values.isfinite()].view(-1, 2)
    torch.testing.assert_close(finite, all_pos.baseline.expand_as(finite), atol=1e-5, rtol=1e-5)
    assert all_pos.how["last_position_split"] > 0


def test_key_and_value_sites_run_in_one_pass():
    # keys and values reach attention through the cache: chunks that patch them are not windowed
    model = _model("llama_gqa")
    sites = [Site(Kind.K, 1), Site(Kind.V, 2), Site(Kind.Z, 1)]
    fast = activation_patching(model, CLEAN, CORRUPT, sites, LAST, each_position=False, max_rows=4, progress=False)
    slow = activation_patching(model, CLEAN, CORRUPT, sites, plain, each_position=False, max_rows=4, progress=False)
    torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert fast.how["last_position_split"] == 2  # the two chunks of z.1; k.1 shares no chunk with it


def test_window_is_refused_where_it_does_not_apply():
    ids = CLEAN
    gpt2 = _model("gpt2")
    prepared = gpt2.prepare(ids)
    assert gpt2.window(prepared, Window(keep=True), [Site(Kind.Z, 0)]) is not None
    for kind in (Kind.K, Kind.V, Kind.PATTERN, Kind.SCORES, Kind.K_IN):
        assert gpt2.window(prepared, Window(keep=True), [Site(kind, 0)]) is None
    padded = gpt2.prepare({"input_ids": ids, "attention_mask": torch.tensor([[1] * SEQ, [0] + [1] * (SEQ - 1)])})
    assert gpt2.window(padded, Window(keep=True), []) is None
    bert = ms.wrap(tf.BertModel._from_config(tf.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                           intermediate_size=64, vocab_size=VOCAB)).eval())
    assert bert.window(bert.prepare(ids), Window(keep=True), []) is None
    sliding = ms.wrap(tf.MistralForCausalLM._from_config(tf.MistralConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, sliding_window=4), attn_implementation="eager").eval())
    assert sliding.window(sliding.prepare(ids), Window(keep=True), []) is None  # its cache keeps the last 4 only
    dynamic = ms.wrap(tf.LlamaForCausalLM._from_config(tf.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0}), attn_implementation="eager").eval())
    assert dynamic.window(dynamic.prepare(ids), Window(keep=True), []) is None  # rotary scaled by the run's length
    tiny = ms.wrap(TinyTransformer(TinyConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=10,
                                              d_vocab=VOCAB)))
    assert tiny.window(tiny.prepare(ids), Window(keep=True), []) is None
    # ... and the sweep then runs every chunk in one pass, with the same values
    res = activation_patching(tiny, CLEAN, CORRUPT, ["attn.z.1", "resid_pre.1"], LAST, progress=False)
    assert res.how["last_position_split"] == 0 and res.how["shared_prefix"] == 0


@pytest.mark.parametrize("family", list(CONFIGS))
def test_windows_compose_to_the_full_pass(family):
    # the adapter alone: keep the keys of every position, then run positions 3.. against the
    # first three, then positions 3..5 up to the final keys and position 6 alone
    model = _model(family)
    full = model.run(CLEAN).logits[:, -1]
    kept = model.window(model.prepare(CLEAN), Window(keep=True), [])
    model.run(kept)
    later = model.window(model.prepare(CLEAN), Window(start=3, past=kept.past), [])
    torch.testing.assert_close(model.run(later).logits[:, -1], full, atol=1e-5, rtol=1e-5)
    head = model.window(model.prepare(CLEAN), Window(start=3, stop=SEQ - 1, past=kept.past, keys_only=True), [])
    assert model.run(head).logits is None
    last = model.window(model.prepare(CLEAN), Window(start=SEQ - 1, past=head.past), [])
    torch.testing.assert_close(model.run(last).logits[:, -1], full, atol=1e-5, rtol=1e-5)
    # rows of the past picked per row of the run: the second prompt three times
    rows = torch.tensor([1, 1, 1])
    again = model.window(model.prepare(CLEAN[rows]), Window(start=3, past=kept.past, rows=rows), [])
    torch.testing.assert_close(model.run(again).logits[:, -1], full[rows], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the `past`"):
        model.window(model.prepare(CLEAN), Window(start=3), [])


def test_a_generic_module_runs_every_chunk_in_one_pass():
    # any nn.Module taking token ids: no windows, no input_ids kept by its adapter
    net = TinyTransformer(TinyConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=10, d_vocab=VOCAB))
    generic = ms.models.ModuleModel(net.eval())
    sites = ["blocks.0", "blocks.1"]
    res = activation_patching(generic, CLEAN, CORRUPT, sites, LAST, each_position=False, progress=False)
    assert res.how["last_position_split"] == 0 and res.forward_passes == 2 + 1
    want = activation_patching(generic, CLEAN, CORRUPT, sites, plain, each_position=False, progress=False)
    torch.testing.assert_close(res.values, want.values, atol=1e-5, rtol=1e-5)
