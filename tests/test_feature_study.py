"""The feature study: a dictionary's latents through dashboards, explanations and the store."""

import json

import torch

import mechscope as ms
from mechscope import dictionaries as dl
from mechscope.core import Kind, Site
from mechscope.features import FeatureStore
from mechscope.models.tiny import TinyConfig, TinyTransformer
from mechscope.studies.feature_study import dictionary_features, feature_study

SITE = Site(Kind.RESID_POST, 0)


def _setup():
    torch.manual_seed(0)
    model = ms.wrap(TinyTransformer(TinyConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16,
                                               d_vocab=30)))
    sae = dl.build("topk", d_in=16, d_sae=24, k=4, seed=0, site=SITE.name)
    docs = torch.randint(0, 30, (24, 16), generator=torch.Generator().manual_seed(2))
    return model, sae, docs


def test_latents_are_the_dictionary_codes_and_skip_first_zeroes_position_zero():
    model, sae, docs = _setup()
    acts = model.run(docs[:3], capture=[SITE]).cache[SITE]
    plain = dictionary_features(sae)
    assert plain.site == SITE and len(plain) == 24 and torch.equal(plain.directions, sae.W_dec.detach())
    torch.testing.assert_close(plain.encode(acts), sae.encode(acts))
    skipped = dictionary_features(sae, skip_first=True).encode(acts)
    assert float(skipped[:, 0].abs().sum()) == 0 and torch.equal(skipped[:, 1:], sae.encode(acts)[:, 1:])
    assert not skipped.requires_grad


def test_study_stores_every_latent_and_rerunning_replaces_rows(tmp_path):
    model, sae, docs = _setup()
    path = tmp_path / "f.duckdb"
    fig = feature_study(model, sae, docs, path, dataset="random tokens", causal_limit=2, progress=False)
    with FeatureStore(path, read_only=True) as store:
        assert store.count("features", fig["set"]) == 24
        n_expl = store.count("explanations", fig["set"])
    assert n_expl == fig["live"] > 0 and fig["causal_scored"] == 2
    assert 0 <= fig["share_corr_0.7"] <= 1 and fig["corr_at_least_0.7"] == round(fig["share_corr_0.7"] * fig["live"])
    assert [p["why"] for p in fig["pages"]] == ["best explained", "median correlation", "most active"]
    assert all(p["top_examples"] and "[[" in p["top_examples"][0] for p in fig["pages"])
    again = feature_study(model, sae, docs, path, dataset="random tokens", causal_limit=2, progress=False)
    with FeatureStore(path, read_only=True) as store:
        assert store.count("features", fig["set"]) == 24 and store.count("explanations", fig["set"]) == n_expl
    assert again["share_corr_0.7"] == fig["share_corr_0.7"]  # seeded: the same split and the same rules
    few = feature_study(model, sae, docs, tmp_path / "g.duckdb", dataset="random tokens", causal_limit=1,
                        causal_docs=3, progress=False)
    with FeatureStore(tmp_path / "g.duckdb", read_only=True) as store:
        rows = [e for f in range(24) for e in (store.page(few["set"], f)["explanations"] if f in
                {r["feature"] for r in store.features(few["set"])} else [])]
    causal = [json.loads(r["spec"])["causal"]["mean"] for r in rows if r["loss_recovered"] is not None]
    assert len(causal) == 1 and causal[0]["n"] == 3 and few["causal_documents"] == 3


def test_study_summary_with_the_baseline_counts_undefined_ratios_apart(tmp_path):
    model, sae, docs = _setup()
    fig = feature_study(model, sae, docs, tmp_path / "b.duckdb", dataset="random tokens", causal_limit=6,
                        causal_docs=2, grammar="clauses", baseline=True, progress=False)
    assert fig["causal_scored"] == 6 and fig["baseline"]["causal_scored"] <= 6
    assert 0 <= fig["causal_not_finite"] <= 6
    q = fig["quartiles_loss_recovered_vs_mean"]
    assert q is None or q[0] <= q[1] <= q[2]
    assert fig["size_median"]["lines"] >= 1 and fig["baseline"]["size_median"]["lines"] == 1
    assert fig["seconds"]["explanations_detail"]["cpu"] > 0
