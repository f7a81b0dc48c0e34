"""Interventions: each one against a hand-written PyTorch hook, restrictions, batching, cleanup, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechscope as ms
from mechscope import (Add, InterventionError, Kind, Mean, Patch, Replace, Resample, Scale, Site, SiteError,
                       Zero)
from mechscope.models import hf_attention

from conftest import FAMILIES, SANDWICH, Fam, assert_no_hooks, bare, main_output, make_family, make_ids, suggestions


def _hooked_logits(hf: nn.Module, module: nn.Module, fn, ids: torch.Tensor) -> torch.Tensor:
    """Logits with a manual forward hook on `module` that replaces its output with fn(output)."""
    def hook(_m, _a, out):
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)

    h = module.register_forward_hook(hook)
    try:
        return bare(hf, ids).logits
    finally:
        h.remove()


# --- (a) patching a run with its own activations ---------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_self_patch_changes_nothing(name: str):
    f = make_family(name)
    sites = f.model.sites()
    clean = ms.run(f.model, f.ids, capture=sites)
    ref = main_output(clean.output)
    keep = {s: t.clone() for s, t in clean.cache.items()}
    for site in sites:
        res = ms.run(f.model, f.ids, interventions=[Patch(site, value=clean.cache[site])])
        if site.kind is Kind.RESULT:
            # A modified attn.result is written back as the sum over heads plus b_O, which adds the
            # heads in another order than the fused output projection: equal up to rounding only.
            torch.testing.assert_close(main_output(res.output), ref, atol=1e-5, rtol=0)
        else:
            assert torch.equal(main_output(res.output), ref), f"self-patch at {site.name} changed the output"
    # every site at once (but attn.result) in one run
    ivs = [Patch(s, value=clean.cache[s]) for s in sites if s.kind is not Kind.RESULT]
    assert torch.equal(main_output(ms.run(f.model, f.ids, interventions=ivs).output), ref)
    # patching never wrote into the cache it read from
    for s, t in keep.items():
        assert torch.equal(clean.cache[s], t), f"{s.name} in the clean cache was modified"


def test_patch_from_other_run_changes_output(gpt2: Fam):
    other = make_ids(seed=5)
    site = Site(Kind.RESID_PRE, 1)
    corrupt = ms.run(gpt2.model, other, capture=[site])
    clean = ms.run(gpt2.model, gpt2.ids)
    patched = ms.run(gpt2.model, gpt2.ids, interventions=[Patch(site, value=corrupt.cache[site])])
    # everything after resid_pre.1 depends only on resid_pre.1 (positions are inside it already)
    assert torch.equal(patched.logits, corrupt.logits)
    assert not torch.allclose(patched.logits, clean.logits)


# --- (b) each intervention against a manual computation ---------------------------------------------

def test_zero_mlp_out_matches_manual(gpt2: Fam):
    hf, last = gpt2.hf, gpt2.model.n_layers - 1
    manual = _hooked_logits(hf, hf.transformer.h[last].mlp, torch.zeros_like, gpt2.ids)
    res = ms.run(gpt2.model, gpt2.ids, interventions=[Zero(Site(Kind.MLP_OUT, last))])
    assert torch.equal(res.logits, manual)
    assert not torch.allclose(res.logits, bare(hf, gpt2.ids).logits)


def test_zero_mlp_out_matches_manual_llama(llama: Fam):
    hf = llama.hf
    manual = _hooked_logits(hf, hf.model.layers[0].mlp, torch.zeros_like, llama.ids)
    res = ms.run(llama.model, llama.ids, interventions=[Zero("blocks.0.hook_mlp_out")])
    assert torch.equal(res.logits, manual)


def test_scale_one_is_identity_and_scale_matches_manual(causal_fam: Fam):
    f = causal_fam
    clean = bare(f.hf, f.ids).logits
    ivs = [Scale(s, factor=1.0) for s in f.model.sites() if s.kind is not Kind.RESULT]
    assert torch.equal(ms.run(f.model, f.ids, interventions=ivs).logits, clean)
    site = Site(Kind.MLP_OUT, 0)
    # the module mlp_out is the output of: the MLP, or its post-norm (Gemma's sandwich norms)
    mlp = f.model.blocks[0].post_feedforward_layernorm if f.name in SANDWICH else f.model.blocks[0].mlp
    manual = _hooked_logits(f.hf, mlp, lambda x: x * 0.5, f.ids)
    assert torch.equal(ms.run(f.model, f.ids, interventions=[Scale(site, factor=0.5)]).logits, manual)


def test_add_at_last_resid_post_matches_manual(gpt2: Fam):
    hf, last = gpt2.hf, gpt2.model.n_layers - 1
    vec = torch.randn(64, generator=torch.Generator().manual_seed(3))
    manual = _hooked_logits(hf, hf.transformer.h[last], lambda x: x + vec, gpt2.ids)
    res = ms.run(gpt2.model, gpt2.ids, interventions=[Add(f"resid_post.{last}", vector=vec)])
    assert torch.equal(res.logits, manual)
    assert not torch.allclose(res.logits, bare(hf, gpt2.ids).logits)


def test_mean_matches_manual(gpt2: Fam):
    site = Site(Kind.MLP_OUT, 0)
    ref = ms.run(gpt2.model, make_ids(batch=5, seed=9), capture=[site]).cache[site]
    mlp = gpt2.hf.transformer.h[0].mlp
    mean = ref.mean(0)  # (pos, d_model)
    manual = _hooked_logits(gpt2.hf, mlp, lambda x: mean.expand_as(x).clone(), gpt2.ids)
    res = ms.run(gpt2.model, gpt2.ids, interventions=[Mean.of(site, ref)])
    assert torch.equal(res.logits, manual)
    # averaged over positions too: one vector everywhere
    mean_pos = ref.mean(0).mean(0)
    iv = Mean.of(site, ref, over_positions=True)
    assert iv.mean.shape == (1, 64)
    manual = _hooked_logits(gpt2.hf, mlp, lambda x: mean_pos.expand_as(x).clone(), gpt2.ids)
    torch.testing.assert_close(ms.run(gpt2.model, gpt2.ids, interventions=[iv]).logits, manual,
                               atol=1e-6, rtol=0)


def test_resample_matches_manual(gpt2: Fam):
    site = Site(Kind.ATTN_OUT, 1)
    source = ms.run(gpt2.model, make_ids(batch=6, seed=11), capture=[site]).cache[site]
    g = torch.Generator().manual_seed(7)
    pick = torch.randint(6, (gpt2.ids.shape[0],), generator=g)
    manual = _hooked_logits(gpt2.hf, gpt2.hf.transformer.h[1].attn, lambda x: source[pick], gpt2.ids)
    res = ms.run(gpt2.model, gpt2.ids, interventions=[Resample(site, source=source, seed=7)])
    assert torch.equal(res.logits, manual)
    # the same seed draws the same rows
    again = ms.run(gpt2.model, gpt2.ids, interventions=[Resample(site, source=source, seed=7)])
    assert torch.equal(again.logits, res.logits)


def test_replace_sees_context_and_matches_manual(gpt2: Fam):
    seen = {}
    attn_site, mlp_site = Site(Kind.ATTN_OUT, 1), Site(Kind.MLP_OUT, 1)

    def fn(x, ctx):
        seen["ids"], seen["site"] = ctx.input_ids, ctx.site
        seen["has_attn"] = attn_site in ctx.cache
        return x * 2 - ctx.cache[attn_site]

    res = ms.run(gpt2.model, gpt2.ids, capture=[attn_site], interventions=[Replace(mlp_site, fn=fn)])
    assert torch.equal(seen["ids"], gpt2.ids) and seen["site"] == mlp_site and seen["has_attn"]
    attn = res.cache[attn_site]
    manual = _hooked_logits(gpt2.hf, gpt2.hf.transformer.h[1].mlp, lambda x: x * 2 - attn, gpt2.ids)
    assert torch.equal(res.logits, manual)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_nested_run_inside_replace_sees_only_its_own_taps(name: str):
    """A Replace function that runs the model again: the inner run sees neither the outer run's
    attention taps (q, pattern) nor its module hooks (resid_post, the Replace itself), and the
    outer run's captures and interventions are exactly what they are without the inner run."""
    f = make_family(name)
    other = make_ids(seed=5)
    sites = [Site(Kind.Q, 1), Site(Kind.PATTERN, 1), Site(Kind.RESID_POST, 1)]
    outer_ivs = [Zero(Site(Kind.PATTERN, 1), heads=[0]), Scale(Site(Kind.RESID_POST, 0), factor=0.5)]
    want_outer = ms.run(f.model, f.ids, capture=sites, interventions=outer_ivs)
    want_inner = ms.run(f.model, other, capture=sites)
    inner, calls = [], []

    def fn(x, ctx):
        calls.append(1)
        if not inner:  # (guarded: an outer hook firing inside the inner run must not recurse)
            inner.append(None)
            inner[0] = ms.run(f.model, other, capture=sites)
        return x

    got = ms.run(f.model, f.ids, capture=sites, interventions=[*outer_ivs, Replace(Site(Kind.RESID_PRE, 0), fn=fn)])
    assert len(calls) == 1, "the outer run's Replace fired inside the inner run"
    assert torch.equal(got.logits, want_outer.logits)
    assert torch.equal(inner[0].logits, want_inner.logits)
    for s in sites:
        assert torch.equal(got.cache[s], want_outer.cache[s]), f"outer {s.name}"
        assert torch.equal(inner[0].cache[s], want_inner.cache[s]), f"inner {s.name}"
    # a bare inner run (nothing captured) is the bare model's too
    bare_inner = []
    ms.run(f.model, f.ids, capture=sites, interventions=[
        *outer_ivs, Replace(Site(Kind.RESID_PRE, 0), fn=lambda x, ctx: bare_inner.append(ms.run(f.model, other)) or x)])
    assert torch.equal(bare_inner[0].logits, bare(f.hf, other).logits)
    assert_no_hooks(f.hf)
    assert not hf_attention._ACTIVE


