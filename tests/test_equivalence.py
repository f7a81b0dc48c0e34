"""mechscope against the bare Hugging Face forward and against the model's own weights.

For every family: running through mechscope changes no output bit; captured activations satisfy
the block's algebra (residual sums, per-head decomposition); the weight views (raw and with layer
norms folded) recompute the captured attention, MLP input and logits.
"""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
import torch.nn.functional as F

import mechscope as ms
from mechscope import Kind, Site, SiteError
from mechscope.core.protocol import Window

from conftest import ATTN_SOFTCAP, PRE_LN_SEQUENTIAL, QK_NORM, RMS, ROTARY, SANDWICH, Fam, bare, main_output, make_family


# --- (a), (b): bit-identical outputs ---------------------------------------------------------------

def test_no_interventions_bit_identical(fam: Fam):
    ref = main_output(bare(fam.hf, fam.ids))
    res = ms.run(fam.model, fam.ids)
    assert torch.equal(main_output(res.output), ref)
    if fam.causal:
        assert torch.equal(res.logits, ref)
    else:
        assert res.logits is None
    assert len(res.cache) == 0


def test_capturing_every_site_bit_identical(fam: Fam):
    ref = main_output(bare(fam.hf, fam.ids))
    sites = fam.model.sites()
    res = ms.run(fam.model, fam.ids, capture=sites)
    assert torch.equal(main_output(res.output), ref)
    assert set(res.cache) == set(sites)
    # and the model is left as it was: a second bare forward is still identical
    assert torch.equal(main_output(bare(fam.hf, fam.ids)), ref)
    assert fam.hf.config._attn_implementation == "eager"


@pytest.mark.parametrize("side", ["right", "left"])
def test_capture_with_attention_mask_bit_identical(fam: Fam, side: str):
    """The mask path (dict inputs with a padding attention_mask) is untouched too."""
    ids = fam.ids
    mask = torch.ones_like(ids)
    pad = slice(-2, None) if side == "right" else slice(0, 2)
    mask[1, pad] = 0
    ref = main_output(bare(fam.hf, ids, attention_mask=mask))
    res = ms.run(fam.model, {"input_ids": ids, "attention_mask": mask},
                 capture=[Site(Kind.PATTERN, 0), Site(Kind.Z, 1), Site(Kind.RESID_POST, 1)])
    assert torch.equal(main_output(res.output), ref)
    # keys on padding get no attention (from real query positions)
    real = mask[1].bool()
    assert torch.all(res.cache[Site(Kind.PATTERN, 0)][1][:, real][:, :, ~real] == 0)
    assert torch.equal(res.prepared.attention_mask, mask)


def test_captured_sites_have_documented_shapes(fam: Fam):
    m, (b, p) = fam.model, fam.ids.shape
    res = ms.run(m, fam.ids, capture=m.sites())
    c = res.cache
    d, h, kv, dh = m.d_model, m.n_heads, m.n_kv_heads, m.d_head
    for layer in range(m.n_layers):
        assert c[Site(Kind.Q, layer)].shape == (b, p, h, dh)
        assert c[Site(Kind.K, layer)].shape == (b, p, kv, dh)
        assert c[Site(Kind.V, layer)].shape == (b, p, kv, dh)
        assert c[Site(Kind.PATTERN, layer)].shape == (b, h, p, p)
        assert c[Site(Kind.SCORES, layer)].shape == (b, h, p, p)
        assert c[Site(Kind.Z, layer)].shape == (b, p, h, dh)
        assert c[Site(Kind.RESULT, layer)].shape == (b, p, h, d)
        for k in (Kind.RESID_PRE, Kind.ATTN_OUT, Kind.MLP_OUT, Kind.RESID_POST):
            assert c[Site(k, layer)].shape == (b, p, d)
    pat = c[Site(Kind.PATTERN, 0)]
    torch.testing.assert_close(pat.sum(-1), torch.ones(b, h, p), atol=1e-6, rtol=0)
    if fam.causal:
        assert torch.all(pat.triu(1) == 0), "a causal model attends to the future"
        assert c[Site(Kind.LOGITS)].shape == (b, p, 101)
        assert torch.equal(c[Site(Kind.LOGITS)], res.logits)
    else:
        assert bool((pat.triu(1) > 0).any()), "an encoder attends both ways"


