"""Explanations substituted for components: loss recovered checked by constructions whose answer is known."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.circuits.explain import score
from mechscope.circuits.explanations import (fourier_features, induction_pattern, modadd_fourier, previous_token,
                                             previous_token_pattern, strict_induction)
from mechscope.circuits.handwritten import handwritten_induction
from mechscope.models.tiny import TinyConfig, TinyTransformer
from mechscope.zoo.recipes.induction import RECIPE, make_batch

torch.set_num_threads(1)
HP = RECIPE.variants[""]


def _task(seed: int, n: int = 64):
    return make_batch(n, HP, torch.Generator().manual_seed(seed))


def _random_model():
    torch.manual_seed(0)
    cfg = TinyConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=None, n_ctx=HP["n_ctx"], d_vocab=48,
                     layer_norm=True)
    return TinyTransformer(cfg).eval().mechscope_adapter()


@pytest.mark.parametrize("site, heads", [("attn.z.1", [0]), ("attn.result.1", [1, 3]), ("resid_post.0", None)])
def test_the_components_own_recorded_output_recovers_exactly_one(site, heads):
    for model in (handwritten_induction(), _random_model()):
        if heads is not None and max(heads) >= model.n_heads:
            continue
        batch, ref = _task(1), _task(2)
        recorded = ms.run(model, batch.ids, capture=[site]).cache[site]
        s = score(model, batch, site, lambda x, ctx: recorded, heads=heads, reference=ref.ids, n_boot=200)
        assert s.loss_explained == pytest.approx(s.loss_clean, abs=1e-6)
        assert s.loss_mean_ablated != pytest.approx(s.loss_clean, abs=1e-4)
        assert s.vs_mean.value == pytest.approx(1.0, abs=1e-5)
        assert s.vs_resample.value == pytest.approx(1.0, abs=1e-5)


def test_writing_the_mean_recovers_zero_and_scores_carry_their_spec():
    model = handwritten_induction()
    batch, ref = _task(3), _task(4)
    mean = ms.run(model, ref.ids, capture=["attn.z.1"]).cache["attn.z.1"].mean(0)
    s = score(model, batch, "attn.z.1", lambda x, ctx: mean, heads=[0], reference=ref.ids, n_boot=200, seed=7,
              dataset="task seed 3", reference_name="task seed 4", name="the mean")
    assert s.vs_mean.value == pytest.approx(0.0, abs=1e-6)
    for sc, kind in ((s.vs_mean, "mean"), (s.vs_resample, "resample")):
        d = sc.describe()
        assert d["metric"] == "loss_recovered" and d["n"] == batch.ids.shape[0] and d["seed"] == 7
        assert d["how"]["ablation"] == kind and d["how"]["reference"] == "task seed 4"
        assert d["how"]["explanation"] == "the mean" and d["dataset"] == "task seed 3"
        lo, hi = d["ci"]
        assert lo <= sc.value <= hi or kind == "mean"  # the mean's CI collapses to ~0
    assert "resample" in str(s) and s.describe()["heads"] == [0]


def test_strict_induction_explains_the_handwritten_induction_head():
    # the hand-written layer-1 head *is* strict induction (uniform over all matches, uniform when none):
    # substituting the rule must recover (almost) all the loss the head is responsible for
    model = handwritten_induction()
    batch, ref = _task(5, 128), _task(6, 128)
    s = score(model, batch, None, strict_induction(model, 1), heads=[0], reference=ref.ids, n_boot=200)
    assert s.loss_mean_ablated - s.loss_clean > 2.0
    assert s.vs_mean.value > 0.97 and s.vs_resample.value > 0.97
    # the most recent match only is a different rule: it recovers less on ambiguous contexts, not more
    last = score(model, batch, None, strict_induction(model, 1, which="last"), heads=[0], reference=ref.ids,
                 n_boot=200)
    assert last.vs_mean.value <= s.vs_mean.value + 1e-6
    # and the layer-0 head is a previous-token head
    p = score(model, batch, None, previous_token(model, 0), heads=[0], reference=ref.ids, n_boot=200)
    assert p.vs_mean.value > 0.97
    # the same explanation written for attn.result (z times the head's own W_O) agrees
    r = score(model, batch, None, strict_induction(model, 1, site_kind=ms.Kind.RESULT), heads=[0],
              reference=ref.ids, n_boot=200)
    assert r.vs_mean.value == pytest.approx(s.vs_mean.value, abs=1e-4)


def test_patterns_by_rule():
    ids = torch.tensor([[5, 7, 5, 9, 7, 5]])
    pat = induction_pattern(ids)[0]
    torch.testing.assert_close(pat.sum(-1), torch.ones(6))
    assert pat[2, 1] == 1.0  # 5 at 2: earlier 5 at 0 -> key 1
    assert pat[4, 2] == 1.0  # 7 at 4: earlier 7 at 1 -> key 2
    assert pat[5, 1] == 0.5 and pat[5, 3] == 0.5  # 5 at 5: earlier 5s at 0 and 2 -> keys 1 and 3
    assert induction_pattern(ids, which="last")[0, 5, 3] == 1.0
    torch.testing.assert_close(pat[1, :2], torch.tensor([0.5, 0.5]))  # no earlier 7: uniform over 0..1
    assert induction_pattern(ids, fallback="first")[0, 3, 0] == 1.0
    prev = previous_token_pattern(ids)[0]
    assert prev[0, 0] == 1.0 and all(prev[q, q - 1] == 1.0 for q in range(1, 6))


def test_positions_and_errors():
    model = handwritten_induction()
    batch = _task(8)
    f = strict_induction(model, 1)
    everything = score(model, batch.ids, None, f, heads=[0], n_boot=50)
    masked = score(model, batch, None, f, heads=[0], n_boot=50)  # the Batch's repeated segment
    assert masked.loss_clean < everything.loss_clean  # the repeat is the predictable part
    listed = score(model, batch.ids, None, f, heads=[0], positions=[-1], n_boot=50)
    assert listed.vs_mean.n == batch.ids.shape[0]
    with pytest.raises(ValueError, match="per-head site"):
        score(model, batch, "resid_post.0", lambda x, ctx: x, heads=[0])
    with pytest.raises(ValueError, match="give the site"):
        score(model, batch, None, lambda x, ctx: x)
    with pytest.raises(ValueError, match="length"):
        score(model, batch, "attn.z.1", lambda x, ctx: x, reference=batch.ids[:, :10])


def test_fourier_features_fit_a_function_of_known_frequencies():
    # a "model" whose MLP output is exactly linear in the frequency-3 features: least squares finds it
    p = 13
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    ids = torch.stack([a, b, torch.full_like(a, p)], 1)
    X = fourier_features(ids, p, [3])
    assert X.shape == (p * p, 7)
    W = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol = torch.linalg.lstsq(X, X @ W).solution
    torch.testing.assert_close(sol, W)


def test_modadd_fourier_explains_the_trained_mlp():
    from mechscope import zoo
    from mechscope.zoo import RECIPES

    # the grokked network of the demo and of `replicate grokking --quick` (train fraction 0.5, 1500
    # epochs): the copy shipped in the package (the session's cache holds no run of it)
    run = zoo.network("modadd-frac05", progress=False)
    model = zoo.load_zoo("modadd-frac05", path=run.path)
    ex = modadd_fourier(model)  # frequencies found from the weights, not given
    assert 3 <= len(ex.info["freqs"]) <= 7 and ex.info["fit_r2"] > 0.9
    cfg = model.zoo_run.config()
    split = RECIPES["modadd"].data(cfg["hparams"], cfg["seed"])
    s = score(model, split.test_x[:2000], None, ex, labels=split.test_y[:2000], reference=split.train_x[:2000],
              n_boot=100)
    assert s.vs_mean.value > 0.95 and s.vs_resample.value > 0.95
