"""Layer-norm scale sites (ln1.scale, ln2.scale, ln_final.scale): the divisor each norm divides a
position by, as TransformerLens's `hook_scale`.

Checked a second way for every supported family: the captured divisor equals a float64
recomputation from the norm's captured input and, with the model's own gains, reproduces the
norm's captured output; patching it with its own value changes no output bit; patching a divisor
from another run gives the norm output and logits computed by hand; gradients reach it and match a
hand-written backward; and models whose norms the adapter does not know offer no scale site.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import mechscope as ms
from mechscope import InterventionError, Kind, Patch, Scale, Site, SiteError
from mechscope.models.hf import Norm
from mechscope.models.tiny import TinyConfig, TinyModel, TinyTransformer

from conftest import CAUSAL, FAMILIES, Fam, bare, build, main_output, make_family, make_ids

SCALES = (Kind.LN1_SCALE, Kind.LN2_SCALE, Kind.LN_FINAL_SCALE)
CENTRED = {"gpt2", "neox_parallel", "neox_sequential", "bert"}  # LayerNorm; every other family: RMSNorm


# --- names ---------------------------------------------------------------------------------------

def test_transformerlens_names_parse_and_render():
    cases = {"blocks.3.ln1.hook_scale": (Site(Kind.LN1_SCALE, 3), "ln1.scale.3"),
             "blocks.0.ln2.hook_scale": (Site(Kind.LN2_SCALE, 0), "ln2.scale.0"),
             "ln_final.hook_scale": (Site(Kind.LN_FINAL_SCALE), "ln_final.scale")}
    for name, (site, short) in cases.items():
        assert Site.parse(name) == site
        assert site.name == name and site.short == short
        assert Site.parse(short) == site
    # distinct from the norms' outputs
    assert Site.parse("blocks.3.ln1.hook_normalized") == Site(Kind.LN1, 3)
    assert Site.parse("ln_final.hook_normalized") == Site(Kind.LN_FINAL)


def test_scale_sites_have_positions_only():
    site = Site(Kind.LN1_SCALE, 0)
    assert (site.layout.pos, site.layout.head, site.layout.unit) == (1, None, None)
    assert not site.per_head
    bad = {"needs a layer": (Kind.LN2_SCALE, None, None), "has no layer": (Kind.LN_FINAL_SCALE, 1, None),
           "no head axis": (Kind.LN1_SCALE, 0, 1)}
    for message, (kind, layer, head) in bad.items():
        with pytest.raises(SiteError, match=message):
            Site(kind, layer, head)
    f = make_family("gpt2")
    with pytest.raises(InterventionError, match="no units axis"):
        ms.run(f.model, f.ids, interventions=[Scale(site, factor=2.0, units=[0])])


# --- which models offer them ---------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_sites_lists_scales_of_every_norm(name: str):
    m = make_family(name).model
    sites = m.sites()
    got = [s for s in sites if s.kind in SCALES]
    want = [Site(k, layer) for layer in range(m.n_layers) for k in (Kind.LN1_SCALE, Kind.LN2_SCALE)]
    want += [] if name == "bert" else [Site(Kind.LN_FINAL_SCALE)]  # BERT has no final norm
    assert got == want
    # forward order: each scale just before its norm's output (so a capture there sees the new divisor)
    for kind, out in ((Kind.LN1_SCALE, Kind.LN1), (Kind.LN2_SCALE, Kind.LN2)):
        if Site(out, 0) in sites:
            assert sites.index(Site(out, 0)) == sites.index(Site(kind, 0)) + 1
    assert m.check("blocks.1.ln2.hook_scale") == Site(Kind.LN2_SCALE, 1)


def test_norms_the_adapter_does_not_know_offer_no_scale():
    class OtherNorm(nn.LayerNorm):  # a subclass may compute anything: not recognised
        pass

    hf = build("gpt2")
    for block in hf.transformer.h:
        block.ln_1 = OtherNorm(64)
    kinds = {s.kind for s in ms.wrap(hf).sites()}
    assert Kind.LN1_SCALE not in kinds and Kind.LN1 in kinds
    assert {Kind.LN2_SCALE, Kind.LN_FINAL_SCALE} <= kinds

    hf = build("llama_gqa")
    hf.model.norm = nn.LayerNorm(64)  # not a Llama RMSNorm
    sites = ms.wrap(hf).sites()
    assert Site(Kind.LN_FINAL_SCALE) not in sites and Site(Kind.LN_FINAL) in sites
    assert Site(Kind.LN1_SCALE, 0) in sites

    # the generic adapter: submodules only, whatever they are
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    assert all(s.kind is Kind.MODULE for s in ms.wrap(net).sites())
    with pytest.raises(SiteError):
        ms.wrap(net).check("blocks.0.ln1.hook_scale")


# --- capture ---------------------------------------------------------------------------------------

def _scale_sites(f: Fam) -> list[Site]:
    return [s for s in f.model.sites() if s.kind in SCALES]


def _norm_module(f: Fam, site: Site) -> nn.Module:
    m = f.model
    if site.layer is None:
        return m._resolve(m.spec.root[site.kind].path)
    where = m.spec.block[site.kind]
    assert isinstance(where, Norm)
    return m.blocks[site.layer].get_submodule(where.path)


def _eps(mod: nn.Module) -> float:
    return mod.eps if hasattr(mod, "eps") else mod.variance_epsilon


def _io(f: Fam, site: Site) -> tuple[list[Site], Callable, Site]:
    """The sites whose sum is the norm's input, a reader of its (gain, bias), and its output site."""
    L, last = site.layer, f.model.n_layers - 1
    if site.kind is Kind.LN_FINAL_SCALE:
        return [Site(Kind.RESID_POST, last)], lambda w: (w.lnf_w, w.lnf_b), Site(Kind.LN_FINAL)
    if site.kind is Kind.LN1_SCALE:
        gains = lambda w: (w.ln1_w[L], None if w.ln1_b is None else w.ln1_b[L])  # noqa: E731
        if f.name == "bert":  # post-LN: the norm after attention's residual add; its output is resid_mid
            return [Site(Kind.RESID_PRE, L), Site(Kind.ATTN_OUT, L)], gains, Site(Kind.RESID_MID, L)
        return [Site(Kind.RESID_PRE, L)], gains, Site(Kind.LN1, L)
    gains = lambda w: (w.ln2_w[L], None if w.ln2_b is None else w.ln2_b[L])  # noqa: E731
    if f.name == "bert":
        return [Site(Kind.RESID_MID, L), Site(Kind.MLP_OUT, L)], gains, Site(Kind.RESID_POST, L)
    return [Site(Kind.MLP_IN, L)], gains, Site(Kind.LN2, L)