def test_interventions_at_one_site_apply_in_order(gpt2: Fam):
    site = Site(Kind.MLP_OUT, 0)
    vec = torch.ones(64)
    mlp = gpt2.hf.transformer.h[0].mlp
    a = ms.run(gpt2.model, gpt2.ids, interventions=[Zero(site), Add(site, vector=vec)]).logits
    b = ms.run(gpt2.model, gpt2.ids, interventions=[Add(site, vector=vec), Zero(site)]).logits
    assert torch.equal(a, _hooked_logits(gpt2.hf, mlp, lambda x: torch.zeros_like(x) + vec, gpt2.ids))
    assert torch.equal(b, _hooked_logits(gpt2.hf, mlp, torch.zeros_like, gpt2.ids))


# --- (c) restrictions touch only what they select ---------------------------------------------------

def test_zero_one_head_of_z(causal_fam: Fam):
    f = causal_fam
    z = Site(Kind.Z, 0)
    clean = ms.run(f.model, f.ids, capture=[z]).cache[z]
    got = ms.run(f.model, f.ids, capture=[z], interventions=[Zero(z, heads=[1])]).cache[z]
    assert torch.all(got[:, :, 1] == 0)
    others = [h for h in range(f.model.n_heads) if h != 1]
    assert torch.equal(got[:, :, others], clean[:, :, others])
    # the same with the head in the site
    got2 = ms.run(f.model, f.ids, capture=[z], interventions=[Zero("blocks.0.attn.hook_z[1]")]).cache[z]
    assert torch.equal(got2, got)


