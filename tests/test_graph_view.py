"""Attribution graphs saved as artifacts and served by the viewer: the writer checks what it saves,
the API answers a real graph (a latent's dashboard from the feature store, or why there is none),
and refuses bad names, node ids and numbers with 4xx JSON errors."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from graph_support import MODEL, build_graph_artifacts
from mechscope import artifacts as A
from mechscope.viewer import create_app


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return build_graph_artifacts(tmp_path_factory.mktemp("graphview") / "out")


@pytest.fixture(scope="module")
def client(saved):
    with TestClient(create_app(saved[0]), base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        yield c


def test_a_saved_graph_reads_back_as_written(saved):
    root, doc = saved
    m = A.read_artifacts(root).model(MODEL)
    g = m.graph("tiny")
    assert m.graph_names() == ["tiny"] and m.summary()["graphs"] == ["tiny"]
    assert g["nodes"] == doc["nodes"] and g["edges"] == doc["edges"] and g["tokens"] == doc["tokens"]
    assert g["feature_sets"] == {"0": "tc.0"} and g["prompt"] == " ".join(doc["token_text"]) and g["kind"] == "graph"
    assert all("influence" in n for n in g["nodes"])
    # the kept logits carry all the weight of influence; the latents have some
    assert sum(n["influence"] for n in g["nodes"] if n["kind"] == "latent") > 0


def test_the_writer_refuses_what_is_not_a_graph_or_names_missing_sets(saved, tmp_path):
    _, doc = saved
    m = A.ArtifactWriter(tmp_path / "out").model(MODEL)
    with pytest.raises(A.ArtifactError, match="not an attribution graph"):
        m.graph("g", {"nodes": [], "edges": []})
    with pytest.raises(A.ArtifactError, match="joins nodes the graph does not keep"):
        m.graph("g", dict(doc, edges=[{"source": 0, "target": 10**6, "weight": 1.0}]))
    with pytest.raises(A.ArtifactError, match="appears twice"):
        m.graph("g", dict(doc, nodes=doc["nodes"] + doc["nodes"][:1]))
    with pytest.raises(A.ArtifactError, match="no feature store; pass store="):
        m.graph("g", doc, feature_sets={0: "tc.0"})
    with pytest.raises(A.ArtifactError, match="invalid graph name"):
        m.graph("../g", doc)
    with pytest.raises(A.ArtifactError, match="does not exist"):
        m.graph("g", tmp_path / "missing.json")
    path = tmp_path / "graph.json"
    path.write_text("{cut")
    with pytest.raises(A.ArtifactError, match="is not valid JSON.*write it again with `mechscope graph"):
        m.graph("g", path)
    path.write_text(json.dumps(doc))
    m.graph("from-file", path)  # a graph.json as `mechscope graph --out` writes it
    assert A.read_artifacts(tmp_path / "out").model(MODEL).graph("from-file")["feature_sets"] == {}
    store = saved[0].parent / "tc-features.duckdb"
    with pytest.raises(A.ArtifactError, match=r"feature set 'tc\.9' \(layer 1\) is not in the model's feature store"):
        m.graph("g", doc, feature_sets={1: "tc.9"}, store=store)
    with pytest.raises(A.ArtifactError, match="keys are layers"):
        m.graph("g", doc, feature_sets={"1": "tc.0"}, store=store)


def test_the_graph_routes_answer(client, saved):
    _, doc = saved
    base = f"/api/models/{MODEL}/graphs"
    assert client.get(base).json() == {"names": ["tiny"]}
    g = client.get(base + "/tiny").json()
    assert g["nodes"] == doc["nodes"] and len(g["edges"]) == len(doc["edges"]) and g["dashboards"] is True
    by_kind = {k: [n for n in doc["nodes"] if n["kind"] == k] for k in ("latent", "error", "token", "logit")}
    l0 = next(n for n in by_kind["latent"] if n["layer"] == 0)
    r = client.get(f"{base}/tiny/nodes/{l0['id']}").json()
    assert r["feature_set"] == "tc.0" and r["dashboard"]["feature"] == l0["index"]
    assert r["dashboard"]["explanations"][0]["explanation"] == f"fires on t{l0['index']}"
    assert r["dashboard"]["top"][0]["tokens"] == ["a", f"t{l0['index']}", "c"]
    incoming = [e for e in doc["edges"] if e["target"] == l0["id"]]
    assert r["incoming"] == sorted(incoming, key=lambda e: -abs(e["weight"]))[:8]
    top1 = client.get(f"{base}/tiny/nodes/{l0['id']}", params={"top": 1}).json()
    assert len(top1["incoming"]) == min(1, len(incoming))
    l1 = next(n for n in by_kind["latent"] if n["layer"] == 1)  # layer 1 has no feature set
    r = client.get(f"{base}/tiny/nodes/{l1['id']}").json()
    assert r["dashboard"] is None and "no feature store holds the dashboards of layer 1" in r["note"]
    r = client.get(f"{base}/tiny/nodes/{by_kind['error'][0]['id']}").json()
    assert r["dashboard"] is None and "only latents" in r["note"]
    assert client.get(f"/api/models/{MODEL}/overview").json()["summary"]["graphs"] == ["tiny"]


@pytest.mark.parametrize("path, status, words", [
    ("/api/models/nope/graphs", 404, "no model 'nope'"),
    (f"/api/models/{MODEL}/graphs/other", 404, "has no graph 'other'"),
    (f"/api/models/{MODEL}/graphs/..manifest", 404, "has no graph"),
    (f"/api/models/{MODEL}/graphs/{'x' * 300}", 400, "invalid request"),
    (f"/api/models/{MODEL}/graphs/tiny/nodes/999999", 404, "keeps no node 999999"),
    (f"/api/models/{MODEL}/graphs/tiny/nodes/-1", 400, "node"),
    (f"/api/models/{MODEL}/graphs/tiny/nodes/abc", 400, "node"),
    (f"/api/models/{MODEL}/graphs/tiny/nodes/{2**40}", 400, "node"),
    (f"/api/models/{MODEL}/graphs/tiny/nodes/0?top=-1", 400, "top"),
    (f"/api/models/{MODEL}/graphs/tiny/nodes/0?top=nan", 400, "top"),
])
def test_bad_graph_requests_are_4xx_json(client, path, status, words):
    r = client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text)
    assert words in r.json()["error"], r.json()
    assert "Traceback" not in r.text and "/tmp" not in r.text


def test_a_graph_without_a_store_serves_no_dashboards(saved, tmp_path):
    _, doc = saved
    root = tmp_path / "out"
    A.ArtifactWriter(root).model(MODEL).graph("bare", doc)
    with TestClient(create_app(root), base_url="http://127.0.0.1:8765") as c:
        assert c.get(f"/api/models/{MODEL}/graphs/bare").json()["dashboards"] is False
        lat = next(n for n in doc["nodes"] if n["kind"] == "latent")
        r = c.get(f"/api/models/{MODEL}/graphs/bare/nodes/{lat['id']}").json()
        assert r["dashboard"] is None and "no feature store" in r["note"]
