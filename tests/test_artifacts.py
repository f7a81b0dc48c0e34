"""The artifact directory: every kind written and read back, result objects converted, versions checked."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope import artifacts as A
from mechscope.causal import PatchingResult, graph_of
from mechscope.causal.edges import EdgeScores
from mechscope.circuits.head_roles import HeadRoles
from mechscope.core import Kind, Score, Site
from mechscope.models.tiny import TinyConfig, TinyTransformer
from mechscope.zoo.files import write_json, write_jsonl
from mechscope.zoo.train import Run


def _write_all(root):
    w = A.ArtifactWriter(root)
    m = w.model("zoo:toy")
    m.overview(architecture="TinyTransformer", n_layers=2, n_heads=3, d_model=8, vocab=11, sites=30, params=1234,
               notes={"task": "test"})
    pats = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    m.attention(["a", "b", "c", "d"], pats, prompt="abcd")
    roles = {"induction": torch.rand(2, 3), "previous_token": torch.rand(2, 3)}
    m.head_roles(roles, probe={"n": 5}, causal={"metric": "loss", "ablation": "zero", "values": torch.randn(2, 3)})
    vals = torch.tensor([[0.5, float("nan")], [0.123456789, -1.0]])
    m.patching("grid", ["r0", "r1"], ["c0", "c1"], vals, metric="logit_diff", ablation={"ablation": "patch"})
    m.circuit("c", [{"id": "input", "type": "input", "layer": -1}, {"id": "a0.1", "type": "head", "layer": 0, "head": 1},
                    {"id": "output", "type": "output", "layer": 2}],
              [{"source": "input", "target": "a0.1", "via": "q", "score": 0.5},
               {"source": "a0.1", "target": "output", "score": -0.25}],
              method="hand", ablation="zero", faithfulness=Score(0.9, "faithfulness", ci=(0.8, 1.0)))
    m.training({"loss": [(0, 2.0), (10, 1.0)], "acc": [(10, 0.5)]}, run="toy", checkpoints=[0, 10])
    return w, m, pats, roles, vals


def test_round_trip_of_every_kind(tmp_path):
    _, _, pats, roles, vals = _write_all(tmp_path / "out")
    arts = A.read_artifacts(tmp_path / "out")
    assert arts.model_names() == ["zoo:toy"]
    m = arts.model("zoo:toy")
    assert m.path.name == "zoo_toy" and arts.model("zoo_toy").name == "zoo:toy"
    ov = m.overview()
    assert ov["n_heads"] == 3 and ov["params"] == 1234 and ov["notes"] == {"task": "test"}
    att = m.attention()
    assert att["tokens"] == list("abcd") and (att["n_layers"], att["n_heads"]) == (2, 3)
    assert torch.allclose(torch.tensor(att["patterns"]), pats, atol=5e-5)
    assert all(round(v, 4) == v for v in att["patterns"][1][2][3])  # rounded to 4 decimals
    hr = m.head_roles()
    assert torch.allclose(torch.tensor(hr["roles"]["induction"]), roles["induction"], atol=5e-5)
    assert hr["causal"]["ablation"] == "zero" and len(hr["causal"]["values"]) == 2
    assert m.patching_names() == ["grid"]
    p = m.patching("grid")
    assert p["values"] == [[0.5, None], [0.1235, -1.0]] and p["ablation"] == "ablation=patch"
    c = m.circuit("c")
    assert c["faithfulness"]["value"] == 0.9 and c["faithfulness"]["ci"] == [0.8, 1.0]
    assert [e["score"] for e in c["edges"]] == [0.5, -0.25]
    assert m.training()["metrics"] == {"loss": [[0, 2.0], [10, 1.0]], "acc": [[10, 0.5]]}
    s = m.summary()
    assert s["patching"] == ["grid"] and s["circuits"] == ["c"] and not s["features"]
    assert not list((tmp_path / "out").rglob(".*tmp*"))  # atomic writes leave no temp files
    data = A.load_all(tmp_path / "out")
    assert data["models"][0]["circuits"][0]["name"] == "c"


def test_writer_reopens_and_updates_the_manifest(tmp_path):
    _write_all(tmp_path)
    w = A.ArtifactWriter(tmp_path)
    w.model("zoo:toy")  # same model, same directory
    w.model("second model", dir="second")
    assert A.read_artifacts(tmp_path).model_names() == ["zoo:toy", "second model"]
    with pytest.raises(A.ArtifactError, match="already belongs"):
        w.model("third", dir="second")


def test_schema_version_mismatch_fails_with_a_clear_message(tmp_path):
    _write_all(tmp_path)
    man = json.loads((tmp_path / "manifest.json").read_text())
    man["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(A.ArtifactError, match=r"schema version 99.*reads version 1.*write the artifacts again"):
        A.read_artifacts(tmp_path)
    man["schema_version"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    ov = tmp_path / "zoo_toy" / "overview.json"
    ov.write_text(ov.read_text().replace('"schema_version": 1', '"schema_version": 2'))
    with pytest.raises(A.ArtifactError, match=r"overview.json has artifact schema version 2"):
        A.read_artifacts(tmp_path).model("zoo:toy").overview()


def test_missing_malformed_and_invalid(tmp_path):
    with pytest.raises(A.ArtifactError, match="does not exist"):
        A.read_artifacts(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(A.ArtifactError, match="no manifest.json"):
        A.read_artifacts(tmp_path / "empty")
    _write_all(tmp_path / "a")
    (tmp_path / "a" / "zoo_toy" / "training.json").write_text("{not json")
    with pytest.raises(A.ArtifactError, match="not valid JSON"):
        A.read_artifacts(tmp_path / "a").model("zoo:toy").training()
    (tmp_path / "a" / "zoo_toy" / "overview.json").write_text(json.dumps({"kind": "overview", "schema_version": 1}))
    with pytest.raises(A.ArtifactError, match="lacks the fields"):
        A.read_artifacts(tmp_path / "a").model("zoo:toy").overview()
    with pytest.raises(A.ArtifactError, match="no model 'nope'"):
        A.read_artifacts(tmp_path / "a").model("nope")
    for bad in ("../x", ".hidden", "a/b", "", "x" * 200):
        with pytest.raises(A.ArtifactError, match="invalid"):
            A.check_name(bad)
    arts = A.read_artifacts(tmp_path / "a")
    with pytest.raises(A.ArtifactError):
        arts.model("zoo:toy").patching("../../manifest")
    with pytest.raises(A.ArtifactError, match="patterns must be"):
        A.ArtifactWriter(tmp_path / "b").model("m").attention(["a", "b"], torch.rand(1, 1, 3, 3))


def test_helpers_convert_result_objects(tmp_path):
    roles = HeadRoles(previous_token=torch.rand(2, 4), duplicate_token=torch.rand(2, 4), induction=torch.rand(2, 4),
                      bos=torch.rand(2, 4), n=5, batch=2, seed=3)
    kw = A.roles_from_head_roles(roles)
    assert set(kw["roles"]) == {"previous_token", "duplicate_token", "induction", "bos"} and kw["probe"]["seed"] == 3

    sites = (Site(Kind.Z, 0), Site(Kind.Z, 1))
    res = PatchingResult(sites, torch.rand(2, 4, 1, 3), torch.zeros(3), torch.ones(3), "denoising", 5,
                         {"ablation": "counterfactual patch", "direction": "denoising", "level": "node"})
    hm = A.heatmap_from_patching(res, metric="logit_diff")
    assert hm["rows"] == ["attn.z.0", "attn.z.1"] and hm["cols"] == ["h0", "h1", "h2", "h3"]
    torch.testing.assert_close(hm["values"], res.normalised()[:, :, 0])
    per_pos = PatchingResult((Site(Kind.RESID_PRE, 0),), torch.rand(1, 1, 3, 2), torch.zeros(2), torch.ones(2),
                             "denoising", 3, {})
    hm2 = A.heatmap_from_patching(per_pos, tokens=["x", "y", "z"])
    assert hm2["rows"] == ["resid_pre.0"] and hm2["cols"] == ["0:x", "1:y", "2:z"]

    net = TinyTransformer(TinyConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=6, d_vocab=10))
    graph = graph_of(net)
    scores = EdgeScores(graph, torch.linspace(-1, 1, graph.n_edges), {"method": "test", "ablation": "zero"})
    kw = A.circuit_from_edges(scores, k=12, faithfulness=Score(0.5, "f"))
    assert len(kw["edges"]) == 12 and kw["n_edges_total"] == graph.n_edges
    ids = {n["id"] for n in kw["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in kw["edges"])
    assert {n["type"] for n in kw["nodes"]} <= {"input", "head", "mlp", "output"}
    circ = scores.circuit(k=5)
    kw2 = A.circuit_from_edges(scores, circuit=circ)
    assert sorted(abs(e["score"]) for e in kw2["edges"]) == sorted(abs(v) for _, v in scores.top(5))
    w = A.ArtifactWriter(tmp_path).model("tiny")
    w.circuit("eap", **kw)
    w.circuit("bare", **A.circuit_from_edges(circuit=circ, n_layers=2))
    c = A.read_artifacts(tmp_path).model("tiny").circuit("eap")
    assert c["ablation"] == "ablation=zero" and c["faithfulness"]["metric"] == "f"

    run = Run(tmp_path / "run")
    run.path.mkdir()
    write_json(run.config_path, {"schema": 1, "recipe": "toy", "variant": "", "seed": 0, "hparams": {"steps": 4}})
    write_jsonl(run.metrics_path, [{"step": 0, "loss": 3.0}, {"step": 2, "train_loss": 2.5},
                                   {"step": 4, "train_loss": 2.0, "loss": 1.5}])
    tr = A.training_from_run(run)
    assert tr["metrics"] == {"loss": [(0, 3.0), (4, 1.5)], "train_loss": [(2, 2.5), (4, 2.0)]}
    assert tr["config"]["recipe"] == "toy"


def test_feature_store_is_registered_and_read_only(tmp_path):
    import mechscope as ms
    from mechscope.features import FeatureSet, FeatureStore, build_dashboards

    torch.manual_seed(0)
    net = ms.wrap(TinyTransformer(TinyConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=6,
                                             d_vocab=12)))
    docs = torch.randint(0, 12, (10, 6), generator=torch.Generator().manual_seed(1))
    feats = FeatureSet.neurons(Site(Kind.MLP_POST, 0), d=16, name="mlp.post.0")
    with FeatureStore(tmp_path / "build.duckdb") as st:
        build_dashboards(net, feats, docs, st, dataset="random", k=3, reservoir=4, progress=False)
    m = A.ArtifactWriter(tmp_path / "out").model("tiny")
    m.features(tmp_path / "build.duckdb")
    got = A.read_artifacts(tmp_path / "out").model("tiny")
    assert got.features_info()["sets"] == ["mlp.post.0"] and got.features_path().parent == got.path
    with got.open_features() as st:
        rows = A.feature_rows(st, "mlp.post.0")
        assert len(rows) == 16 and "explanation" in rows[0]
    snap = A.features_snapshot(got, max_pages=3)
    assert len(snap["sets"][0]["pages"]) <= 3 and snap["sets"][0]["set"]["set_id"] == "mlp.post.0"
    with pytest.raises(A.ArtifactError, match="does not exist"):
        m.features(tmp_path / "missing.duckdb")


def test_readers_open_nothing_outside_the_directory(tmp_path):
    from mechscope.features import FeatureStore

    _write_all(tmp_path / "a")
    outside = tmp_path / "elsewhere.duckdb"
    FeatureStore(outside).close()
    m = A.ArtifactWriter(tmp_path / "a").model("zoo:toy")
    with pytest.raises(A.ArtifactError, match="outside the model directory.*copy=True"):
        m.features(outside, copy=False)
    inside = m.path / "stores" / "mine.duckdb"
    FeatureStore(inside).close()
    m.features(inside, copy=False)  # referenced where it is, by a path relative to the model directory
    got = A.read_artifacts(tmp_path / "a").model("zoo:toy")
    assert got.features_info()["store"] == "stores/mine.duckdb" and got.features_path() == inside.resolve()
    for ref in (str(outside), "../../elsewhere.duckdb", 7):
        (m.path / "features.json").write_text(json.dumps({"kind": "features", "schema_version": 1, "store": ref}))
        with pytest.raises(A.ArtifactError, match="not a file inside the artifact directory"):
            got.features_path()
    (tmp_path / "secret.json").write_text(json.dumps({"kind": "training", "schema_version": 1, "metrics": {}}))
    (m.path / "training.json").unlink()
    (m.path / "training.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(A.ArtifactError, match="leaves the artifact directory"):
        got.training()
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    man["models"].append({"name": {"not": "text"}, "dir": "x"})
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(A.ArtifactError, match="needs a name"):
        A.read_artifacts(tmp_path / "a")


def test_forget_takes_out_only_a_model_with_nothing_saved(tmp_path):
    w = A.ArtifactWriter(tmp_path)
    w.model("empty")
    w.model("kept").attention(["a", "b"], torch.rand(1, 1, 2, 2))
    assert w.forget("empty") is True and w.forget("kept") is False and w.forget("never") is False
    assert A.read_artifacts(tmp_path).model_names() == ["kept"]
    assert not (tmp_path / "empty").exists()
