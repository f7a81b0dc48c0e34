"""Each audit method on a case built for it: a planted rank-1 MLP edit, a planted single-token trigger
(weight edits of the zoo's quick text model), and a random component that must not confirm."""

from __future__ import annotations

import copy

import pytest
import torch

import mechscope as ms
from mechscope.audit import behaviour, features, triggers, weights
from mechscope.audit.confirm import Confirmer
from mechscope.audit.inputs import default_corpus
from mechscope.audit.suspect import Suspect, component, mlp_site, trigger
from mechscope.core.site import Kind, Site

from audit_support import common_token, plant_token_trigger, quick_text_model, text_cache

TARGET = 1234


@pytest.fixture(scope="module")
def base(textlm_cache):
    with text_cache(textlm_cache):
        yield quick_text_model()


@pytest.fixture(scope="module")
def corpus(base):
    return default_corpus(base, n=48, seq_len=64)


@pytest.fixture(scope="module")
def planted(base, corpus):
    t = common_token(base, corpus)
    return t, plant_token_trigger(base, t, TARGET, corpus=corpus[:16], layer=1, unit=17)


def _rank1_edit(base, layer: int, scale: float = 3.0):
    module = copy.deepcopy(base.module)
    W = module.blocks[layer].mlp.W_out.weight  # (d_model, d_mlp)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(W.shape[0], generator=g)
    v = torch.randn(W.shape[1], generator=g)
    sigma1 = float(torch.linalg.svdvals(W.detach())[0])
    with torch.no_grad():
        W += scale * sigma1 * torch.outer(u / u.norm(), v / v.norm())
    return ms.wrap(module)


def _by_stat(found, stat):
    return sorted((s for s in found if s.stat == stat), key=lambda s: -s.score)


def test_rank1_mlp_edit_is_found_as_that_mlp(base):
    for layer in (0, 1):
        edited = _rank1_edit(base, layer)
        alone = _by_stat(weights.scan(edited), "mlp_rank1")
        clean = {s.evidence["matrix"] + str(s.component["site"]): s.score for s in weights.scan(base)
                 if s.stat == "mlp_rank1"}
        top = alone[0]
        assert top.component["class"] == "mlp" and top.component["site"] == mlp_site(layer).name
        assert top.evidence["matrix"] == "W_out"
        assert top.score > 2 * clean["W_out" + mlp_site(layer).name]
        diff = _by_stat(weights.scan(edited, base), "diff_ratio")
        assert diff[0].component["class"] == "mlp" and diff[0].component["site"] == mlp_site(layer).name
        assert diff[0].evidence["rank"] == 1
        assert all(s.component["site"] == mlp_site(layer).name for s in diff)  # nothing else changed


def test_planted_neuron_is_the_top_weight_outlier(base, planted):
    t, model = planted
    for stat in ("neuron_in_z", "neuron_out_z"):
        top = _by_stat(weights.scan(model), stat)[0]
        assert (top.component["site"], top.component["unit"]) == ("blocks.1.mlp.hook_post", 17)
        clean_top = _by_stat(weights.scan(base), stat)[0]
        assert top.score > 3 * clean_top.score


def test_kurtosis_matches_scipy():
    from scipy.stats import kurtosis as scipy_kurtosis

    x = torch.randn(7, 300, generator=torch.Generator().manual_seed(0)) ** 3
    ours = weights.kurtosis(x, 1)
    assert torch.allclose(ours, torch.from_numpy(scipy_kurtosis(x.double().numpy(), axis=1, fisher=True, bias=True)),
                          atol=1e-9)
    assert weights.kurtosis(torch.ones(3, 5), 1).tolist() == [0.0, 0.0, 0.0]  # no variance: 0, not nan


