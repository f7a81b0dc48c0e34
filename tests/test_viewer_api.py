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
    with TestClient(create_app(demo_dir), base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
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
    (f"/api/models/{MODEL}/features/attn_out.0/-1", 400, "feature"),
    (f"/api/models/{MODEL}/features/attn_out.0/{2**40}", 400, "feature"),
    (f"/api/models/{MODEL}/features/attn_out.0/1.5", 400, "feature"),
    (f"/api/models/{MODEL}/features/{'s' * 201}/1", 400, "set_id"),
    (f"/api/models/{MODEL}/features?limit=1000000000", 400, "limit"),
    (f"/api/models/{MODEL}/features?set=", 400, "set"),
    (f"/api/models/{MODEL}/features?set={'s' * 201}", 400, "set"),
    (f"/api/models/{MODEL}/circuits/eap?threshold=inf", 400, "threshold"),
    (f"/api/models/{MODEL}/circuits/{'c' * 201}", 400, "item"),
    (f"/api/models/{'m' * 201}/overview", 400, "name"),
    ("/api/models/zoo%3Ainduction-quick%00/overview", 404, "no model"),
    (f"/artifacts/{'a/' * 600}x.json", 400, "path"),
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


# ---- the Host header (DNS rebinding) and security headers -------------------------------------

def _status(app, host: str | None, path: str = "/api/models", hosts: int = 1) -> int:
    """Status of one request sent straight to the ASGI app with exactly these Host headers."""
    import asyncio

    sent, asked = [], []

    async def receive():  # the request once; then the client leaves once the answer is complete
        if not asked:
            asked.append(1)
            return {"type": "http.request", "body": b"", "more_body": False}
        while not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent):
            await asyncio.sleep(0.001)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    headers = [(b"host", host.encode("latin-1"))] * hosts if host is not None else []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8765)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8765", True), ("localhost:8765", True), ("[::1]:8765", True), ("LocalHost:8765", True),
    ("evil.example:8765", False), ("127.0.0.1.evil.example:8765", False), ("localhost.evil.example:8765", False),
    ("127.0.0.1:9999", False), ("localhost", False), ("127.0.0.1:8765:8765", False), ("user@127.0.0.1:8765", False),
    ("[::1", False), ("::1:8765", False), ("127.0.0.1:99999", False), ("", False), ("viewer.lan:8765", False),
])
def test_only_requests_addressed_to_the_viewer_are_answered(demo_dir, host, ok):
    app = create_app(demo_dir, port=8765)
    for path in ("/", "/api/models", "/static/app.js", "/artifacts/manifest.json", "/api/nothing"):
        want = (404 if path == "/api/nothing" else 200) if ok else 400
        assert _status(app, host, path) == want, (host, path)
    if not ok:
        with TestClient(app, base_url="http://127.0.0.1:8765") as c:
            r = c.get("/api/models", headers={"host": host})
            assert r.status_code == 400 and "DNS rebinding" in r.json()["error"] and "allowed_hosts" in r.json()["error"]


def test_allowed_hosts_and_the_port(demo_dir):
    app = create_app(demo_dir, port=8765, allowed_hosts=["Viewer.LAN", "[fe80::1]", "192.168.1.5"])
    for host in ("viewer.lan:8765", "[fe80::1]:8765", "192.168.1.5:8765", "localhost:8765"):
        assert _status(app, host) == 200, host
    assert _status(app, "other.lan:8765") == 400 and _status(app, "viewer.lan:8766") == 400
    assert _status(app, None) == 400 and _status(app, "localhost:8765", hosts=2) == 400
    on80 = create_app(demo_dir, port=80)
    assert _status(on80, "localhost") == 200 and _status(on80, "localhost:80") == 200
    anyport = create_app(demo_dir)  # an app served by someone else: any port, still only these names
    assert _status(anyport, "localhost:1234") == 200 and _status(anyport, "evil.example:1234") == 400
    for bad in ("a b", "host:8765", "", "x/y"):
        with pytest.raises(ValueError, match="allowed host"):
            create_app(demo_dir, allowed_hosts=[bad])


