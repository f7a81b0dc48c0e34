"""The viewer's HTTP API on demo artifacts: every route answers, names are contained, errors are 4xx JSON."""

from __future__ import annotations

import inspect

import pytest
from fastapi.testclient import TestClient

from mechscope import artifacts as A
from mechscope.viewer import create_app

MODEL = "zoo:induction-quick"


@pytest.fixture(scope="module")
def demo_dir(demo_artifacts):
    return demo_artifacts


@pytest.fixture(scope="module")
def client(demo_dir):
    with TestClient(create_app(demo_dir), raise_server_exceptions=False) as c:
        yield c


def test_every_route_answers(client):
    assert client.get("/").status_code == 200 and "mechscope" in client.get("/").text
    for f in ("mechscope.js", "mechscope.css", "app.js", "index.html"):
        assert client.get(f"/static/{f}").status_code == 200, f
    models = client.get("/api/models").json()["models"]
    assert [m["name"] for m in models] == [MODEL]
    s = models[0]
    assert all(s[k] for k in ("overview", "attention", "head_roles", "training", "features"))
    base = f"/api/models/{MODEL}"
    ov = client.get(base + "/overview").json()
    assert ov["overview"]["n_layers"] == 2 and ov["summary"]["patching"] == ["heads", "resid_pre"]
    att = client.get(base + "/attention").json()
    assert len(att["patterns"]) == 2 and len(att["patterns"][0][0]) == len(att["tokens"])
    assert set(client.get(base + "/head_roles").json()["roles"]) >= {"induction", "previous_token"}
    assert "train_loss" in client.get(base + "/training").json()["metrics"]
    for name in client.get(base + "/patching").json()["names"]:
        p = client.get(f"{base}/patching/{name}").json()
        assert len(p["values"]) == len(p["rows"]) and p["ablation"]
    (name,) = client.get(base + "/circuits").json()["names"]
    c = client.get(f"{base}/circuits/{name}").json()
    assert c["nodes"] and c["edges"] and c["faithfulness"]["metric"].startswith("faithfulness")
    pruned = client.get(f"{base}/circuits/{name}", params={"threshold": 0.05}).json()
    assert len(pruned["edges"]) < len(c["edges"])
    feats = client.get(base + "/features").json()["sets"]
    set_id = feats[0]["set"]["set_id"]
    assert len(feats[0]["features"]) == feats[0]["set"]["n_features"]
    page = client.get(f"{base}/features/{set_id}/3").json()
    assert page["feature"] == 3 and page["top"] and page["histogram"] and "explanations" in page
    assert client.get(base + "/features", params={"set": set_id, "limit": 5}).json()["sets"][0]["features"][4]
    # models are also addressed by their directory name; raw artifact files are served
    assert client.get("/api/models/zoo_induction-quick/overview").status_code == 200
    assert client.get("/artifacts/manifest.json").json()["schema_version"] == A.SCHEMA_VERSION
    assert client.get("/artifacts/zoo_induction-quick/patching/heads.json").status_code == 200


@pytest.mark.parametrize("path", [
    "/artifacts/..%2F..%2Fetc%2Fpasswd", "/artifacts/%2Fetc%2Fpasswd", "/artifacts/..%2Fmanifest.json",
    "/artifacts/zoo_induction-quick/..%2F..%2F..%2Fetc%2Fpasswd", "/artifacts/.%2Fmanifest.json",
    "/artifacts/nothing.json", "/artifacts/zoo_induction-quick", "/api/models/..%2F..%2Fetc/overview",
    "/api/models/zoo:induction-quick/patching/..%2F..%2Fmanifest", "/api/models/zoo:induction-quick/circuits/..",
])
def test_path_traversal_is_refused(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert "root:" not in r.text and "error" in r.json()


def test_symlinks_out_of_the_directory_are_refused(client, demo_dir, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    link = demo_dir / "zoo_induction-quick" / "leak.json"
    link.symlink_to(secret)
    try:
        r = client.get("/artifacts/zoo_induction-quick/leak.json")
        assert r.status_code == 400 and "secret" not in r.text.replace("leak", "")
    finally:
        link.unlink()


@pytest.mark.parametrize("path, status, words", [
    (f"/api/models/{MODEL}/features/attn_out.0/abc", 400, "feature"),
    (f"/api/models/{MODEL}/features/attn_out.0/99999", 404, "no feature 99999"),
    (f"/api/models/{MODEL}/features/attn_out.0/-1", 404, "no feature -1"),
    (f"/api/models/{MODEL}/features/nope/1", 404, "no feature set 'nope'"),
    (f"/api/models/{MODEL}/features?limit=zero", 400, "limit"),
    (f"/api/models/{MODEL}/features?limit=0", 400, "limit"),
    (f"/api/models/{MODEL}/features?set=nope", 404, "no feature set"),
    (f"/api/models/{MODEL}/circuits/eap?threshold=abc", 400, "threshold"),
    (f"/api/models/{MODEL}/circuits/eap?threshold=-1", 400, "threshold"),
    (f"/api/models/{MODEL}/circuits/eap?threshold=nan", 400, "threshold"),
    (f"/api/models/{MODEL}/circuits/nope", 404, "no circuit 'nope'"),
    (f"/api/models/{MODEL}/patching/nope", 404, "no patching result"),
    ("/api/models/nope/overview", 404, "no model 'nope'"),
    ("/api/models/nope/attention", 404, "no model"),
    ("/api/nothing", 404, "Not Found"),
])
def test_bad_queries_are_4xx_json_with_a_message(client, path, status, words):
    r = client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text)
    assert words in r.json()["error"]
    assert "Traceback" not in r.text


def test_a_crash_is_a_generic_500_without_the_trace(client, monkeypatch):
    def boom(self):
        raise RuntimeError("secret internals at /home/user")

    monkeypatch.setattr(A.ModelArtifacts, "overview", boom)
    r = client.get(f"/api/models/{MODEL}/overview")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (details are in the viewer's log)"}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_defaults_bind_localhost_and_a_wrong_schema_fails_early(demo_dir, tmp_path):
    from mechscope import cli, viewer
    from mechscope.viewer import app

    for fn in (viewer.serve, app.serve, cli.view):
        assert inspect.signature(fn).parameters["host"].default == "127.0.0.1", fn
    (tmp_path / "manifest.json").write_text('{"format": "mechscope-artifacts", "schema_version": 7, "models": []}')
    with pytest.raises(A.ArtifactError, match="schema version 7"):
        create_app(tmp_path)
