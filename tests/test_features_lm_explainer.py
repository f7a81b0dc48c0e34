"""The optional language-model explainer, against a fake OpenAI-compatible server on 127.0.0.1."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

import mechscope as ms
from mechscope.core import Kind, Site
from mechscope.features import FeatureSet, FeatureStore, build_dashboards
from mechscope.features.autointerp import heldout
from mechscope.features.lm_explainer import LMExplainer, parse_rule
from mechscope.features.pipeline import explain_set, feature_values
from mechscope.features.rules import CurrentToken, InsideCode, PreviousToken, TokenRegex, TokenTable
from mechscope.models.tiny import TinyConfig, TinyTransformer

IDS = torch.randint(0, 12, (20, 10), generator=torch.Generator().manual_seed(0))
WORD = lambda t: f"w{t}"  # noqa: E731
TABLE = TokenTable.build(IDS, WORD)


def test_replies_become_rules_of_the_grammar():
    rule, desc = parse_rule('Sure! {"rule": "tokens", "values": ["w3", "w7", "zzz"], "description": "threes"}', TABLE)
    assert rule == CurrentToken(frozenset({3, 7})) and desc == "threes"
    assert parse_rule('{"rule": "previous_tokens", "values": ["w5"]}', TABLE)[0] == PreviousToken(frozenset({5}))
    assert isinstance(parse_rule('{"rule": "regex", "pattern": "^w1[01]$"}', TABLE)[0], TokenRegex)
    assert parse_rule('{"rule": "inside_code"}', TABLE)[0] == InsideCode()
    for bad in ("no json here", '{"values": []}', '{"rule": "tokens", "values": ["nope"]}',
                '{"rule": "regex", "pattern": "("}', '{"rule": "telepathy"}'):
        with pytest.raises(ValueError):
            parse_rule(bad, TABLE)
    with pytest.raises(ValueError, match="http"):
        LMExplainer("file:///etc/passwd", "m")


class _Server:
    """A chat-completions endpoint that answers every request with `reply` and records the requests."""

    def __init__(self, reply: str):
        outer = self
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def _model_and_features():
    torch.manual_seed(0)
    model = ms.wrap(TinyTransformer(TinyConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=10,
                                               d_vocab=12)))
    return model, FeatureSet.neurons(Site(Kind.MLP_POST, 0), units=range(4), d=32)


def test_the_language_models_rule_goes_through_the_same_scorers(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LM_KEY", "secret")
    server = _Server('{"rule": "tokens", "values": ["w3", "w4"], "description": "threes and fours"}')
    try:
        model, feats = _model_and_features()
        lm = LMExplainer(server.url, "fake-model", api_key_env="TEST_LM_KEY")
        with FeatureStore(tmp_path / "f.duckdb") as store:
            build_dashboards(model, feats, IDS, store, dataset="random", progress=False)
            res = explain_set(model, feats, IDS, store, dataset="random", decode=WORD, causal_limit=1, lm=lm,
                              progress=False)
            stored = store.page(feats.name, res.lm_rows[0]["feature"])["explanations"]
    finally:
        server.close()
    assert len(res.lm_rows) == res.live == len(server.requests) > 0
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "fake-model"
    assert req["auth"] == "Bearer secret" and "[[" in req["body"]["messages"][0]["content"]
    assert [r["rank"] for r in stored] == [0, 1] and "w3" in stored[1]["explanation"]
    # the held-out numbers are those of the rule scored directly on the held-out half
    values = feature_values(model, feats, IDS)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    test_docs = order[10:].sort().values
    row = res.lm_rows[0]
    f = row["feature"]
    spec = json.loads(row["spec"])
    assert spec["description"] == "threes and fours" and "fake-model" in spec["explainer"]
    fit_docs = order[:10].sort().values
    m = torch.isin(IDS[fit_docs], torch.tensor([3, 4]))
    from mechscope.features.rules import Explanation
    expl = Explanation(CurrentToken(frozenset({3, 4})), float(values[fit_docs, :, f][m].double().mean()))
    held = heldout(expl, values[test_docs, :, f], TABLE.subset(test_docs))
    assert row["corr"] == pytest.approx(held.corr) and row["precision"] == pytest.approx(held.precision)
    assert sum(r["loss_recovered"] is not None for r in res.lm_rows) == 1  # causal_limit applies to both


def test_an_unreadable_reply_scores_zero_and_keeps_the_reason(tmp_path):
    server = _Server("I think it is about fruit.")
    try:
        model, feats = _model_and_features()
        res = explain_set(model, feats, IDS, None, dataset="random", decode=WORD, lm=LMExplainer(server.url, "m"),
                          progress=False)
    finally:
        server.close()
    assert res.lm_rows and all(r["precision"] == 0 for r in res.lm_rows)
    assert "no JSON object" in json.loads(res.lm_rows[0]["spec"])["error"]
    # an endpoint that is not there: the same, with the connection error
    res = explain_set(model, feats, IDS[:6], None, dataset="random", decode=WORD,
                      lm=LMExplainer("http://127.0.0.1:9/v1", "m", timeout=2), progress=False)
    assert all("error" in json.loads(r["spec"]) for r in res.lm_rows)