@pytest.mark.parametrize("name", ["blocks.0.attn.hook_pattern[2]", "blocks.1.attn.hook_z[2]",
                                  "blocks.0.attn.hook_q[1]"])
def test_head_site_takes_values_shaped_like_that_head(gpt2: Fam, name: str):
    """cache["...[h]"] is one head's slice; patching "...[h]" with it must mean the same as patching the
    whole site with heads=[h]. The batch of 4 equals the head count, so a value broadcast against the
    whole activation would align its batch axis with the head axis and silently do something else."""
    ids, other = make_ids(batch=4, seed=1), make_ids(batch=4, seed=2)
    site = Site.parse(name)
    src = ms.run(gpt2.model, other, capture=[site.whole]).cache
    ref = ms.run(gpt2.model, ids, capture=[site.whole],
                 interventions=[Patch(site.whole, value=src[site.whole], heads=[site.head])])
    got = ms.run(gpt2.model, ids, capture=[site.whole], interventions=[Patch(name, value=src[name])])
    assert torch.equal(got.logits, ref.logits)
    assert torch.equal(got.cache[site], src[site])
    assert not torch.equal(got.logits, bare(gpt2.hf, ids).logits)
    # Mean and Resample of one head's activations work the same way
    mean = ms.run(gpt2.model, ids, interventions=[Mean.of(name, src[name])]).logits
    ref_mean = ms.run(gpt2.model, ids, interventions=[Mean(site.whole, mean=src[site.whole].mean(0),
                                                           heads=[site.head])]).logits
    assert torch.equal(mean, ref_mean)
    rs = ms.run(gpt2.model, ids, interventions=[Resample(name, source=src[name], seed=3)]).logits
    ref_rs = ms.run(gpt2.model, ids, interventions=[Resample(site.whole, source=src[site.whole], seed=3,
                                                             heads=[site.head])]).logits
    assert torch.equal(rs, ref_rs)
    # averaged over positions: one row per head slice, (1, kpos) for a pattern, (1, d_head) for z
    iv = Mean.of(name, src[name], over_positions=True)
    torch.testing.assert_close(iv.mean, src[name].mean(0).mean(0, keepdim=True))
    iv_whole = Mean.of(site.whole, src[site.whole], over_positions=True, heads=[site.head])
    torch.testing.assert_close(ms.run(gpt2.model, ids, interventions=[iv]).logits,
                               ms.run(gpt2.model, ids, interventions=[iv_whole]).logits, atol=1e-6, rtol=0)
    # a whole-site value still works with a head-restricted site
    whole = ms.run(gpt2.model, ids, interventions=[Patch(name, value=src[site.whole])]).logits
    assert torch.equal(whole, ref.logits)