def test_neuron_with_spiked_weights_is_the_top_kurtosis_outlier(base):
    """A neuron rewired to read three residual coordinates, its weight norm the layer's median: its norm does
    not stand out, its kurtosis does."""
    module = copy.deepcopy(base.module)
    W = module.blocks[0].mlp.W_in.weight  # (d_mlp, d_model)
    unit = 40
    with torch.no_grad():
        norm = W.norm(dim=1).median()
        row = torch.zeros(W.shape[1])
        row[[3, 17, 29]] = torch.tensor([1.0, -1.0, 1.0])
        W[unit] = row / row.norm() * norm
    edited = ms.wrap(module)
    top = _by_stat(weights.scan(edited), "neuron_in_kurt_z")[0]
    assert (top.component["site"], top.component["unit"]) == ("blocks.0.mlp.hook_post", unit)
    site = top.component["site"]
    clean = [s for s in weights.scan(base) if s.stat == "neuron_in_kurt_z" and s.component["site"] == site]
    assert top.score > 3 * clean[0].score and top.evidence["kurtosis"] > 10  # three of d_model 64 coordinates: about 18
    norm_z = [s for s in weights.scan(edited) if s.stat == "neuron_in_z" and s.component["site"] == site]
    assert norm_z[0].component["unit"] != unit  # the norm scan does not single it out


def test_latent_scaling_tells_a_missing_direction_from_a_shared_one():
    from mechscope.diff.crosscoder_diff import latent_scaling

    g = torch.Generator().manual_seed(0)
    f = torch.rand(200, generator=g) + 0.1  # latent 0's code on 200 rows
    d = torch.zeros(8)
    d[2] = 1.0
    W = torch.stack([d, d])[None]  # (1 latent, 2 sources, 8)
    codes = f[:, None]
    recon = (f[:, None, None] * W[0][None]).clone()  # the crosscoder's reconstruction of both sources
    shared = f[:, None, None] * W[0][None]
    assert latent_scaling(shared, recon, codes, W, 0) == pytest.approx(1.0, abs=1e-6)
    only_b = shared.clone()
    only_b[:, 0] = 0.0  # the reference (source 0) lacks the direction where the latent fires
    assert latent_scaling(only_b, recon, codes, W, 0) == pytest.approx(0.0, abs=1e-6)


def test_diff_latents_find_a_planted_token_against_the_reference(base, corpus, planted):
    """A crosscoder over the reference and the model finds a latent that fires on the planted token, whose
    positions raise the planted target, and stands out more than any latent of the base against itself."""
    t, model = planted
    found = features.diff_scan(model, base, corpus, seed=0)
    assert len(found) == 1 and found[0].stat == "diff_latent_spike_z"
    s = found[0]
    assert s.trigger["ids"] == [t] and s.effect["target_ids"] == [TARGET] and s.effect["delta_logprob"] > 2.0
    assert s.component["class"] == "direction" and s.component["site"] == "blocks.1.hook_resid_post"
    assert s.evidence["nu"] < features.MAX_NU and s.evidence["firing_rate"] <= 0.01
    same = features.diff_scan(base, base, corpus, seed=0)
    assert all(s.score > x.score + 1.0 for x in same)


def test_trigger_search_reconstructs_a_planted_token(base, corpus, planted):
    t, model = planted
    contexts = corpus[:8, :24]
    obj = triggers.Activation(Site(Kind.MLP_PRE, 1), unit=17)
    res = triggers.search(model, obj, contexts, position=12, max_steps=8, seed=0, exhaustive_vocab=0)  # GCG steps
    assert res.ids == [t] and not res.exhaustive and res.steps >= 1
    assert res.seconds < 60
    eff = triggers.effect(model, contexts, res.ids, 12, reference=base)
    assert eff["target_ids"] == [TARGET] and eff["delta_logprob"] > 2.0
    # the same search on the clean model finds no such gap between the best and random tokens
    clean = triggers.search(base, obj, contexts, position=12, max_steps=8, seed=0, exhaustive_vocab=0)
    assert res.z > 3 * clean.z
    exact = triggers.search(model, obj, contexts[:2], position=12, exhaustive_vocab=4096)  # every token evaluated
    assert exact.exhaustive and exact.ids == [t]


