"""Site values, name round trips, and the Cache: lookups, head slices, holding only what was asked."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mechscope as ms
from mechscope import Cache, Kind, Site, SiteError

from conftest import FAMILIES, Fam, make_family, suggestions


def test_site_is_frozen_and_hashable():
    s = Site(Kind.Z, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.layer = 4  # type: ignore[misc]
    assert Site(Kind.Z, 3) == s and hash(Site(Kind.Z, 3)) == hash(s)
    assert Site(Kind.Z, 3, head=1) != s and s.with_head(1) == Site(Kind.Z, 3, 1)
    assert s.with_head(1).whole == s
    d = {s: 1, Site(Kind.Z, 3, 1): 2, Site("attn.z", 3): 3}  # the string value of a Kind is accepted
    assert len(d) == 2 and d[s] == 3
    assert Site(Kind.Z, 3).kind is Kind.Z and isinstance(Site("attn.z", 3).kind, Kind)
    assert sorted([Site(Kind.RESID_POST, 2), Site(Kind.RESID_POST, 0)])[0].layer == 0


def test_site_validation():
    with pytest.raises(SiteError, match="needs a layer"):
        Site(Kind.RESID_PRE)
    with pytest.raises(SiteError, match="has no layer"):
        Site(Kind.EMBED, 0)
    with pytest.raises(SiteError, match="no head axis"):
        Site(Kind.MLP_OUT, 0, head=2)
    with pytest.raises(SiteError, match="path"):
        Site(Kind.MODULE)
    with pytest.raises(ValueError):
        Site("no_such_kind", 0)


def test_names():
    assert Site(Kind.Z, 3).name == "blocks.3.attn.hook_z"
    assert Site(Kind.Z, 3, 5).name == "blocks.3.attn.hook_z[5]"
    assert Site(Kind.Z, 3, 5).short == "attn.z.3.h5"
    assert Site(Kind.RESID_POST, 11).short == "resid_post.11"
    assert Site(Kind.LN1, 0).name == "blocks.0.ln1.hook_normalized"
    assert Site(Kind.LN_FINAL).name == "ln_final.hook_normalized"
    assert Site(Kind.LOGITS).name == "logits" and Site.parse("unembed") == Site(Kind.LOGITS)
    assert Site.parse("blocks.3.attn.hook_pattern[head=2]") == Site(Kind.PATTERN, 3, 2)
    assert Site.parse("  resid_mid.4 ") == Site(Kind.RESID_MID, 4)
    assert Site.parse("hook_embed") == Site(Kind.EMBED) == Site.parse("embed")
    assert Site.module("features.3").name == "features.3"
    s = Site(Kind.MLP_POST, 1)
    assert Site.parse(s) is s


@pytest.mark.parametrize("name", FAMILIES)
def test_every_site_round_trips(name: str):
    m = make_family(name).model
    sites = m.sites()
    assert len(set(sites)) == len(sites)
    for s in sites:
        variants = [s] + ([s.with_head(0), s.with_head(m.n_heads_at(s) - 1)] if s.per_head else [])
        for v in variants:
            assert Site.parse(v.name) == v, v.name
            assert Site.parse(v.short) == v, v.short
            assert Site.parse(v.name, sites) == v
            assert m.check(v.name) == v and m.check(v.short) == v


def test_unknown_names():
    with pytest.raises(SiteError) as e:
        Site.parse("blocks.0.attn.hook_zz")
    assert "blocks.0.attn.hook_z" in suggestions(str(e.value))
    with pytest.raises(SiteError):
        Site.parse("resid_pre")  # a per-layer kind needs a layer
    with pytest.raises(SiteError):
        Site.parse("blocks.0.hook_embed")
    assert str(SiteError("plain")) == "plain"  # no KeyError quotes


# --- Cache ----------------------------------------------------------------------------------------

def test_cache_lookups_and_head_slices(gpt2: Fam):
    z, pat = Site(Kind.Z, 0), Site(Kind.PATTERN, 1)
    res = ms.run(gpt2.model, gpt2.ids, capture=[z, "blocks.1.attn.hook_pattern"])
    c = res.cache
    assert set(c) == {z, pat} and len(c) == 2
    whole = c[z]
    assert whole.shape == (2, 7, 4, 16)
    for key in ("blocks.0.attn.hook_z", "attn.z.0", z):
        assert c[key] is whole
    assert torch.equal(c["blocks.0.attn.hook_z[2]"], whole[:, :, 2])
    assert torch.equal(c["attn.z.0.h2"], whole[:, :, 2])
    assert torch.equal(c[Site(Kind.Z, 0, 3)], whole[:, :, 3])
    assert torch.equal(c["blocks.1.attn.hook_pattern[1]"], c[pat][:, 1])  # patterns: head is axis 1
    assert "blocks.0.attn.hook_z[2]" in c and z in c and Site(Kind.Z, 0, 1) in c
    assert "blocks.1.attn.hook_z" not in c and Site(Kind.Q, 0) not in c
    with pytest.raises(SiteError, match="was not captured") as e:
        c["blocks.0.hook_resid_pre"]
    assert "blocks.0.attn.hook_z" in str(e.value)  # the error lists what was captured
    assert "attn.z.0" in repr(c) and "<table>" in c._repr_html_()


def test_cache_holds_only_what_was_asked(gpt2: Fam):
    res = ms.run(gpt2.model, gpt2.ids, capture=["blocks.0.attn.hook_z[2]", "resid_post.1"])
    c = res.cache
    assert set(c) == {Site(Kind.Z, 0, 2), Site(Kind.RESID_POST, 1)}
    assert c["blocks.0.attn.hook_z[2]"].shape == (2, 7, 16)
    with pytest.raises(SiteError):
        c["blocks.0.attn.hook_z"]  # the whole site was not asked for
    full = ms.run(gpt2.model, gpt2.ids, capture=["blocks.0.attn.hook_z"]).cache["blocks.0.attn.hook_z"]
    assert torch.equal(c["blocks.0.attn.hook_z[2]"], full[:, :, 2])
    # captures are plain tensors, detached from any graph
    assert not c["resid_post.1"].requires_grad


def test_cache_to_and_mapping():
    t = torch.arange(6.0).reshape(1, 2, 3)
    c = Cache({Site(Kind.RESID_PRE, 0): t})
    c2 = c.to("cpu")
    assert isinstance(c2, Cache) and torch.equal(c2["resid_pre.0"], t)
    assert dict(c) == {Site(Kind.RESID_PRE, 0): t}
    assert c.nbytes == 6 * 4


def test_capturing_q_from_fused_qkv_does_not_keep_the_buffer(gpt2: Fam):
    q = Site(Kind.Q, 0)
    res = ms.run(gpt2.model, gpt2.ids, capture=[q])
    t = res.cache[q]
    asked = t.numel() * t.element_size()
    assert asked == 2 * 7 * 64 * 4
    # GPT-2 computes q, k and v in one (batch, pos, 3*d_model) buffer; q alone is a third of it
    assert res.cache.nbytes <= 1.1 * asked
    # the value is still right
    full = ms.run(gpt2.model, gpt2.ids, capture=[q, Site(Kind.K, 0), Site(Kind.V, 0)]).cache
    assert torch.equal(full[q], t)
    # q, k and v together fill the fused buffer: no copy is needed, and none is made
    total = sum(full[s].numel() * full[s].element_size() for s in full)
    assert full.nbytes <= 1.1 * total


@pytest.mark.parametrize("name", ["blocks.1.attn.hook_pattern[3]", "blocks.0.attn.hook_z[1]",
                                  "blocks.0.attn.hook_q[2]"])
def test_capturing_one_head_keeps_only_that_head(gpt2: Fam, name: str):
    res = ms.run(gpt2.model, gpt2.ids, capture=[name])
    t = res.cache[name]
    asked = t.numel() * t.element_size()
    assert res.cache.nbytes <= 1.1 * asked, f"{res.cache.nbytes} bytes kept for {asked} asked"
    whole = Site.parse(name).whole
    ref = ms.run(gpt2.model, gpt2.ids, capture=[whole]).cache[whole]
    assert torch.equal(t, ref.select(whole.layout.head, Site.parse(name).head))
    # asking for the whole site and one head keeps one copy: the head is a view of the whole
    both = ms.run(gpt2.model, gpt2.ids, capture=[whole, name]).cache
    assert both.nbytes == both[whole].numel() * both[whole].element_size()
    assert torch.equal(both[name], t)