def test_head_site_value_of_wrong_shape(gpt2: Fam):
    with pytest.raises(InterventionError) as e:
        ms.run(gpt2.model, gpt2.ids, interventions=[Patch("blocks.0.attn.hook_z[1]", value=torch.zeros(2, 5, 16))])
    msg = str(e.value)
    assert "(2, 5, 16)" in msg and "(2, 7, 16)" in msg and "blocks.0.attn.hook_z" in msg


def test_zero_one_kv_head_under_gqa(llama: Fam):
    k = Site(Kind.K, 1)
    clean = ms.run(llama.model, llama.ids, capture=[k]).cache[k]
    got = ms.run(llama.model, llama.ids, capture=[k], interventions=[Zero(k, heads=[1])]).cache[k]
    assert got.shape[2] == 2
    assert torch.all(got[:, :, 1] == 0) and torch.equal(got[:, :, 0], clean[:, :, 0])


def test_zero_positions_leaves_earlier_logits(causal_fam: Fam):
    f = causal_fam
    clean = bare(f.hf, f.ids).logits
    res = ms.run(f.model, f.ids, interventions=[Zero(Site(Kind.RESID_PRE, 0), positions=[2])])
    assert torch.equal(res.logits[:, :2], clean[:, :2])
    assert not torch.allclose(res.logits[:, 2:], clean[:, 2:])


def test_positions_select_query_rows_of_pattern(gpt2: Fam):
    p = Site(Kind.PATTERN, 0)
    clean = ms.run(gpt2.model, gpt2.ids, capture=[p]).cache[p]
    got = ms.run(gpt2.model, gpt2.ids, capture=[p], interventions=[Zero(p, positions=[3], heads=[0, 2])]).cache[p]
    assert torch.all(got[:, [0, 2], 3] == 0)
    mask = torch.ones_like(got, dtype=torch.bool)
    mask[:, [0, 2], 3] = False
    assert torch.equal(got[mask], clean[mask])