# --- (c) attention pattern against output_attentions -------------------------------------------

def test_pattern_equals_hf_attentions(fam: Fam):
    out = bare(fam.hf, fam.ids, output_attentions=True)
    sites = [Site(Kind.PATTERN, layer) for layer in range(fam.model.n_layers)]
    res = ms.run(fam.model, fam.ids, capture=sites)
    assert len(out.attentions) == fam.model.n_layers
    for s, ref in zip(sites, out.attentions):
        torch.testing.assert_close(res.cache[s], ref, atol=1e-6, rtol=0)
    # scores -> pattern is a softmax
    res2 = ms.run(fam.model, fam.ids, capture=[Site(Kind.SCORES, 1), Site(Kind.PATTERN, 1)])
    torch.testing.assert_close(res2.cache[Site(Kind.SCORES, 1)].softmax(-1), res2.cache[Site(Kind.PATTERN, 1)],
                               atol=1e-6, rtol=0)


# --- (d) per-head results ----------------------------------------------------------------------

def test_head_results_sum_to_attn_out(fam: Fam):
    m = fam.model
    w = m.weights()
    sites = [s for layer in range(m.n_layers) for s in (Site(Kind.RESULT, layer), Site(Kind.ATTN_OUT, layer),
                                                         Site(Kind.Z, layer))]
    c = ms.run(m, fam.ids, capture=sites).cache
    for layer in range(m.n_layers):
        result = c[Site(Kind.RESULT, layer)]
        total = result.sum(2)
        if w.b_O is not None:
            total = total + w.b_O[layer]
        if fam.name in SANDWICH:  # the heads sum to the post-attention norm's input; attn_out is its output
            blk = m.blocks[layer]
            total = _normalise(fam, total, _eps(blk.post_attention_layernorm)) * w.ln1_post_w[layer]
        torch.testing.assert_close(total, c[Site(Kind.ATTN_OUT, layer)], atol=1e-5, rtol=0)
        # each head's result is its z through its slice of W_O
        z = c[Site(Kind.Z, layer)]
        for h in (0, m.n_heads - 1):
            torch.testing.assert_close(result[:, :, h], z[:, :, h] @ w.W_O[layer, h], atol=1e-6, rtol=0)


# --- (e) residual stream algebra ---------------------------------------------------------------

@pytest.mark.parametrize("name", PRE_LN_SEQUENTIAL)
def test_residual_sums_sequential(name: str):
    f = make_family(name)
    c = ms.run(f.model, f.ids, capture=f.model.sites()).cache
    for layer in range(f.model.n_layers):
        pre, mid, post = (c[Site(k, layer)] for k in (Kind.RESID_PRE, Kind.RESID_MID, Kind.RESID_POST))
        attn, mlp = c[Site(Kind.ATTN_OUT, layer)], c[Site(Kind.MLP_OUT, layer)]
        # the models add exactly these two tensors; float addition commutes exactly
        assert torch.equal(mid, pre + attn)
        assert torch.equal(post, mid + mlp)
        if layer + 1 < f.model.n_layers:
            assert torch.equal(c[Site(Kind.RESID_PRE, layer + 1)], post)
    assert not torch.equal(c[Site(Kind.RESID_MID, 0)], c[Site(Kind.RESID_PRE, 0)])


def test_residual_sums_neox_parallel():
    f = make_family("neox_parallel")
    c = ms.run(f.model, f.ids, capture=f.model.sites()).cache
    for layer in range(f.model.n_layers):
        pre, post = c[Site(Kind.RESID_PRE, layer)], c[Site(Kind.RESID_POST, layer)]
        attn, mlp = c[Site(Kind.ATTN_OUT, layer)], c[Site(Kind.MLP_OUT, layer)]
        torch.testing.assert_close(post, pre + attn + mlp, atol=1e-5, rtol=0)
        # both halves read resid_pre: ln2 normalises resid_pre, not resid_pre + attn_out
        ln2 = f.hf.gpt_neox.layers[layer].post_attention_layernorm
        torch.testing.assert_close(c[Site(Kind.LN2, layer)], ln2(pre), atol=1e-6, rtol=0)
    assert Site(Kind.RESID_MID, 0) not in f.model.sites()
    with pytest.raises(SiteError, match="nearest valid names") as e:
        ms.run(f.model, f.ids, capture=["blocks.0.hook_resid_mid"])
    assert "blocks.0.hook_resid_pre" in str(e.value) or "blocks.0.hook_resid_post" in str(e.value)
    with pytest.raises(SiteError):
        ms.run(f.model, f.ids, capture=[Site(Kind.RESID_MID, 1)])


