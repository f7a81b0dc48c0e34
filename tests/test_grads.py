"""Gradients at sites from one backward pass, against hand-written autograd, and attribution sanity."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import Kind, Patch, Site, SiteError

from conftest import Fam, assert_no_hooks, make_family, make_ids

TOKEN = 5


def metric(out) -> torch.Tensor:
    return out.logits[:, -1, TOKEN].sum()


def _manual_grads(f: Fam, frozen: bool) -> dict[Site, torch.Tensor]:
    """Gradients of `metric` by plain autograd: forward hooks that retain_grad, one backward."""
    hf = f.hf
    blocks = f.model.blocks
    out_proj = f.model.spec.out_proj
    acts: dict[Site, torch.Tensor] = {}
    handles = []

    def keep(site, index=None):
        def hook(_m, _a, out):
            t = out if index is None else out[index]
            t.retain_grad()
            acts[site] = t
        return hook

    def keep_input(site):
        def hook(_m, args):
            args[0].retain_grad()
            acts[site] = args[0]
        return hook

    if frozen:  # switch gradients on at the embedding, as mechscope does for frozen models
        emb = hf.get_input_embeddings()
        handles.append(emb.register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True)))
    handles.append(blocks[0].register_forward_hook(keep(Site(Kind.RESID_POST, 0))))
    attn_out = f.model.spec.block[Kind.ATTN_OUT]  # the attention module's output, or a post-norm's (Gemma)
    handles.append(blocks[1].get_submodule(attn_out.path).register_forward_hook(keep(Site(Kind.ATTN_OUT, 1),
                                                                                     attn_out.index)))
    handles.append(blocks[0].get_submodule(out_proj).register_forward_pre_hook(keep_input(Site(Kind.Z, 0))))
    handles.append(blocks[1].get_submodule(out_proj).register_forward_hook(keep(Site(Kind.RESULT, 1))))
    try:
        out = hf(f.ids, output_attentions=True)
        pattern = out.attentions[1]
        pattern.retain_grad()
        metric(out).backward()
    finally:
        for h in handles:
            h.remove()
    m = f.model
    grads = {s: t.grad for s, t in acts.items()}
    grads[Site(Kind.Z, 0)] = grads[Site(Kind.Z, 0)].unflatten(-1, (m.n_heads, m.d_head))
    # every head's result feeds the output projection's sum: its gradient is the output's, per head
    grads[Site(Kind.RESULT, 1)] = grads[Site(Kind.RESULT, 1)].unsqueeze(2).expand(-1, -1, m.n_heads, -1)
    grads[Site(Kind.PATTERN, 1)] = pattern.grad
    return grads


SITES = [Site(Kind.RESID_POST, 0), Site(Kind.ATTN_OUT, 1), Site(Kind.Z, 0), Site(Kind.RESULT, 1),
         Site(Kind.PATTERN, 1)]


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "neox_parallel", "qwen3_gqa", "gemma2_gqa", "gemma3_mqa"])
def test_grads_match_manual_autograd(name: str, frozen: bool):
    f = make_family(name)
    if frozen:
        f.hf.requires_grad_(False)
    res = ms.run(f.model, f.ids, capture=SITES, grad=metric)
    assert_no_hooks(f.hf)
    manual = _manual_grads(f, frozen)
    assert res.grads is not None and set(res.grads) == set(SITES)
    for s in SITES:
        torch.testing.assert_close(res.grads[s], manual[s], atol=1e-5, rtol=1e-4, msg=lambda m: f"{s.name}: {m}")
        assert res.grads[s].abs().sum() > 0, f"{s.name}: zero gradient"
        assert res.grads[s].shape == res.cache[s].shape
        assert not res.cache[s].requires_grad
    torch.testing.assert_close(res.metric, metric(f.hf(f.ids)).detach())
    # the logits equal the bare forward's
    with torch.no_grad():
        assert torch.equal(res.logits, f.hf(f.ids).logits)
    if frozen:
        assert all(p.grad is None for p in f.hf.parameters())


def test_head_restricted_grads_are_slices(gpt2: Fam):
    res = ms.run(gpt2.model, gpt2.ids, capture=["blocks.0.attn.hook_z", "blocks.0.attn.hook_z[2]"], grad=metric)
    assert torch.equal(res.grads["blocks.0.attn.hook_z[2]"], res.grads["blocks.0.attn.hook_z"][:, :, 2])


def test_grad_runs_leave_outputs_bit_identical(causal_fam: Fam):
    """Capturing every site with gradients on (track_grad, or grad=) changes no output bit."""
    f = causal_fam
    with torch.no_grad():
        ref = f.hf(f.ids).logits
    sites = f.model.sites()
    assert torch.equal(ms.run(f.model, f.ids, capture=sites, track_grad=True).logits, ref)
    res = ms.run(f.model, f.ids, capture=[s for s in sites if s.kind is not Kind.POS_EMBED], grad=metric)
    assert torch.equal(res.logits, ref)
    assert_no_hooks(f.hf)


def test_grads_do_not_flow_to_later_positions(gpt2: Fam):
    """Causality: a metric at position 2 gets no gradient from later positions."""
    res = ms.run(gpt2.model, gpt2.ids, capture=[Site(Kind.RESID_PRE, 1)],
                 grad=lambda out: out.logits[:, 2, TOKEN].sum())
    g = res.grads[Site(Kind.RESID_PRE, 1)]
    assert torch.all(g[:, 3:] == 0) and g[:, :3].abs().sum() > 0


def test_no_gradient_reaches_error():
    f = make_family("gpt2")
    f.hf.requires_grad_(False)
    # learned position embeddings do not depend on the tokens, so nothing makes them require grad
    with pytest.raises(SiteError, match="no gradient reaches"):
        ms.run(f.model, f.ids, capture=[Site(Kind.POS_EMBED)], grad=metric)
    assert_no_hooks(f.hf)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("site", [Site(Kind.LN_FINAL), Site(Kind.LOGITS)])
def test_first_order_attribution_is_exact_where_the_metric_is_linear(name: str, site: Site):
    """logits = ln_final @ W_U (+ b_U): the metric is linear in ln_final and in logits, so
    grad . (patched - clean) predicts the patched change exactly."""
    f = make_family(name)
    clean = ms.run(f.model, f.ids, capture=[site], grad=metric)
    corrupt = ms.run(f.model, make_ids(seed=13), capture=[site]).cache[site]
    predicted = (clean.grads[site] * (corrupt - clean.cache[site])).sum()
    patched = ms.run(f.model, f.ids, interventions=[Patch(site, value=corrupt)])
    actual = metric(patched.output) - clean.metric
    assert actual.abs() > 1e-3, "the patch should move the metric"
    torch.testing.assert_close(predicted, actual, atol=1e-4, rtol=0)


def test_first_order_attribution_is_not_exact_through_a_norm(gpt2: Fam):
    """Control for the test above: through ln_final the metric is not linear, so the same
    prediction at the last resid_post is off (the check above would catch a wrong gradient)."""
    site = Site(Kind.RESID_POST, 1)
    clean = ms.run(gpt2.model, gpt2.ids, capture=[site], grad=metric)
    corrupt = ms.run(gpt2.model, make_ids(seed=13), capture=[site]).cache[site]
    predicted = (clean.grads[site] * (corrupt - clean.cache[site])).sum()
    actual = metric(ms.run(gpt2.model, gpt2.ids, interventions=[Patch(site, value=corrupt)]).output) - clean.metric
    assert (predicted - actual).abs() > 1e-4


def test_track_grad_keeps_graph_and_default_does_not(gpt2: Fam):
    res = ms.run(gpt2.model, gpt2.ids, track_grad=True)
    assert res.logits.requires_grad
    assert not ms.run(gpt2.model, gpt2.ids).logits.requires_grad
    assert not ms.run(gpt2.model, gpt2.ids, capture=[Site(Kind.RESID_PRE, 0)]).logits.requires_grad


def test_grad_with_intervention_differentiates_the_patched_run(gpt2: Fam):
    site, z = Site(Kind.MLP_OUT, 0), Site(Kind.Z, 1)
    res = ms.run(gpt2.model, gpt2.ids, capture=[site], interventions=[ms.Zero(z, heads=[0])], grad=metric)
    acts = {}

    def zero_head(_m, args):
        x = args[0].clone()
        x[..., :16] = 0
        return (x,)

    def keep(_m, _a, out):
        out.retain_grad()
        acts["x"] = out

    hs = [gpt2.hf.transformer.h[1].attn.c_proj.register_forward_pre_hook(zero_head),
          gpt2.hf.transformer.h[0].mlp.register_forward_hook(keep)]
    try:
        metric(gpt2.hf(gpt2.ids)).backward()
    finally:
        for h in hs:
            h.remove()
    torch.testing.assert_close(res.grads[site], acts["x"].grad, atol=1e-5, rtol=1e-4)


def test_grad_without_captures_returns_the_metric(gpt2: Fam):
    res = ms.run(gpt2.model, gpt2.ids, grad=metric)
    assert res.grads is not None and len(res.grads) == 0
    with torch.no_grad():
        torch.testing.assert_close(res.metric, metric(gpt2.hf(gpt2.ids)), atol=0, rtol=0)
    assert not res.metric.requires_grad
    assert_no_hooks(gpt2.hf)


def test_head_result_grads_stay_finite_where_a_head_overflows():
    """float16 GPT-2 whose layer-1 heads 0 and 1 write +-1e5 (beyond float16's range, cancelling in
    the fused output projection): the per-head results hold +-inf, the model's own output is finite.
    A pure attn.result capture with gradients keeps the output bit for bit and its gradients finite
    and equal to plain autograd's (each head's result gets the projection output's gradient)."""
    from conftest import build

    hf = build("gpt2")
    d, dh = 64, 16
    att = hf.transformer.h[1].attn
    with torch.no_grad():
        w, b = att.c_attn.weight, att.c_attn.bias  # (d_model, q | k | v), heads in order in each part
        for part in range(3):  # head 1 attends and reads exactly as head 0
            w[:, part * d + dh:part * d + 2 * dh] = w[:, part * d:part * d + dh]
            b[part * d + dh:part * d + 2 * dh] = b[part * d:part * d + dh]
        w[:, 2 * d:2 * d + 2 * dh] *= 100  # large values
        att.c_proj.weight[:dh] *= 1e5  # head 0's W_O rows ...
        att.c_proj.weight[dh:2 * dh] = -att.c_proj.weight[:dh]  # ... and head 1's cancel them
    hf = hf.half()
    f = Fam("gpt2", hf, ms.wrap(hf), make_ids())
    sites = [Site(Kind.RESULT, 1), Site(Kind.Z, 1)]
    res = ms.run(f.model, f.ids, capture=sites, grad=lambda out: out.logits[:, -1, TOKEN].float().sum())
    ref = hf(f.ids).logits
    assert torch.isfinite(ref).all()
    assert torch.isinf(res.cache[Site(Kind.RESULT, 1)]).any(), "the setup must overflow a head's result"
    assert torch.equal(res.logits, ref.detach())
    for s in sites:
        assert torch.isfinite(res.grads[s]).all(), f"non-finite gradient at {s.name}"
    # plain autograd: the output projection's output gradient, the same for every head
    kept = {}
    h = att.c_proj.register_forward_hook(lambda m, a, o: (o.retain_grad(), kept.setdefault("out", o))[0])
    try:
        hf(f.ids).logits[:, -1, TOKEN].float().sum().backward()
    finally:
        h.remove()
    want = kept["out"].grad.unsqueeze(2).expand(-1, -1, f.model.n_heads, -1)
    assert torch.equal(res.grads[Site(Kind.RESULT, 1)], want)


def test_value_of_keeps_values_routes_gradients_and_allows_in_place_changes():
    """`value_of(value, route)`: value's numbers (inf and all), route's gradient, and a tensor of its
    own that later code may modify in place (as some model code does to a module's output)."""
    from mechscope.core.taps import value_of

    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    value = torch.tensor([float("inf"), -1.0, 0.5])
    route = torch.stack([a[0] + float("inf"), a[1] * 2, a[2] * 3])  # route[0] is inf: route - route is NaN
    y = value_of(value, route)
    assert torch.equal(y, value)
    y.mul_(2.0)
    y.sum().backward()
    assert torch.equal(a.grad, torch.tensor([2.0, 4.0, 6.0]))