def test_units_and_rows_and_slices(gpt2: Fam):
    post = Site(Kind.MLP_POST, 0)
    clean = ms.run(gpt2.model, gpt2.ids, capture=[post])
    res = ms.run(gpt2.model, gpt2.ids, capture=[post],
                 interventions=[Zero(post, units=[3, 5], rows=[1], positions=slice(0, 4))])
    got, ref = res.cache[post], clean.cache[post]
    assert torch.all(got[1, :4][:, [3, 5]] == 0)
    mask = torch.ones_like(got, dtype=torch.bool)
    mask[1, :4, 3] = mask[1, :4, 5] = False
    assert torch.equal(got[mask], ref[mask])
    # row 0 is untouched end to end
    assert torch.equal(res.logits[0], clean.logits[0])
    assert not torch.allclose(res.logits[1], clean.logits[1])


def test_boolean_masks_select_where_true(gpt2: Fam):
    ids = make_ids(batch=3)
    s = Site(Kind.RESID_PRE, 1)
    clean = ms.run(gpt2.model, ids, capture=[s]).cache[s]
    for rows in ([True, False, True], torch.tensor([True, False, True])):
        got = ms.run(gpt2.model, ids, capture=[s], interventions=[Zero(s, rows=rows)]).cache[s]
        assert torch.all(got[[0, 2]] == 0) and torch.equal(got[1], clean[1])
    pos = torch.arange(7) >= 5
    got = ms.run(gpt2.model, ids, capture=[s], interventions=[Zero(s, positions=pos)]).cache[s]
    assert torch.all(got[:, 5:] == 0) and torch.equal(got[:, :5], clean[:, :5])
    with pytest.raises(InterventionError, match="boolean mask"):
        ms.run(gpt2.model, ids, interventions=[Zero(s, rows=[True, False])])


# --- (d) per-row interventions in one batch ---------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_batched_rows_equal_single_runs(name: str):
    f = make_family(name)
    ids = make_ids(batch=4, seed=21)
    z, mlp, resid = Site(Kind.Z, 1), Site(Kind.MLP_OUT, 0), Site(Kind.RESID_MID, 1)
    vec = torch.randn(64, generator=torch.Generator().manual_seed(2))
    per_row = [  # row -> interventions without the row restriction
        [Zero(z, heads=[0])],
        [Zero(z, heads=[1, 3]), Scale(mlp, factor=-2.0, positions=[1, 4])],
        [Zero(z, heads=[2]), Add(resid, vector=vec)],
        [Patch(resid, value=vec, positions=[0]), Zero(mlp, units=list(range(10)))],
    ]
    batched = []
    for row, ivs in enumerate(per_row):
        for iv in ivs:
            kw = {n: getattr(iv, n) for n in ("positions", "heads", "units")}
            extra = {k: getattr(iv, k) for k in ("factor", "vector", "value") if hasattr(iv, k)}
            batched.append(type(iv)(iv.site, rows=[row], **kw, **extra))
    out = ms.run(f.model, ids, interventions=batched).logits
    clean = bare(f.hf, ids).logits
    for row, ivs in enumerate(per_row):
        single = ms.run(f.model, ids[row:row + 1], interventions=ivs).logits
        torch.testing.assert_close(out[row], single[0], atol=1e-5, rtol=0)
        assert not torch.allclose(out[row], clean[row], atol=1e-4)


def test_bert_attn_out_sees_a_result_intervention():
    """BERT's attn_out and attn.result tap the same module (the output dense): the captured attn_out
    must be the rebuilt output, in every process (not depending on set order / hash seed)."""
    f = make_family("bert")
    w = f.model.weights()
    for layer in range(f.model.n_layers):
        r, a = Site(Kind.RESULT, layer), Site(Kind.ATTN_OUT, layer)
        res = ms.run(f.model, f.ids, capture=[a, r, Site(Kind.Z, layer)], interventions=[Zero(r, heads=[1])])
        assert torch.all(res.cache[r][:, :, 1] == 0)
        torch.testing.assert_close(res.cache[r].sum(2) + w.b_O[layer], res.cache[a], atol=1e-5, rtol=0)
        # and the model ran on that output: the same as zeroing head 1's z by hand
        dense = f.model.blocks[layer].attention.output.dense

        def zero_head(_m, args):
            z = args[0].clone()
            z[..., 16:32] = 0
            return (z,)

        h = dense.register_forward_pre_hook(zero_head)
        try:
            manual = bare(f.hf, f.ids).last_hidden_state
        finally:
            h.remove()
        torch.testing.assert_close(res.output.last_hidden_state, manual, atol=1e-5, rtol=0)