def test_serve_allows_the_address_it_binds(demo_dir, monkeypatch):
    import uvicorn

    from mechscope.viewer import app as viewer_app

    got = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: got.update(app=app, **kw))
    viewer_app.serve(demo_dir, host="192.168.7.7", port=9000)
    assert (got["host"], got["port"]) == ("192.168.7.7", 9000)
    assert _status(got["app"], "192.168.7.7:9000") == 200 and _status(got["app"], "localhost:9000") == 200
    assert _status(got["app"], "evil.example:9000") == 400 and _status(got["app"], "192.168.7.7:8765") == 400
    viewer_app.serve(demo_dir, host="0.0.0.0", port=9000, allowed_hosts=["viewer.lan"])
    assert _status(got["app"], "viewer.lan:9000") == 200 and _status(got["app"], "0.0.0.0:9000") == 400


def test_every_answer_carries_the_security_headers(client):
    for path in ("/", "/static/mechscope.js", "/api/models", "/api/nothing", "/artifacts/%2Fetc%2Fpasswd",
                 f"/api/models/{MODEL}/features/x/abc"):
        r = client.get(path)
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY", path
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


# ---- no absolute paths in answers; every path and parameter checked ---------------------------

def _copy(demo_dir, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(demo_dir, out, symlinks=True)
    return out


def test_no_answer_holds_an_absolute_path(demo_dir, tmp_path):
    """Every route of the API (and every raw artifact file) on a copy of the demo directory, with
    broken files added so that error answers are scanned too, never names the directory's path."""
    import json

    root = _copy(demo_dir, tmp_path)
    w = A.ArtifactWriter(root)
    broken = w.model("broken")
    broken.overview(architecture="X", n_layers=1, n_heads=1, d_model=2, vocab=3, sites=4, params=5)
    (broken.path / "overview.json").write_text("{not json")
    (broken.path / "attention.json").write_text(json.dumps({"kind": "attention", "schema_version": 9}))
    (broken.path / "features.json").write_text(json.dumps({"kind": "features", "schema_version": 1,
                                                           "store": "gone.duckdb"}))
    graph = {"schema": "mechscope.attribution_graph/1", "tokens": [1], "edges": [{"source": 0, "target": 1, "weight": 1.0}],
             "nodes": [{"id": 0, "kind": "token", "pos": 0}, {"id": 1, "kind": "latent", "layer": 0, "pos": 0, "index": 3}]}
    g = broken.graph("g", graph)  # its layer's feature set lives in the missing store
    g.write_text(g.read_text().replace('"feature_sets":{}', '"feature_sets":{"0":"s"}'))
    broken.explanation("explain-all", {"name": "h", "lines": 1, "numbers": 0, "parts": []},
                       {"mean": {"recovered": {"value": 0.5, "ci": None}}})
    (broken.path / "explanations" / "bad.json").write_text("{not json")
    broken.study("study", "a study", [{"heading": "h", "text": "t", "tables": [{"caption": "c", "columns": ["a"],
                                                                                "rows": [[1]]}]}], graphs=["g"])
    (broken.path / "studies" / "bad.json").write_text("{not json")
    from test_vision_artifacts import write_example

    write_example(root)  # a vision artifact with images
    (broken.path / "vision").mkdir()
    (broken.path / "vision" / "bad.json").write_text(json.dumps({"kind": "vision", "schema_version": 1, "name": "bad",
                                                                 "layer": "x", "panels": [{"type": "images", "images": [
                                                                     {"file": "vision/bad/gone.png"}]}]}))
    app = create_app(root)
    api = {r.path for r in app.routes if getattr(r, "path", "").startswith("/api/")}
    seen, answers = set(), []
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        def get(template, url, **params):
            r = c.get(url, params=params)
            assert r.status_code < 500, (url, r.text)
            seen.add(template)
            answers.append((url, r.status_code, r.text))
            return r.json()

        models = get("/api/models", "/api/models")["models"]
        for m in models:
            base = f"/api/models/{m['dir']}"
            for section in ("overview", "attention", "head_roles", "training", "patching", "circuits", "graphs",
                            "features", "explanations", "studies"):
                got = get(f"/api/models/{{name}}/{section}", f"{base}/{section}")
                named = ("patching", "circuits", "graphs", "explanations", "studies")
                for item in got.get("names", []) if section in named else []:
                    doc = get(f"/api/models/{{name}}/{section}/{{item}}", f"{base}/{section}/{item}")
                    for n in doc["nodes"] if section == "graphs" else []:
                        get("/api/models/{name}/graphs/{item}/nodes/{node}", f"{base}/graphs/{item}/nodes/{n['id']}")
                for s in got.get("sets", []) if section == "features" else []:
                    sid = s["set"]["set_id"]
                    get("/api/models/{name}/features", f"{base}/features", set=sid, limit=3)
                    for f in s["features"][:5]:
                        get("/api/models/{name}/features/{set_id}/{feature}", f"{base}/features/{sid}/{f['feature']}")
            for item in get("/api/models/{name}/vision", f"{base}/vision")["names"]:
                v = get("/api/models/{name}/vision/{item}", f"{base}/vision/{item}")
                for pi, panel in enumerate(v.get("panels", [])):
                    for ii, _ in enumerate(panel.get("images", [])):
                        r = c.get(f"{base}/vision/{item}/image/{pi}/{ii}")
                        assert r.status_code in (200, 404), r.text
                        seen.add("/api/models/{name}/vision/{item}/image/{panel}/{index}")
                        answers.append((item, r.status_code, r.text if r.status_code != 200 else ""))
        for p in sorted(root.rglob("*.json")):
            r = c.get(f"/artifacts/{p.relative_to(root).as_posix()}")
            answers.append((p.name, r.status_code, r.text))
    assert seen == api, api - seen  # no route left out
    assert sum(s >= 400 for _, s, _ in answers) >= 3  # the broken files' errors were scanned too
    for secret in {str(tmp_path), str(tmp_path.resolve()), str(root.resolve())}:
        leaks = [(u, s, t[:200]) for u, s, t in answers if secret in t]
        assert leaks == [], leaks
    assert get("/api/models", "/api/models")["root"] == "out"


def test_symlinks_and_outside_references_are_refused(demo_dir, tmp_path):
    import json

    root = _copy(demo_dir, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = {"kind": "overview", "schema_version": 1, "name": "SECRET", "architecture": "SECRET", "n_layers": 1,
              "n_heads": 1, "d_model": 1, "vocab": 1, "sites": 1, "params": 1}
    (outside / "overview.json").write_text(json.dumps(secret))
    (outside / "patching").mkdir()
    (outside / "patching" / "leak.json").write_text(json.dumps(secret))
    shutil_copy = __import__("shutil").copyfile
    shutil_copy(root / "zoo_induction-quick" / "features.duckdb", outside / "features.duckdb")
    m = A.ArtifactWriter(root).model("linked")
    (m.path / "overview.json").symlink_to(outside / "overview.json")
    (m.path / "patching").symlink_to(outside / "patching", target_is_directory=True)
    (m.path / "features.json").write_text(json.dumps({"kind": "features", "schema_version": 1,
                                                      "store": str(outside / "features.duckdb")}))
    m2 = A.ArtifactWriter(root).model("linked store")
    (m2.path / "features.duckdb").symlink_to(outside / "features.duckdb")
    (m2.path / "features.json").write_text(json.dumps({"kind": "features", "schema_version": 1,
                                                       "store": "features.duckdb"}))
    with TestClient(create_app(root), base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        r = c.get("/api/models/linked/overview")
        assert r.status_code == 404 and "leaves the artifact directory" in r.json()["error"]
        assert c.get("/api/models/linked/patching").json() == {"names": []}
        assert c.get("/api/models/linked/patching/leak").status_code == 404
        r = c.get("/api/models/linked/features")
        assert r.status_code == 404 and "not a file inside the artifact directory" in r.json()["error"]
        assert c.get("/api/models/linked store/features").status_code == 404
        for path in ("/artifacts/linked/overview.json", "/artifacts/linked/patching/leak.json"):
            assert c.get(path).status_code == 400, path
        texts = [c.get(u).text for u in ("/api/models", "/api/models/linked/overview", "/api/models/linked/features",
                                         "/api/models/linked%20store/features")]
        assert not any("SECRET" in t or str(tmp_path) in t for t in texts)
    # a model directory that is itself a link out of the directory: refused when the viewer starts
    man = json.loads((root / "manifest.json").read_text())
    man["models"].append({"name": "away", "dir": "away"})
    (root / "manifest.json").write_text(json.dumps(man))
    (root / "away").symlink_to(outside, target_is_directory=True)
    with pytest.raises(A.ArtifactError, match="leaves the artifact directory"):
        create_app(root)


def test_other_files_are_downloads_never_pages(client, demo_dir):
    page = demo_dir / "zoo_induction-quick" / "page.html"
    page.write_text("<script>window.__pwned = 1</script>")
    try:
        r = client.get("/artifacts/zoo_induction-quick/page.html")
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"].startswith("attachment") and r.headers["x-content-type-options"] == "nosniff"
    finally:
        page.unlink()
    r = client.get("/artifacts/zoo_induction-quick/overview.json")
    assert r.headers["content-type"] == "application/json" and r.json()["kind"] == "overview"