def _divisor(x: torch.Tensor, eps: float, centred: bool) -> torch.Tensor:
    x = x.double()
    if centred:
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _normalise(x: torch.Tensor, d: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
               centred: bool) -> torch.Tensor:
    x = x.double()
    if centred:
        x = x - x.mean(-1, keepdim=True)
    y = x / d.double() * w.double()
    return y if b is None else y + b.double()


def _needed(f: Fam) -> list[Site]:
    sites = _scale_sites(f)
    return list(dict.fromkeys(sites + [s for site in sites for s in _io(f, site)[0] + [_io(f, site)[2]]]))


@pytest.mark.parametrize("name", FAMILIES)
def test_capture_is_the_divisor_the_norm_used(name: str):
    f = make_family(name)
    res = ms.run(f.model, f.ids, capture=_needed(f))
    assert torch.equal(main_output(res.output), main_output(bare(f.hf, f.ids)))
    w, centred = f.model.weights(), name in CENTRED
    for site in _scale_sites(f):
        got = res.cache[site]
        assert got.shape == (*f.ids.shape, 1) and got.dtype == torch.float32
        ins, gains, out = _io(f, site)
        x = sum(res.cache[s] for s in ins)
        d = _divisor(x, _eps(_norm_module(f, site)), centred)
        torch.testing.assert_close(got.double(), d, atol=1e-6, rtol=1e-6)
        # the norm's own output is its input over this divisor, times its gain, plus its bias
        torch.testing.assert_close(_normalise(x, got, *gains(w), centred), res.cache[out].double(),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_recomputed_output_is_the_modules(name: str):
    """The tap's recomputation of the norm, given the divisor of its own input, is the module's
    output up to float rounding (the path every changed divisor takes)."""
    f = make_family(name)
    x = torch.randn(2, 5, f.model.d_model, generator=torch.Generator().manual_seed(4)) * 3 + 0.5
    for site in _scale_sites(f):
        tap = f.model.tap(site)
        with torch.no_grad():
            torch.testing.assert_close(tap.output(x, tap.divisor(x)), tap.module(x), atol=2e-6, rtol=1e-6)


# --- patching -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_identity_patch_changes_nothing(name: str):
    f = make_family(name)
    sites = _scale_sites(f)
    clean = ms.run(f.model, f.ids, capture=sites)
    ref = main_output(clean.output)
    for site in sites:
        out = ms.run(f.model, f.ids, interventions=[Patch(site, value=clean.cache[site])]).output
        assert torch.equal(main_output(out), ref), site
    ivs = [Patch(s, value=clean.cache[s]) for s in sites] + [Scale(s, factor=1.0) for s in sites]
    assert torch.equal(main_output(ms.run(f.model, f.ids, interventions=ivs).output), ref)


@pytest.mark.parametrize("name", FAMILIES)
def test_patch_from_another_run_matches_hand_computation(name: str):
    """Freeze every norm's divisor at a clean run's (the first norm at two positions only) while
    the corrupted input flows: each norm's output is the corrupted input over the clean divisor."""
    f = make_family(name)
    sites = _scale_sites(f)
    corrupt_ids = make_ids(seed=9)
    clean = ms.run(f.model, f.ids, capture=sites).cache
    first, positions = sites[0], [1, 4]
    ivs = [Patch(first, value=clean[first], positions=positions)] + [Patch(s, value=clean[s]) for s in sites[1:]]
    plain = ms.run(f.model, corrupt_ids, capture=sites)
    res = ms.run(f.model, corrupt_ids, capture=_needed(f), interventions=ivs)
    w, centred = f.model.weights(), name in CENTRED
    for site in sites:
        want = clean[site].clone()
        if site == first:  # other positions keep the corrupted run's own divisor
            keep = [p for p in range(want.shape[1]) if p not in positions]
            want[:, keep] = plain.cache[site][:, keep]
        assert torch.equal(res.cache[site], want), site
        ins, gains, out = _io(f, site)
        x = sum(res.cache[s] for s in ins)
        torch.testing.assert_close(res.cache[out].double(), _normalise(x, want, *gains(w), centred),
                                   atol=1e-5, rtol=1e-5)
    assert not torch.allclose(main_output(res.output), main_output(plain.output))
    if f.causal:  # the logits are the frozen final norm's output through the unembedding
        y = _normalise(res.cache[Site(Kind.RESID_POST, f.model.n_layers - 1)], clean[Site(Kind.LN_FINAL_SCALE)],
                       w.lnf_w, w.lnf_b, centred)
        logits = y @ w.W_U.double() + (0 if w.b_U is None else w.b_U.double())
        torch.testing.assert_close(res.logits.double(), logits, atol=1e-4, rtol=1e-5)


def _tiny() -> tuple[TinyTransformer, TinyModel]:
    cfg = TinyConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=10, d_vocab=23,
                     act="gelu", layer_norm=True)
    torch.manual_seed(0)
    module = TinyTransformer(cfg).eval()
    with torch.no_grad():  # norms that are not the identity
        for n, p in module.named_parameters():
            if ".ln" in n or "ln_final" in n or n.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return module, ms.wrap(module)