def test_taps_are_installed_in_forward_order(causal_fam: Fam):
    f = causal_fam
    calls = []
    orig = f.model.tap
    f.model.tap = lambda s: (calls.append(s), orig(s))[1]
    try:
        sites = f.model.sites()
        ms.run(f.model, f.ids, capture=sites[::-1], interventions=[Scale(s, factor=1.0) for s in sites[::3]])
    finally:
        del f.model.tap
    assert calls == sites


# --- (e) hooks never outlive a run ------------------------------------------------------------------

@pytest.mark.parametrize("where", [Site(Kind.PATTERN, 0), Site(Kind.MLP_OUT, 1), Site(Kind.RESULT, 0),
                                   Site(Kind.RESID_MID, 1)])
def test_hooks_removed_after_exception(causal_fam: Fam, where: Site):
    f = causal_fam
    if where not in f.model.sites():
        pytest.skip(f"{f.name} has no {where.name}")
    ref = bare(f.hf, f.ids).logits

    def boom(x, ctx):
        raise RuntimeError("boom from Replace")

    with pytest.raises(RuntimeError, match="boom from Replace"):
        ms.run(f.model, f.ids, capture=f.model.sites(), interventions=[Replace(where, fn=boom)])
    assert_no_hooks(f.hf)
    assert f.hf.config._attn_implementation == "eager"
    assert not hf_attention._ACTIVE
    assert torch.equal(bare(f.hf, f.ids).logits, ref)
    assert torch.equal(ms.run(f.model, f.ids).logits, ref)


def test_hooks_removed_after_shape_error_and_after_success(gpt2: Fam):
    with pytest.raises(InterventionError):
        ms.run(gpt2.model, gpt2.ids, capture=[Site(Kind.Z, 0)],
               interventions=[Patch(Site(Kind.Q, 1), value=torch.zeros(3))])
    assert_no_hooks(gpt2.hf)
    assert not hf_attention._ACTIVE and gpt2.hf.config._attn_implementation == "eager"
    ms.run(gpt2.model, gpt2.ids, capture=gpt2.model.sites(), interventions=[Zero(Site(Kind.Z, 0), heads=[1])])
    assert_no_hooks(gpt2.hf)
    assert not hf_attention._ACTIVE and gpt2.hf.config._attn_implementation == "eager"


# --- (f) documented errors -----------------------------------------------------------------------------

def test_bad_site_name_suggests_nearest(gpt2: Fam):
    with pytest.raises(SiteError) as e:
        ms.run(gpt2.model, gpt2.ids, capture=["blocks.0.attn.hook_zz"])
    assert "blocks.0.attn.hook_z" in suggestions(str(e.value))
    with pytest.raises(SiteError) as e:
        ms.run(gpt2.model, gpt2.ids, capture=["blocks.1.hook_mlp_outt"])
    assert "blocks.1.hook_mlp_out" in suggestions(str(e.value))
    with pytest.raises(SiteError) as e:
        gpt2.model.check("attn.patern.1")
    assert "attn.pattern.1" in suggestions(str(e.value))
    # misspelt intervention sites fail when the run checks them against the model
    with pytest.raises(SiteError) as e:
        ms.run(gpt2.model, gpt2.ids, interventions=[Zero("blocks.1.hook_mlp_outt")])
    assert "blocks.1.hook_mlp_out" in suggestions(str(e.value))
    assert_no_hooks(gpt2.hf)
    assert isinstance(e.value, KeyError)  # SiteError is also a KeyError