def test_bert_post_ln_blocks():
    f = make_family("bert")
    c = ms.run(f.model, f.ids, capture=f.model.sites()).cache
    layer_mod = f.hf.encoder.layer
    for layer in range(f.model.n_layers):
        pre, mid, post = (c[Site(k, layer)] for k in (Kind.RESID_PRE, Kind.RESID_MID, Kind.RESID_POST))
        attn, mlp = c[Site(Kind.ATTN_OUT, layer)], c[Site(Kind.MLP_OUT, layer)]
        torch.testing.assert_close(mid, layer_mod[layer].attention.output.LayerNorm(attn + pre), atol=1e-6, rtol=0)
        torch.testing.assert_close(post, layer_mod[layer].output.LayerNorm(mlp + mid), atol=1e-6, rtol=0)


# --- (f) recomputing from the weight views -----------------------------------------------------

def _layer_type(f: Fam, layer: int) -> str | None:
    """"sliding_attention" or "full_attention" for families that alternate them (Gemma 3), else None."""
    types = getattr(f.hf.config, "layer_types", None)
    return None if types is None else types[layer]


def _rotary(f: Fam, q: torch.Tensor, k: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the family's own rotary embedding; q, k are (batch, head, pos, d_head)."""
    base = f.hf.base_model
    pos = torch.arange(q.shape[2])[None].expand(q.shape[0], -1)
    per_type = "layer_type" in inspect.signature(base.rotary_emb.forward).parameters  # Gemma 3: one per layer type
    cos, sin = base.rotary_emb(q, pos, _layer_type(f, layer)) if per_type else base.rotary_emb(q, pos)
    apply = sys.modules[type(f.hf).__module__].apply_rotary_pos_emb
    return apply(q, k, cos, sin)


def _causal_mask(f: Fam, layer: int, p: int) -> torch.Tensor:
    """True where a query may not see a key: the future, and beyond a sliding window."""
    i, j = torch.arange(p)[:, None], torch.arange(p)[None]
    hidden = j > i
    if _layer_type(f, layer) == "sliding_attention":
        hidden |= i - j >= f.hf.config.sliding_window
    return hidden


def _attention_from_weights(f: Fam, w: ms.Weights, layer: int, x: torch.Tensor) -> torch.Tensor:
    """attn_out recomputed from W_Q, W_K, W_V, W_O, biases and the norms' gains; x is the attention's input.

    Per-head query/key norms (Qwen3, Gemma 3) RMS-normalise each head's vector, then multiply by
    q_norm_w / k_norm_w, before rotary; Gemma 2 soft-caps the scaled scores before the mask; a
    post-attention norm (Gemma) RMS-normalises the output and multiplies by ln1_post_w."""
    attn = f.model.blocks[layer].get_submodule(f.model.spec.attention)

    def proj(W, b):
        y = torch.einsum("bpm,hmd->bhpd", x, W[layer])
        return y if b is None else y + b[layer][None, :, None, :]

    q, k, v = proj(w.W_Q, w.b_Q), proj(w.W_K, w.b_K), proj(w.W_V, w.b_V)
    if f.name in QK_NORM:
        q = _normalise(f, q, _eps(attn.q_norm)) * w.q_norm_w[layer][None, :, None, :]
        k = _normalise(f, k, _eps(attn.k_norm)) * w.k_norm_w[layer][None, :, None, :]
    else:
        assert w.q_norm_w is None and w.k_norm_w is None
    if f.name in ROTARY:
        q, k = _rotary(f, q, k, layer)
    scores = q @ k.transpose(-1, -2) * attn.scaling
    if f.name in ATTN_SOFTCAP:
        cap = f.hf.config.attn_logit_softcapping
        scores = torch.tanh(scores / cap) * cap
    if f.causal:
        scores = scores.masked_fill(_causal_mask(f, layer, x.shape[1]), float("-inf"))
    z = scores.softmax(-1) @ v  # (batch, head, pos, d_head)
    out = torch.einsum("bhpd,hdm->bpm", z, w.W_O[layer])
    out = out if w.b_O is None else out + w.b_O[layer]
    if f.name in SANDWICH:
        out = _normalise(f, out, _eps(f.model.blocks[layer].post_attention_layernorm)) * w.ln1_post_w[layer]
    else:
        assert w.ln1_post_w is None
    return out


def _normalise(f: Fam, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The norm without its affine part: centre and scale (LayerNorm) or RMS-normalise."""
    if f.name in RMS:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def _eps(norm) -> float:
    return getattr(norm, "eps", None) or norm.variance_epsilon


def _block_norms(f: Fam, layer: int):
    blk = f.model.blocks[layer]
    if f.name == "gpt2":
        return blk.ln_1, blk.ln_2
    if f.name in SANDWICH:
        return blk.input_layernorm, blk.pre_feedforward_layernorm
    return blk.input_layernorm, blk.post_attention_layernorm


def _final_norm(f: Fam):
    base = f.hf.base_model
    for name in ("ln_f", "final_layer_norm", "norm"):  # GPT-2, GPT-NeoX, Llama/Qwen2
        if hasattr(base, name):
            return getattr(base, name)
    raise AssertionError(f"{f.name}: no final norm")


def test_attention_recomputed_from_weights(fam: Fam):
    m = fam.model
    w = m.weights()
    sites = [s for layer in range(m.n_layers)
             for s in (Site(Kind.RESID_PRE, layer), Site(Kind.ATTN_OUT, layer))]
    if fam.name != "bert":
        sites += [Site(Kind.LN1, layer) for layer in range(m.n_layers)]
    c = ms.run(m, fam.ids, capture=sites).cache
    for layer in range(m.n_layers):
        # post-LN BERT attends over resid_pre directly; pre-LN models over ln1's output
        x = c[Site(Kind.RESID_PRE, layer)] if fam.name == "bert" else c[Site(Kind.LN1, layer)]
        got = _attention_from_weights(fam, w, layer, x)
        torch.testing.assert_close(got, c[Site(Kind.ATTN_OUT, layer)], atol=1e-5, rtol=0)


def test_attention_and_mlp_from_folded_weights(fam: Fam):
    m = fam.model
    if fam.name == "bert":
        with pytest.raises(ValueError, match="post-LN"):
            m.weights(fold_ln=True)
        assert not m.weights().ln_folded
        return
    w = m.weights()
    wf = m.weights(fold_ln=True)
    assert wf.ln_folded
    assert torch.equal(wf.ln1_w, torch.ones_like(w.ln1_w))
    assert not torch.allclose(wf.W_Q, w.W_Q), "norm weights were randomised: folding must change W_Q"
    sites = [Site(k, layer) for layer in range(m.n_layers)
             for k in (Kind.RESID_PRE, Kind.ATTN_OUT, Kind.MLP_PRE, Kind.LN2)]
    sites += [Site(Kind.RESID_MID, layer) for layer in range(m.n_layers) if fam.name != "neox_parallel"]
    sites += [Site(Kind.RESID_POST, m.n_layers - 1), Site(Kind.LOGITS), Site(Kind.LN_FINAL)]
    c = ms.run(m, fam.ids, capture=sites).cache
    for layer in range(m.n_layers):
        ln1, ln2 = _block_norms(fam, layer)
        x = _normalise(fam, c[Site(Kind.RESID_PRE, layer)], _eps(ln1))
        got = _attention_from_weights(fam, wf, layer, x)
        torch.testing.assert_close(got, c[Site(Kind.ATTN_OUT, layer)], atol=1e-5, rtol=0)
        # the MLP's first projection reads ln2: resid_mid, or resid_pre under a parallel residual
        mlp_in = c[Site(Kind.RESID_PRE if fam.name == "neox_parallel" else Kind.RESID_MID, layer)]
        xn = _normalise(fam, mlp_in, _eps(ln2))
        W_first = wf.W_gate if wf.W_gate is not None else wf.W_in  # mlp.pre is the gate for gated MLPs
        b_first = None if wf.W_gate is not None else wf.b_in
        pre = xn @ W_first[layer] + (0 if b_first is None else b_first[layer])
        torch.testing.assert_close(pre, c[Site(Kind.MLP_PRE, layer)], atol=1e-5, rtol=0)
        # unfolded: mlp.pre from ln2's output
        W_raw = w.W_gate if w.W_gate is not None else w.W_in
        b_raw = None if w.W_gate is not None else w.b_in
        pre_raw = c[Site(Kind.LN2, layer)] @ W_raw[layer] + (0 if b_raw is None else b_raw[layer])
        torch.testing.assert_close(pre_raw, c[Site(Kind.MLP_PRE, layer)], atol=1e-5, rtol=0)
    # unembedding through the folded final norm
    resid = c[Site(Kind.RESID_POST, m.n_layers - 1)]
    xn = _normalise(fam, resid, _eps(_final_norm(fam)))
    logits = xn @ wf.W_U + (0 if wf.b_U is None else wf.b_U)
    torch.testing.assert_close(logits, c[Site(Kind.LOGITS)], atol=1e-4, rtol=0)


def test_unembed_and_embed_weights(fam: Fam):
    m = fam.model
    w = m.weights()
    d, vocab = m.d_model, 101
    assert w.W_E.shape == (vocab, d)
    assert w.W_Q.shape == (m.n_layers, m.n_heads, d, m.d_head)
    assert w.W_K.shape == (m.n_layers, m.n_heads, d, m.d_head)
    assert w.W_O.shape == (m.n_layers, m.n_heads, m.d_head, d)
    c = ms.run(m, fam.ids, capture=[Site(Kind.EMBED)]).cache
    assert torch.equal(c[Site(Kind.EMBED)], w.W_E[fam.ids])
    if w.W_pos is not None:  # learned absolute positions (GPT-2, BERT)
        pe = ms.run(m, fam.ids, capture=[Site(Kind.POS_EMBED)]).cache[Site(Kind.POS_EMBED)]
        assert torch.equal(pe[0], w.W_pos[: fam.ids.shape[1]])
    else:
        assert Site(Kind.POS_EMBED) not in m.sites()
    if not fam.causal:
        assert w.W_U is None
        return
    assert w.W_U.shape == (d, vocab)
    assert Site(Kind.LOGITS) in m.sites(), f"{fam.name} has no logits site"
    res = ms.run(m, fam.ids, capture=[Site(Kind.LN_FINAL)])
    logits = res.cache[Site(Kind.LN_FINAL)] @ w.W_U + (0 if w.b_U is None else w.b_U)
    torch.testing.assert_close(logits, res.logits, atol=1e-4, rtol=0)


def test_mlp_recomputed_from_weights(fam: Fam):
    """mlp.pre, mlp.post and mlp_out from W_in, W_gate, W_out and the family's activation."""
    from transformers.activations import ACT2FN

    m = fam.model
    w = m.weights()
    cfg = fam.hf.config
    act = ACT2FN[getattr(cfg, "activation_function", None) or getattr(cfg, "hidden_act", None)
                 or cfg.hidden_activation]  # Gemma: hidden_activation (gelu_pytorch_tanh)
    kinds = [Kind.MLP_PRE, Kind.MLP_POST, Kind.MLP_OUT]
    kinds.append(Kind.RESID_MID if fam.name == "bert" else Kind.LN2)
    c = ms.run(m, fam.ids, capture=[Site(k, layer) for layer in range(m.n_layers) for k in kinds]).cache
    for layer in range(m.n_layers):
        x = c[Site(Kind.RESID_MID if fam.name == "bert" else Kind.LN2, layer)]  # what the MLP reads
        pre, post, out = (c[Site(k, layer)] for k in kinds[:3])
        assert pre.shape[-1] == post.shape[-1] == (256 if fam.name == "gpt2" else 128)  # d_mlp
        up = x @ w.W_in[layer] + (0 if w.b_in is None else w.b_in[layer])
        if w.W_gate is not None:
            torch.testing.assert_close(pre, x @ w.W_gate[layer], atol=1e-5, rtol=0)
            torch.testing.assert_close(post, act(pre) * up, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(pre, up, atol=1e-5, rtol=0)
            torch.testing.assert_close(post, act(pre), atol=1e-6, rtol=0)
        got = post @ w.W_out[layer] + (0 if w.b_out is None else w.b_out[layer])
        if fam.name in SANDWICH:  # mlp_out is the post-feedforward norm's output
            got = _normalise(fam, got, _eps(m.blocks[layer].post_feedforward_layernorm)) * w.ln2_post_w[layer]
        else:
            assert w.ln2_post_w is None
        torch.testing.assert_close(got, out, atol=1e-5, rtol=0)


def test_neox_without_attention_biases():
    """GPT-NeoX configs with attention_bias=False have no qkv or dense bias: weights must still read."""
    import transformers as tf

    from conftest import make_ids, randomise_norms

    cfg = tf.GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                           vocab_size=101, max_position_embeddings=64, attention_bias=False)
    torch.manual_seed(0)
    hf = tf.GPTNeoXForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    randomise_norms(hf)
    f = Fam("neox_parallel", hf, ms.wrap(hf), make_ids())
    w = f.model.weights()
    assert w.b_Q is None and w.b_O is None
    sites = [Site(k, 0) for k in (Kind.LN1, Kind.RESID_PRE, Kind.ATTN_OUT, Kind.RESULT)]
    res = ms.run(f.model, f.ids, capture=sites)
    assert torch.equal(res.logits, bare(hf, f.ids).logits)
    c = res.cache
    torch.testing.assert_close(c[Site(Kind.RESULT, 0)].sum(2), c[Site(Kind.ATTN_OUT, 0)], atol=1e-5, rtol=0)
    got = _attention_from_weights(f, w, 0, c[Site(Kind.LN1, 0)])
    torch.testing.assert_close(got, c[Site(Kind.ATTN_OUT, 0)], atol=1e-5, rtol=0)
    wf = f.model.weights(fold_ln=True)
    x = _normalise(f, c[Site(Kind.RESID_PRE, 0)], _eps(_block_norms(f, 0)[0]))
    torch.testing.assert_close(_attention_from_weights(f, wf, 0, x), c[Site(Kind.ATTN_OUT, 0)], atol=1e-5, rtol=0)


# --- (g) per-head query/key norms, sandwich norms, Hugging Face's hidden states -------------------

def test_residual_sites_equal_hf_hidden_states(fam: Fam):
    """output_hidden_states: the embedding output, each block's input, and the last block's output
    (after the final norm, where the family applies it inside the base model)."""
    m = fam.model
    hs = bare(fam.hf, fam.ids, output_hidden_states=True).hidden_states
    assert len(hs) == m.n_layers + 1
    last = [Site(Kind.RESID_POST, m.n_layers - 1)] + ([Site(Kind.LN_FINAL)] if Site(Kind.LN_FINAL) in m.sites() else [])
    c = ms.run(m, fam.ids, capture=[Site(Kind.RESID_PRE, layer) for layer in range(m.n_layers)] + last).cache
    for layer in range(m.n_layers):
        assert torch.equal(hs[layer], c[Site(Kind.RESID_PRE, layer)]), f"hidden state {layer}"
    assert any(torch.equal(hs[-1], c[s]) for s in last)


@pytest.mark.parametrize("name", sorted(QK_NORM))
def test_query_key_norm_sites_and_weight_views(name: str):
    """attn.q / attn.k sit after the per-head norm and rotary (recomputed with the model's own
    modules); W_Q / W_K give the queries and keys before the norm; q_norm_w / k_norm_w are the
    norms' effective gains; folding layer norms leaves them alone; QK (which includes them) gives
    the score up to 1 / (rms(q) rms(k)), checked where rotary is the identity (position 0)."""
    f = make_family(name)
    m, w, wf = f.model, f.model.weights(), f.model.weights(fold_ln=True)
    assert w.b_Q is None and w.b_K is None
    assert torch.equal(wf.q_norm_w, w.q_norm_w) and torch.equal(wf.k_norm_w, w.k_norm_w)
    rep = m.n_heads // m.n_kv_heads
    for layer in range(m.n_layers):
        c = ms.run(m, f.ids, capture=[Site(k, layer) for k in (Kind.LN1, Kind.Q, Kind.K, Kind.SCORES)]).cache
        attn = m.blocks[layer].self_attn
        x = c[Site(Kind.LN1, layer)]
        b, p = x.shape[:2]
        q_pre = attn.q_proj(x).view(b, p, -1, m.d_head)  # (batch, pos, head, d_head)
        k_pre = attn.k_proj(x).view(b, p, -1, m.d_head)
        torch.testing.assert_close(x @ w.W_Q[layer].transpose(0, 1).flatten(1), q_pre.flatten(2), atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.einsum("bpm,hmd->bphd", x, w.W_K[layer, ::rep]), k_pre, atol=1e-6, rtol=0)
        q, k = _rotary(f, attn.q_norm(q_pre).transpose(1, 2), attn.k_norm(k_pre).transpose(1, 2), layer)
        assert torch.equal(c[Site(Kind.Q, layer)], q.transpose(1, 2))
        assert torch.equal(c[Site(Kind.K, layer)], k.transpose(1, 2))
        # the gains, as the weight views hold them (Gemma: 1 + weight)
        torch.testing.assert_close(_normalise(f, q_pre, _eps(attn.q_norm)) * w.q_norm_w[layer], attn.q_norm(q_pre),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(_normalise(f, k_pre, _eps(attn.k_norm)) * w.k_norm_w[layer, ::rep],
                                   attn.k_norm(k_pre), atol=1e-6, rtol=0)
        # QK at position 0 (rotary leaves position 0 as it is)
        rms = lambda t, eps: (t.pow(2).mean(-1) + eps).sqrt()  # noqa: E731
        x0 = x[:, 0]  # (batch, d_model)
        qk = w.QK[layer].full()  # (head, d_model, d_model)
        got = torch.einsum("bm,hmn,bn->bh", x0, qk, x0) * attn.scaling
        got = got / (rms(q_pre[:, 0], _eps(attn.q_norm)) * rms(k_pre[:, 0], _eps(attn.k_norm)).repeat_interleave(rep, 1))
        torch.testing.assert_close(got, c[Site(Kind.SCORES, layer)][:, :, 0, 0], atol=1e-5, rtol=1e-5)
        raw = torch.einsum("bm,hmn,bn->bh", x0, w.W_Q[layer] @ w.W_K[layer].transpose(-1, -2), x0) * attn.scaling
        raw = raw / (rms(q_pre[:, 0], _eps(attn.q_norm)) * rms(k_pre[:, 0], _eps(attn.k_norm)).repeat_interleave(rep, 1))
        assert not torch.allclose(raw, got, atol=1e-3), "the gains were randomised: leaving them out must show"


@pytest.mark.parametrize("name", sorted(SANDWICH))
def test_gemma_sandwich_norms_embedding_and_views(name: str):
    """Gemma 2 and 3: the embedding is scaled by sqrt(d_model) (W_E holds the scaled table), norm gains are
    1 + weight, attn_out / mlp_out are the post-norms' outputs (their inputs the attention projection
    and the MLP outputs), OV with the post-norm gain gives attn_out up to 1 / rms(projection output),
    and folding leaves the post-norm gains alone."""
    f = make_family(name)
    m, w, wf = f.model, f.model.weights(), f.model.weights(fold_ln=True)
    base = f.hf.model
    assert torch.equal(w.W_E, base.embed_tokens.weight * torch.tensor(64 ** 0.5))
    assert torch.equal(w.lnf_w, 1 + base.norm.weight)
    assert torch.equal(wf.ln1_post_w, w.ln1_post_w) and torch.equal(wf.ln2_post_w, w.ln2_post_w)
    assert not torch.equal(wf.ln1_w, w.ln1_w)
    for layer in range(m.n_layers):
        blk = m.blocks[layer]
        assert torch.equal(w.ln1_w[layer], 1 + blk.input_layernorm.weight)
        assert torch.equal(w.ln2_post_w[layer], 1 + blk.post_feedforward_layernorm.weight)
        kept = {}
        hooks = [blk.self_attn.o_proj.register_forward_hook(lambda _m, _a, o: kept.__setitem__("o", o)),
                 blk.mlp.register_forward_hook(lambda _m, _a, o: kept.__setitem__("mlp", o))]
        try:
            c = ms.run(m, f.ids, capture=[Site(k, layer) for k in (Kind.Z, Kind.ATTN_OUT, Kind.MLP_OUT, Kind.RESULT)]).cache
        finally:
            for h in hooks:
                h.remove()
        assert torch.equal(c[Site(Kind.ATTN_OUT, layer)], blk.post_attention_layernorm(kept["o"]))
        assert torch.equal(c[Site(Kind.MLP_OUT, layer)], blk.post_feedforward_layernorm(kept["mlp"]))
        torch.testing.assert_close(c[Site(Kind.RESULT, layer)].sum(2), kept["o"], atol=1e-6, rtol=0)
        z = c[Site(Kind.Z, layer)]
        written = torch.einsum("bphd,hdm->bpm", z, w.W_O_written[layer])
        rms = (kept["o"].pow(2).mean(-1, keepdim=True) + blk.post_attention_layernorm.eps).sqrt()
        torch.testing.assert_close(written / rms, c[Site(Kind.ATTN_OUT, layer)], atol=1e-5, rtol=0)
        ov = w.OV[layer].full()  # (head, d_model, d_model): W_V W_O diag(ln1_post_w)
        torch.testing.assert_close(ov, w.W_V[layer] @ w.W_O[layer] * w.ln1_post_w[layer], atol=1e-6, rtol=0)


def _gemma_variant(name: str, **changes) -> Fam:
    """A Gemma test model with its config changed (same seed, so the same weights)."""
    from conftest import _configs, make_ids, randomise_norms

    cls, cfg = _configs()[name]
    cfg = type(cfg)(**{**{k: getattr(cfg, k) for k in (
        "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "max_position_embeddings", "query_pre_attn_scalar", "sliding_window",
        "layer_types", "attn_logit_softcapping")}, **changes})
    torch.manual_seed(0)
    hf = cls._from_config(cfg, attn_implementation="eager").to(torch.float32).eval()
    randomise_norms(hf, 1)
    return Fam(name, hf, ms.wrap(hf), make_ids())


@pytest.mark.parametrize("name", sorted(SANDWICH))
def test_gemma_final_logit_softcap_and_bidirectional_variants(name: str):
    """With final_logit_softcapping the logits site is the unembedding's output (ln_final @ W_U) and
    the model's logits are cap * tanh(site / cap); with use_bidirectional_attention Gemma 3 is not
    causal (every position sees every other, and windows of positions are refused). (Gemma 2's eager
    forward masks causally whatever that flag says.)"""
    f = _gemma_variant(name, final_logit_softcapping=0.5)
    res = ms.run(f.model, f.ids, capture=[Site(Kind.LOGITS), Site(Kind.LN_FINAL)])
    site = res.cache[Site(Kind.LOGITS)]
    assert torch.equal(res.logits, bare(f.hf, f.ids).logits)
    assert torch.equal(res.logits, torch.tanh(site / 0.5) * 0.5)
    assert not torch.allclose(res.logits, site, atol=1e-3)
    torch.testing.assert_close(res.cache[Site(Kind.LN_FINAL)] @ f.model.weights().W_U, site, atol=1e-5, rtol=0)
    if name != "gemma3_mqa":
        return
    full = ["full_attention"] * 2  # (sliding-window layers refuse windows of positions either way)
    g = _gemma_variant(name, use_bidirectional_attention=True, layer_types=full)
    causal = _gemma_variant(name, layer_types=full)
    assert not g.model.causal and causal.model.causal
    pat = ms.run(g.model, g.ids, capture=[Site(Kind.PATTERN, 1)]).cache[Site(Kind.PATTERN, 1)]
    assert torch.equal(ms.run(g.model, g.ids).logits, bare(g.hf, g.ids).logits)
    future = torch.ones(pat.shape[-2:], dtype=torch.bool).triu(1)
    assert bool((pat[..., future] > 0).all())
    assert causal.model.window(causal.model.prepare(causal.ids), Window(0, None, keep=True), []) is not None
    assert g.model.window(g.model.prepare(g.ids), Window(0, None, keep=True), []) is None