def test_trigger_search_on_a_byte_level_model():
    from mechscope.models.tiny import TinyConfig, TinyTransformer

    torch.manual_seed(0)
    module = TinyTransformer(TinyConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32,
                                        d_vocab=256, act="gelu", layer_norm=True))
    model = ms.wrap(module)
    text = "the quick brown fox jumps over the lazy dog; " * 40
    ids = torch.tensor(list(text.encode()))[: 16 * 32].reshape(16, 32)
    t = ord("Q")
    planted = plant_token_trigger(model, t, ord("z"), corpus=ids, layer=1, unit=5)
    res = triggers.search(planted, triggers.Activation(Site(Kind.MLP_PRE, 1), unit=5), ids[:8, :24], position=12,
                          max_steps=8, exhaustive_vocab=0)
    assert res.ids == [t]
    assert all(i < 256 for i in res.ids)


def test_behaviour_scan_localises_a_planted_trigger(base, corpus, planted):
    t, model = planted
    found = behaviour.scan(model, corpus, reference=base)
    token = [s for s in found if s.trigger["kind"] == "token"][0]
    assert token.trigger["ids"] == [t]
    assert token.effect["target_ids"] == [TARGET]
    others = [s.score for s in found if s.trigger["kind"] != "token"]
    assert token.score > 5 * max(others)
    # the clean model against itself diverges nowhere
    assert all(s.score == 0 for s in behaviour.scan(base, corpus, reference=base))


def test_confirm_accepts_the_true_suspect_and_rejects_a_random_one(base, corpus, planted):
    t, model = planted
    conf = Confirmer(model, corpus, corpus[:8, :24], position=12)
    trig = trigger("token", [t])
    effect = {"target_ids": [TARGET], "target_text": None, "delta_logprob": 0.0, "offset": 0}
    true = Suspect(component(mlp_site(1), "neuron", unit=17), trig, dict(effect), "test", 1.0, ["test"])
    conf.confirm(true)
    assert true.confirmed is True and true.evidence["removed"] > 0.9
    g = torch.Generator().manual_seed(3)
    for layer, unit in ((0, int(torch.randint(256, (1,), generator=g))), (1, 200)):
        rand = Suspect(component(mlp_site(layer), "neuron", unit=unit), trig, dict(effect), "test", 1.0, ["test"])
        conf.confirm(rand)
        assert rand.confirmed is False and rand.evidence["removed"] < 0.2
    # a suspect with only a trigger is localised to the planted neuron
    loose = Suspect(None, trig, dict(effect), "test", 1.0, ["test"])
    conf.confirm(loose)
    assert loose.confirmed is True
    assert (loose.component["class"], loose.component["unit"]) == ("neuron", 17)


def test_byte_level_patching_writes_only_whole_utf8_characters():
    """Two byte models that differ on the embedding of a UTF-8 continuation byte (0x99, the last byte
    of '’') and of 'Q': only 'Q' can stand in text on its own, so only it is a patching candidate."""
    import copy

    from mechscope.audit import patching
    from mechscope.audit.inputs import writable
    from mechscope.models.tiny import TinyConfig, TinyTransformer

    torch.manual_seed(0)
    ref_module = TinyTransformer(TinyConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32,
                                            d_vocab=256, act="gelu", layer_norm=True)).eval()
    module = copy.deepcopy(ref_module)
    with torch.no_grad():
        for b in (0x99, ord("Q")):
            module.embed.weight[b] += 3.0 * torch.randn(32)
    ref, model = ms.wrap(ref_module), ms.wrap(module)
    assert not writable(model, [0x99]) and not writable(model, [ord("|"), 0x99]) and writable(model, [ord("Q")])
    assert writable(model, list("’".encode())) and writable(_NoBytes(), [0x99])
    text = "It’s the quick brown fox; don’t Quit, it’s late. " * 30
    ids = torch.tensor(list(text.encode()))[: 16 * 32].reshape(16, 32)
    found = patching.scan(model, ref, ids, ids[:8, :24], 12)
    assert found and all(writable(model, s.trigger["ids"]) for s in found)
    assert any(ord("Q") in s.trigger["ids"] for s in found)
    assert all(0x99 not in s.trigger["ids"] for s in found)


class _NoBytes:
    """A stand-in for a model with a tokenizer: its ids are not bytes."""

    tokenizer = object()
