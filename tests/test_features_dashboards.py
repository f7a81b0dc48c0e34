"""Feature dashboards: every stored number recomputed by brute force over the whole dataset."""

import duckdb
import pytest
import torch

import mechscope as ms
from mechscope.core import Kind, Site
from mechscope.features import FeatureSet, FeatureStore, StoreError, build_dashboards, logit_effects
from mechscope.models.tiny import TinyConfig, TinyTransformer

T = 12


def _model():
    torch.manual_seed(0)
    net = TinyTransformer(TinyConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=T, d_vocab=40))
    return ms.wrap(net)


MODEL = _model()
DOCS = torch.randint(0, 40, (22, T), generator=torch.Generator().manual_seed(1))
SITE = Site(Kind.MLP_POST, 0)


def _all_acts():
    return MODEL.run(DOCS, capture=[SITE]).cache[SITE].reshape(-1, 32)  # (doc*pos, unit)


@pytest.fixture
def built(tmp_path):
    feats = FeatureSet.neurons(SITE, d=32)
    with FeatureStore(tmp_path / "f.duckdb") as store:
        summary = build_dashboards(MODEL, feats, DOCS, store, dataset="random tokens", batch_size=5, k=6,
                                   reservoir=10, context=(3, 2), progress=False)
        yield store, feats, summary


def test_summary_counts_and_densities_match_brute_force(built):
    store, feats, summary = built
    acts = _all_acts()
    assert summary.n_tokens == DOCS.numel() and summary.n_features == 32
    rows = store.features(feats.name)
    assert len(rows) == 32
    for r in rows:
        a = acts[:, r["feature"]]
        assert r["n_active"] == int((a > 0).sum())
        assert r["density"] == pytest.approx(float((a > 0).float().mean()))
        assert r["max_act"] == pytest.approx(float(a.max()), rel=1e-6)
        assert r["mean_act"] == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-7)
    assert summary.live == int(((acts > 0).sum(0) > 0).sum())


def test_top_examples_are_the_k_largest_with_their_contexts(built):
    store, feats, _ = built
    acts = _all_acts().view(DOCS.shape[0], T, 32)
    for f in (0, 7, 31):
        page = store.page(feats.name, f)
        a = acts[..., f].flatten()
        want = a[a > 0].sort(descending=True).values[:6]
        got = torch.tensor([e["activation"] for e in page["top"]])
        torch.testing.assert_close(got, want[:len(got)], rtol=1e-6, atol=1e-7)
        assert len(got) == len(want)
        for e in page["top"]:
            assert float(acts[e["doc"], e["pos"], f]) == pytest.approx(e["activation"], rel=1e-6)
            lo = max(0, e["pos"] - 3)
            assert e["tokens"] == [str(t) for t in DOCS[e["doc"], lo:e["pos"] + 3].tolist()]
            torch.testing.assert_close(torch.tensor(e["acts"]), acts[e["doc"], lo:e["pos"] + 3, f],
                                       atol=1e-5, rtol=1e-4)


def test_histogram_quantiles_and_coactivation(built):
    store, feats, _ = built
    acts = _all_acts()
    active = (acts > 0).float()
    for f in (2, 19):
        page = store.page(feats.name, f)
        assert sum(h["count"] for h in page["histogram"]) == DOCS.numel()
        a = acts[:, f].double()
        for h in page["histogram"]:  # each bin holds exactly the values in (lo, hi]
            lo = -float("inf") if h["lo"] is None else h["lo"]
            hi = float("inf") if h["hi"] is None else h["hi"]
            assert int(((a > lo) & (a <= hi)).sum()) == h["count"]
        qs = [e["activation"] for e in page["quantiles"]]
        assert qs == sorted(qs, reverse=True) and all(q > 0 for q in qs)
        co = active.T @ active
        score = co[f] / (co[f, f] * co.diagonal()).clamp_min(1).sqrt()
        score[f] = -1
        first = page["coactivation"][0]
        assert first["other"] == int(score.argmax()) and first["score"] == pytest.approx(float(score.max()), rel=1e-5)


def test_logit_effects_are_the_direct_path():
    w = MODEL.weights()
    feats = FeatureSet.neurons(SITE, units=[3, 5])
    torch.testing.assert_close(logit_effects(MODEL, feats), w.W_out[0][[3, 5]] @ w.W_U)
    dirs = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    resid = FeatureSet.from_directions(Site(Kind.RESID_POST, 0), dirs)
    torch.testing.assert_close(logit_effects(MODEL, resid), resid.directions @ w.W_U)
    vals = resid.encode(torch.ones(2, 3, 16))
    torch.testing.assert_close(vals, (torch.ones(2, 3, 16) @ resid.directions.T))


def test_rebuilding_replaces_rows_and_exports_parquet(tmp_path):
    feats = FeatureSet.neurons(SITE, units=range(8))
    path = tmp_path / "f.duckdb"
    with FeatureStore(path) as store:
        build_dashboards(MODEL, feats, DOCS, store, dataset="a", k=4, progress=False)
        counts = {t: store.count(t) for t in ("features", "examples", "histograms", "logit_effects")}
        build_dashboards(MODEL, feats, DOCS, store, dataset="a", k=4, progress=False)
        assert {t: store.count(t) for t in counts} == counts
        assert len(store.sets()) == 1
        files = store.export_parquet(tmp_path / "pq")
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{(tmp_path / 'pq' / 'features.parquet').as_posix()}')")
    assert n.fetchall()[0][0] == 8 and len(files) == 8
    with FeatureStore(path, read_only=True) as store:
        assert store.page(feats.name, 0)["label"] == "n0"
        with pytest.raises(KeyError, match="no feature 99"):
            store.page(feats.name, 99)


def test_store_rejects_foreign_files_and_bad_input(tmp_path):
    bad = tmp_path / "other.duckdb"
    duckdb.connect(str(bad)).execute("CREATE TABLE t (x INTEGER)").close()
    with pytest.raises(StoreError, match="no mechscope schema"):
        FeatureStore(bad, read_only=True)
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore(tmp_path / "missing.duckdb", read_only=True)
    with FeatureStore(tmp_path / "f.duckdb") as store:
        with pytest.raises(ValueError, match="integer token ids"):
            build_dashboards(MODEL, FeatureSet.neurons(SITE, d=32), DOCS.float(), store, dataset="x")


def test_explain_set_stores_an_explanation_per_live_feature(tmp_path):
    from mechscope.features.pipeline import explain_set

    feats = FeatureSet.neurons(SITE, units=range(6))
    with FeatureStore(tmp_path / "f.duckdb") as store:
        build_dashboards(MODEL, feats, DOCS, store, dataset="random tokens", k=4, progress=False)
        res = explain_set(MODEL, feats, DOCS, store, dataset="random tokens", causal_limit=2, progress=False)
        assert res.live == len(res.rows) and res.causal_scored == 2
        page = store.page(feats.name, res.rows[0]["feature"])
        assert page["explanations"][0]["explanation"] == res.rows[0]["explanation"]
        scored = [r for r in res.rows if r["loss_recovered"] is not None]
        assert len(scored) == 2
        import json
        spec = json.loads(scored[0]["spec"])
        assert spec["causal"]["mean"]["how"]["ablation"] == "mean" and spec["heldout_docs"] == 11
        again = explain_set(MODEL, feats, DOCS, store, dataset="random tokens", causal_limit=0, progress=False)
        assert store.count("explanations", feats.name) == again.live  # replaced, not duplicated