def test_tiny_model_offers_scales_only_with_layer_norm():
    _, model = _tiny()
    kinds = {s.kind for s in model.sites()}
    assert set(SCALES) <= kinds
    plain = TinyTransformer(TinyConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=11))
    assert not set(SCALES) & {s.kind for s in ms.wrap(plain).sites()}


def test_tiny_model_block_patch_matches_hand_forward():
    """Block 1's attention-side divisor frozen at a clean run's at two positions: the rest of the
    forward pass by hand, with the model's own submodules, gives the same logits."""
    module, model = _tiny()
    clean_ids = torch.randint(0, 23, (3, 7), generator=torch.Generator().manual_seed(1))
    corrupt_ids = torch.randint(0, 23, (3, 7), generator=torch.Generator().manual_seed(2))
    site, positions = Site(Kind.LN1_SCALE, 1), [2, 5]
    s_clean = ms.run(model, clean_ids, capture=[site]).cache[site]
    res = ms.run(model, corrupt_ids, capture=[Site(Kind.RESID_PRE, 1), site],
                 interventions=[Patch(site, value=s_clean, positions=positions)])
    x = res.cache[Site(Kind.RESID_PRE, 1)]
    blk = module.blocks[1]
    with torch.no_grad():
        normed = blk.ln1(x)
        frozen = (x - x.mean(-1, keepdim=True)) / s_clean * blk.ln1.weight + blk.ln1.bias
        normed[:, positions] = frozen[:, positions]
        mid = x + blk.attn(normed)
        post = mid + blk.mlp(blk.ln2(mid))
        logits = module.unembed(module.ln_final(post))
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=0)
    assert not torch.allclose(res.logits, ms.run(model, corrupt_ids).logits, atol=1e-4)


