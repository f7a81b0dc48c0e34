"""The zoo's TinyTransformer and its adapter: canonical sites, exact captures, weight views that agree."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import Kind, Patch, Site, Zero
from mechscope.models.tiny import TinyConfig, TinyModel, TinyTransformer

CONFIGS = {
    "mlp": TinyConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=10, d_vocab=23),
    "mlp_ln_gelu": TinyConfig(n_layers=2, d_model=32, n_heads=2, d_head=12, d_mlp=48, n_ctx=10, d_vocab=23,
                              d_vocab_out=19, act="gelu", layer_norm=True),
    "attn_only": TinyConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=None, n_ctx=10, d_vocab=23,
                            bias=False),
    "mlp_bias_only": TinyConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=10, d_vocab=23,
                                bias="mlp", init_std=0.2, unembed_std=0.05),
}


def _model(name: str) -> tuple[TinyTransformer, TinyModel, torch.Tensor]:
    torch.manual_seed(0)
    module = TinyTransformer(CONFIGS[name]).eval()
    with torch.no_grad():  # non-zero biases and norms, so that no term hides behind a zero
        for n, p in module.named_parameters():
            if n.endswith("bias") or ".ln" in n or "ln_final" in n:
                p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, 23, (3, 7), generator=torch.Generator().manual_seed(1))
    return module, module.mechscope_adapter(), ids


@pytest.mark.parametrize("name", list(CONFIGS))
def test_capturing_every_site_leaves_logits_bit_identical(name):
    module, model, ids = _model(name)
    with torch.no_grad():
        bare = module(ids)
    res = ms.run(model, ids, capture=model.sites())
    assert torch.equal(res.logits, bare)
    assert torch.equal(res.cache[Site(Kind.LOGITS)], bare)
    cfg = module.cfg
    shapes = {Kind.Q: (3, 7, cfg.n_heads, cfg.d_head), Kind.PATTERN: (3, cfg.n_heads, 7, 7),
              Kind.Z: (3, 7, cfg.n_heads, cfg.d_head), Kind.RESULT: (3, 7, cfg.n_heads, cfg.d_model),
              Kind.RESID_POST: (3, 7, cfg.d_model), Kind.LOGITS: (3, 7, cfg.vocab_out)}
    for site, t in res.cache.items():
        if site.kind in shapes:
            assert tuple(t.shape) == shapes[site.kind], site
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_self_patch_at_every_site_is_exact(name):
    _, model, ids = _model(name)
    clean = ms.run(model, ids, capture=model.sites())
    for site in model.sites():
        out = ms.run(model, ids, interventions=[Patch(site, value=clean.cache[site])]).logits
        if site.kind is Kind.RESULT:  # rebuilt as a sum over heads: equal up to rounding
            torch.testing.assert_close(out, clean.logits, atol=1e-5, rtol=0)
        else:
            assert torch.equal(out, clean.logits), site


def test_sites_are_canonical_and_follow_the_config():
    _, mlp, _ = _model("mlp")
    _, ln, _ = _model("mlp_ln_gelu")
    _, attn, _ = _model("attn_only")
    kinds = lambda m, layer: {s.kind for s in m.sites() if s.layer == layer}  # noqa: E731
    assert {Kind.RESID_MID, Kind.MLP_PRE, Kind.MLP_POST, Kind.MLP_OUT} <= kinds(mlp, 1)
    assert not {Kind.LN1, Kind.LN2} & kinds(mlp, 1)
    assert {Kind.LN1, Kind.LN2} <= kinds(ln, 0) and Site(Kind.LN_FINAL) in ln.sites()
    assert not {Kind.RESID_MID, Kind.MLP_PRE, Kind.MLP_OUT} & kinds(attn, 0)
    assert Site.parse("blocks.1.attn.hook_result", mlp.sites()) == Site(Kind.RESULT, 1)
    with pytest.raises(ms.SiteError, match="nearest"):
        mlp.check("blocks.1.mlp.hook_prex")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_attn_result_sums_to_attn_out(name):
    _, model, ids = _model(name)
    w = model.weights()
    res = ms.run(model, ids, capture=["attn.result.0", "attn_out.0"])
    total = res.cache["attn.result.0"].sum(2)
    if w.b_O is not None:
        total = total + w.b_O[0]
    torch.testing.assert_close(total, res.cache["attn_out.0"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_weight_views_recompute_the_activations(name):
    module, model, ids = _model(name)
    w = model.weights()
    sites = ["ln1.1" if module.cfg.layer_norm else "resid_pre.1", "attn.q.1", "attn.k.1", "attn.v.1",
             "attn.z.1", "attn_out.1", "embed", "logits"]
    c = ms.run(model, ids, capture=sites).cache
    x = c[sites[0]]
    zero = lambda b: 0 if b is None else b[1]  # noqa: E731
    for site, W, b in (("attn.q.1", w.W_Q, w.b_Q), ("attn.k.1", w.W_K, w.b_K), ("attn.v.1", w.W_V, w.b_V)):
        torch.testing.assert_close(torch.einsum("bpm,hmd->bphd", x, W[1]) + zero(b), c[site], atol=1e-5, rtol=1e-5)
    out = torch.einsum("bphd,hdm->bpm", c["attn.z.1"], w.W_O[1]) + (0 if w.b_O is None else w.b_O[1])
    torch.testing.assert_close(out, c["attn_out.1"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.W_E[ids], c["embed"])


def test_zero_ablating_a_head_changes_only_later_outputs():
    _, model, ids = _model("attn_only")
    clean = ms.run(model, ids, capture=["resid_post.0"])
    out = ms.run(model, ids, capture=["resid_post.0"], interventions=[Zero("attn.z.1", heads=[2])])
    assert torch.equal(out.cache["resid_post.0"], clean.cache["resid_post.0"])
    assert not torch.allclose(out.logits, clean.logits)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_last_only_forward_equals_the_last_position(name):
    module, _, ids = _model(name)
    with torch.no_grad():
        # same numbers; batched products of other shapes may round differently in the last bit
        torch.testing.assert_close(module(ids, last_only=True), module(ids)[:, -1:], atol=1e-6, rtol=1e-6)


def test_gradients_reach_sites():
    _, model, ids = _model("mlp")
    g = ms.run(model, ids, capture=["resid_mid.1"], grad=lambda out: out[0, -1, 3])
    assert g.grads["resid_mid.1"].abs().sum() > 0


def test_wrap_picks_the_tiny_adapter():
    # needs the `mechscope_adapter` hook in mechscope.models.wrap (see mechscope/models/tiny.py)
    module, _, ids = _model("mlp")
    model = ms.wrap(module)
    assert isinstance(model, TinyModel)
    assert torch.equal(ms.run(module, ids, capture=["attn.z.1"]).cache["attn.z.1"],
                       ms.run(model, ids, capture=["attn.z.1"]).cache["attn.z.1"])


def test_mlp_only_biases_and_the_unembedding_init():
    """bias="mlp" (the grokking model's layout) keeps the MLP's biases alone; the unembedding draws
    its weights with its own std."""
    torch.manual_seed(0)
    module = TinyTransformer(CONFIGS["mlp_bias_only"])
    biased = sorted(n for n, _ in module.named_parameters() if n.endswith("bias"))
    assert biased == [f"blocks.{i}.mlp.{w}.bias" for i in range(2) for w in ("W_in", "W_out")]
    assert abs(module.unembed.weight.std().item() - 0.05) < 0.01
    assert abs(module.blocks[0].mlp.W_in.weight.std().item() - 0.2) < 0.02
    w = module.mechscope_adapter().weights()
    assert w.b_Q is None and w.b_O is None and w.b_U is None and w.b_in is not None
    with pytest.raises(ValueError, match="bias"):
        TinyConfig(n_layers=1, d_model=8, n_heads=1, d_head=8, d_mlp=8, n_ctx=3, d_vocab=5, bias="attn")


def _causal_or_not(name: str, causal: bool) -> tuple[TinyTransformer, TinyModel, torch.Tensor]:
    module, model, ids = _model(name)
    if not causal:
        cfg = TinyConfig(**{**module.cfg.to_dict(), "causal": False})
        bidirectional = TinyTransformer(cfg).eval()
        bidirectional.load_state_dict(module.state_dict())
        module, model = bidirectional, bidirectional.mechscope_adapter()
    return module, model, ids


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_attention_is_the_explicit_function(name, causal):
    # the fused kernel against the explicit scores / mask / softmax: logits and every weight's gradient
    module, model, ids = _causal_or_not(name, causal)
    explicit = module(ids)
    explicit.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad()
    with model.fused():
        assert all(a.fused for a in module.modules() if type(a).__name__ == "Attention")
        fused = module(ids)
        fused.square().mean().backward()
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)
    assert not any(a.fused for a in module.modules() if type(a).__name__ == "Attention")


def test_fused_attention_steps_aside_where_the_pattern_is_observed():
    # capturing or changing a block's pattern (or scores) needs them computed: that block runs explicitly,
    # bit for bit as outside the context (block 0 here, which has nothing fused before it); a block with
    # nothing attached there may take the kernel (block 1: its output equal to rounding)
    module, model, ids = _model("mlp_ln_gelu")
    pattern, scores = Site(Kind.PATTERN, 0), Site(Kind.SCORES, 0)
    outside = ms.run(model, ids, capture=[pattern, Site(Kind.RESID_MID, 0)])
    ablated = ms.run(model, ids, interventions=[Zero(scores)], capture=[Site(Kind.RESID_MID, 0)])
    with model.fused():
        inside = ms.run(model, ids, capture=[pattern, Site(Kind.RESID_MID, 0)])
        changed = ms.run(model, ids, interventions=[Zero(scores)], capture=[Site(Kind.RESID_MID, 0)])
        last = module(ids, last_only=True)  # the last block's queries for the last position only: explicit there
    assert torch.equal(inside.cache[pattern], outside.cache[pattern])
    assert torch.equal(inside.cache[Site(Kind.RESID_MID, 0)], outside.cache[Site(Kind.RESID_MID, 0)])
    assert torch.equal(changed.cache[Site(Kind.RESID_MID, 0)], ablated.cache[Site(Kind.RESID_MID, 0)])
    torch.testing.assert_close(inside.logits, outside.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(changed.logits, ablated.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, outside.logits[:, -1:], atol=1e-5, rtol=1e-5)


def test_fused_attention_is_switched_off_again_after_an_error():
    module, model, ids = _model("attn_only")
    with pytest.raises(RuntimeError, match="inside"):
        with model.fused():
            raise RuntimeError("inside")
    assert not any(a.fused for a in module.modules() if type(a).__name__ == "Attention")