def test_layer_out_of_range(gpt2: Fam):
    with pytest.raises(SiteError, match="does not exist") as e:
        ms.run(gpt2.model, gpt2.ids, capture=["blocks.7.hook_resid_post"])
    assert "nearest valid names" in str(e.value)
    with pytest.raises(SiteError):
        ms.run(gpt2.model, gpt2.ids, capture=[Site(Kind.RESID_POST, 2)])
    with pytest.raises(SiteError):
        ms.run(gpt2.model, gpt2.ids, interventions=[Zero(Site(Kind.MLP_OUT, 2))])


def test_patch_wrong_shape_names_both_shapes_and_site(gpt2: Fam):
    site = Site(Kind.RESID_PRE, 1)
    with pytest.raises(InterventionError) as e:
        ms.run(gpt2.model, gpt2.ids, interventions=[Patch(site, value=torch.zeros(2, 5, 64))])
    msg = str(e.value)
    assert "(2, 5, 64)" in msg and "(2, 7, 64)" in msg and site.name in msg


def test_heads_out_of_range(gpt2: Fam, llama: Fam):
    with pytest.raises(InterventionError, match=r"0\.\.3") as e:
        ms.run(gpt2.model, gpt2.ids, interventions=[Zero(Site(Kind.Z, 0), heads=[99])])
    assert "99" in str(e.value)
    # keys under grouped-query attention have n_kv_heads heads
    with pytest.raises(InterventionError, match=r"0\.\.1"):
        ms.run(llama.model, llama.ids, interventions=[Zero(Site(Kind.K, 0), heads=[2])])
    with pytest.raises(InterventionError, match=r"0\.\.3"):
        ms.run(gpt2.model, gpt2.ids, interventions=[Zero("blocks.0.attn.hook_z[4]")])


def test_head_restricted_site_out_of_range(gpt2: Fam, llama: Fam):
    with pytest.raises(SiteError, match=r"head 4 out of range.*0\.\.3"):
        ms.run(gpt2.model, gpt2.ids, capture=["blocks.0.attn.hook_z[4]"])
    with pytest.raises(SiteError, match=r"0\.\.1"):
        ms.run(llama.model, llama.ids, capture=[Site(Kind.V, 1, head=2)])
    with pytest.raises(SiteError):
        gpt2.model.check(Site(Kind.PATTERN, 1, head=-1))
    # a head on a kind without heads cannot even be built
    with pytest.raises(SiteError, match="no head axis"):
        Site(Kind.RESID_PRE, 0, head=1)


def test_restriction_on_missing_axis():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(InterventionError, match="positions"):
        ms.run(net, torch.randn(3, 4), interventions=[Zero(Site.module("1"), positions=[0])])
    assert_no_hooks(net)


def test_units_on_pattern_and_heads_on_resid(gpt2: Fam):
    with pytest.raises(InterventionError, match="units"):
        ms.run(gpt2.model, gpt2.ids, interventions=[Zero(Site(Kind.PATTERN, 0), units=[1])])
    with pytest.raises(InterventionError, match="heads"):
        ms.run(gpt2.model, gpt2.ids, interventions=[Zero(Site(Kind.RESID_PRE, 0), heads=[1])])
    with pytest.raises(InterventionError, match="not both"):
        Zero("blocks.0.attn.hook_z[1]", heads=[2])
    with pytest.raises(InterventionError, match="out of range"):
        ms.run(gpt2.model, gpt2.ids, interventions=[Zero(Site(Kind.RESID_PRE, 0), positions=[7])])
    assert_no_hooks(gpt2.hf)


def test_interventions_need_their_values():
    site = Site(Kind.RESID_PRE, 0)
    for make in (lambda: Patch(site), lambda: Mean(site), lambda: Resample(site), lambda: Add(site),
                 lambda: Replace(site), lambda: Replace(site, fn=3)):
        with pytest.raises(InterventionError):
            make()


def test_not_an_intervention(gpt2: Fam):
    with pytest.raises(InterventionError, match="expected an Intervention"):
        ms.run(gpt2.model, gpt2.ids, interventions=[Site(Kind.RESID_PRE, 0)])