def test_scale_intervention_divides_the_normalised_input():
    """Scale(ln_final.scale, 2) halves the normalised input before the gain and bias."""
    module, model = _tiny()
    ids = torch.randint(0, 23, (2, 6), generator=torch.Generator().manual_seed(3))
    last = Site(Kind.RESID_POST, 1)
    res = ms.run(model, ids, capture=[last], interventions=[Scale(Site(Kind.LN_FINAL_SCALE), factor=2.0)])
    x, ln = res.cache[last], module.ln_final
    with torch.no_grad():
        want = module.unembed(0.5 * (ln(x) - ln.bias) + ln.bias)
    torch.testing.assert_close(res.logits, want, atol=1e-5, rtol=0)


# --- gradients ----------------------------------------------------------------------------------

TOKEN = 7


def _metric(out) -> torch.Tensor:
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return logits[:, -1, TOKEN].sum()


@pytest.mark.parametrize("name", CAUSAL)
def test_gradients_reach_the_divisor(name: str):
    """The gradient at ln_final.scale is the hand-written backward of the final norm and the
    unembedding; capturing scales leaves the logits and the residual stream's gradients as they were."""
    f = make_family(name)
    last = Site(Kind.RESID_POST, f.model.n_layers - 1)
    sites = _scale_sites(f)
    res = ms.run(f.model, f.ids, capture=sites + [last, Site(Kind.RESID_PRE, 0)], grad=_metric)
    ref = ms.run(f.model, f.ids, capture=[last, Site(Kind.RESID_PRE, 0)], grad=_metric)
    assert torch.equal(res.logits, bare(f.hf, f.ids).logits)
    for s in (last, Site(Kind.RESID_PRE, 0)):
        torch.testing.assert_close(res.grads[s], ref.grads[s], atol=1e-6, rtol=1e-5)
    assert all(bool(res.grads[s].abs().sum() > 0) for s in sites)
    w = f.model.weights()
    d = res.cache[Site(Kind.LN_FINAL_SCALE)].double().requires_grad_(True)
    y = _normalise(res.cache[last], d, w.lnf_w, w.lnf_b, name in CENTRED)
    logits = y @ w.W_U.double() + (0 if w.b_U is None else w.b_U.double())
    (g,) = torch.autograd.grad(_metric(logits), d)
    torch.testing.assert_close(res.grads[Site(Kind.LN_FINAL_SCALE)].double(), g, atol=1e-5, rtol=1e-4)


def test_frozen_divisor_gradient_matches_hand_backward():
    """With the final divisor patched (a constant), the residual stream's gradient is the final
    norm's backward with that divisor held fixed."""
    module, model = _tiny()
    ids = torch.randint(0, 23, (2, 6), generator=torch.Generator().manual_seed(5))
    site, last = Site(Kind.LN_FINAL_SCALE), Site(Kind.RESID_POST, 1)
    d = ms.run(model, ids, capture=[site]).cache[site]
    res = ms.run(model, ids, capture=[last], interventions=[Patch(site, value=d)], grad=_metric)
    free = ms.run(model, ids, capture=[last], grad=_metric)
    x = res.cache[last].clone().requires_grad_(True)
    ln = module.ln_final
    logits = module.unembed((x - x.mean(-1, keepdim=True)) / d * ln.weight + ln.bias)
    (g,) = torch.autograd.grad(_metric(logits), x)
    torch.testing.assert_close(res.grads[last], g, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(free.grads[last], g, atol=1e-4)  # the free norm's gradient differs


# --- sweeps --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_activation_patching_over_scales_matches_single_runs(name: str):
    """A sweep over scale sites (windows of positions, skipped blocks) gives what one patched run
    per site and position gives."""
    from mechscope.causal.activation_patching import activation_patching

    f = make_family(name)
    corrupt = make_ids(seed=9)
    sites = [Site(Kind.LN2_SCALE, 0), Site(Kind.LN1_SCALE, 1), Site(Kind.LN_FINAL_SCALE)]

    def metric(logits):
        return logits[:, -1, 3] - logits[:, -1, 5]

    sweep = activation_patching(f.model, f.ids, corrupt, sites, metric, progress=False)
    clean = ms.run(f.model, f.ids, capture=sites).cache
    for i, s in enumerate(sites):
        for p in range(f.ids.shape[1]):
            out = ms.run(f.model, corrupt, interventions=[Patch(s, value=clean[s], positions=[p])]).logits
            torch.testing.assert_close(sweep.values[i, 0, p], metric(out), atol=1e-5, rtol=0)
