"""The SmolLM2 graph study's code path end to end on a tiny random Llama with random transcoders.

The edits the interventions make are checked a second way: removing every latent of the first
transcoded layer equals running the model with that MLP output minus its latents' decoder writes
(computed from a clean run); a latent's attribution score is its finite-difference effect on the
target's demeaned logit.
"""

from __future__ import annotations

import json

import pytest
import torch

import mechscope as ms
from mechscope.core.interventions import Replace
from mechscope.core.run import run
from mechscope.core.site import Kind, Site
from mechscope.studies import smol_graphs as S
from test_graphs import llama_dir, save_transcoders  # noqa: F401  (llama_dir is a fixture)

WORDS = S.Behaviour("words", "w3 w5 {x} w7 w9", (("w11", "w21"), ("w12", "w22"), ("w13", "w23"), ("w14", "w24"),
                                                 ("w15", "w25")), " ", (("last", -1), ("word", -3)))


@pytest.fixture(scope="module")
def setup(llama_dir, tmp_path_factory):  # noqa: F811
    tc_dir = save_transcoders(tmp_path_factory.mktemp("tc"), [0, 1])
    model = ms.load(str(llama_dir))
    from mechscope.graphs import load_transcoders

    return model, tc_dir, load_transcoders(tc_dir, adapter=model)


def test_removing_a_layers_latents_is_subtracting_their_writes(setup):
    model, _, tcs = setup
    lat = S.Latents.of(model, tcs)
    ids = lat.ids("w3 w5 w11 w7 w9")
    codes = lat.codes(ids)
    W = lat.layers[0].W_dec[0]
    want = run(model, ids, interventions=[Replace(Site(Kind.MLP_OUT, 0), fn=lambda x, ctx: x - (codes[0] @ W)[None])])
    got = lat.edited(ids, lambda l, c: -c if l == 0 else None)
    assert torch.allclose(got, want.logits[0, -1].double(), atol=1e-4)
    assert not torch.allclose(got, lat.clean(ids), atol=1e-3)  # the edit does something
    assert torch.equal(lat.edited(ids, lambda l, c: None), lat.clean(ids))


def test_attribution_scores_are_first_order_effects(setup):
    model, _, tcs = setup
    lat = S.Latents.of(model, tcs)
    ids = lat.ids("w3 w5 w12 w7 w9")
    t = S.answer_id(model, " w22")
    codes, scores = lat.attribution(ids, t)
    base = float(S.demeaned(lat.clean(ids), t))
    eps = 1e-2
    for l in (0, 1):
        p = ids.shape[1] - 1
        f = int(codes[l][p].nonzero()[0])  # an active latent at the last position

        def shrink(layer, c, l=l, p=p, f=f):
            if layer != l:
                return None
            d = torch.zeros_like(c)
            d[p, f] = -eps * c[p, f]
            return d
        fd = (base - float(S.demeaned(lat.edited(ids, shrink), t))) / eps
        assert fd == pytest.approx(float(scores[l][p, f]), rel=0.05, abs=1e-4)


def test_the_study_runs_end_to_end_and_saves_its_graph_and_tables(setup, tmp_path):
    model, tc_dir, _ = setup
    cfg = S.SmolGraphsConfig(band=1, top_supernodes=2, n_boot=50, memory_gb=1.0)
    out = S.run_study(str(tc_dir), cfg, log=lambda *_: None, model=model, artifacts=str(tmp_path / "out"),
                      behaviours=[WORDS], save=tmp_path / "saved.json.gz")
    json.dumps(out)  # the result line is plain JSON
    assert set(out["checks"]) == {"words_accuracy", "words_ablation", "words_patch_shift", "words_patch_flip"}
    assert out["pass"] == all(c["pass"] for c in out["checks"].values())
    st = out["figures"]["studies"]["words"]
    assert len(st["variants"]) == 5 and 0 <= st["accuracy"] <= 1
    assert st["graph_scores"]["cpu_seconds"] > 0
    assert st["patch"]["pairs"] == 5 and len(st["patch"]["per_variant"]) == 5
    sns = st["supernodes"]
    assert sns == sorted(sns, key=lambda s: -s["influence"])
    n_tok = len(out["figures"]["studies"]["words"]["graph_prompt"].split()) + 1  # + BOS
    for s in sns:  # every supernode's latents sit at its role's position and in its band
        assert all(s["layers"][0] <= la <= s["layers"][1] for la, _, _, _ in s["latents"])
        assert all(p == s["pos"] for _, p, _, _ in s["latents"]) and S.role_of(WORDS, s["pos"], n_tok, True) == s["role"]
        assert s["pos"] != 0 and s["from_word"] == (s["pos"] >= n_tok - 3)  # BOS has no latents; the word is at -3
    for a in st["ablations"]:
        assert len(a["per_variant"]) == 5 and a["difference"]["ci"][0] <= a["difference"]["mean"] <= a["difference"]["ci"][1]
        assert a["supernode"] in {s["name"] for s in sns if s["from_word"]}
        assert a["control_mean"] == a["ablated_mean"] >= a["control_same_place_mean"]  # the control is size-matched

    from mechscope.artifacts import read_artifacts
    from mechscope.report import write_report

    m = read_artifacts(tmp_path / "out").model(model.name)
    assert m.graph_names() == ["smol-words"] and m.study_names() == ["smol-graphs"]
    study = m.study("smol-graphs")
    assert study["graphs"] == ["smol-words"] and set(study["checks"]) == set(out["checks"])
    html = open(write_report(tmp_path / "out")).read()
    assert "words: interventions in the real model" in html and "supernode" in html

    line, graphs = S.load_result(tmp_path / "saved.json.gz")  # the saved copy makes the same artifacts
    want = json.loads(json.dumps(out))
    assert want["config"]["transcoders"] == str(tc_dir) and line["config"]["transcoders"] == tc_dir.name  # no path
    want["config"]["transcoders"] = tc_dir.name
    assert line == want and set(graphs) == {"words"}
    S.save_artifacts(tmp_path / "again", line, graphs)
    again = read_artifacts(tmp_path / "again").model(model.name)
    assert again.study("smol-graphs")["sections"] == study["sections"]
    assert again.graph("smol-words")["nodes"] == m.graph("smol-words")["nodes"]

    from fastapi.testclient import TestClient

    from mechscope.viewer import create_app

    with TestClient(create_app(tmp_path / "out"), base_url="http://127.0.0.1:8765") as c:
        d = m.path.name
        assert c.get(f"/api/models/{d}/studies").json() == {"names": ["smol-graphs"]}
        got = c.get(f"/api/models/{d}/studies/smol-graphs").json()
        assert got["sections"] == study["sections"] and got["graphs"] == ["smol-words"]
        assert c.get(f"/api/models/{d}/studies/nope").status_code == 404


def test_the_demo_section_writes_the_saved_results(setup, tmp_path, monkeypatch):
    model, tc_dir, _ = setup
    saved = tmp_path / "saved.json.gz"
    S.run_study(str(tc_dir), S.SmolGraphsConfig(band=1, top_supernodes=1, n_boot=20), log=lambda *_: None,
                model=model, behaviours=[WORDS], save=saved)
    monkeypatch.setattr(S, "SHIPPED", saved)
    from mechscope import artifacts as A
    from mechscope.demo.smol_studies import smol_studies_available, smol_studies_section

    assert smol_studies_available()
    said = []
    smol_studies_section(A.ArtifactWriter(tmp_path / "out"), log=said.append)
    m = A.read_artifacts(tmp_path / "out").model(model.name)
    assert m.study_names() == ["smol-graphs"] and m.graph_names() == ["smol-words"]
    assert "words_accuracy" in said[0]


def test_unknown_studies_are_named(setup):
    model, tc_dir, _ = setup
    with pytest.raises(ValueError, match="unknown studies"):
        S.run_study(str(tc_dir), S.SmolGraphsConfig(studies=("rhymes",)), log=lambda *_: None, model=model)


def test_bos_has_no_latents_anywhere(setup):
    model, _, tcs = setup
    plain, lat = S.Latents.of(model, tcs), S.Latents.of(model, tcs, bos=True)
    ids = lat.ids("w3 w5 w11 w7 w9")
    assert ids.shape[1] == 6 and any(bool(c[0].any()) for c in plain.codes(ids).values())  # active there unzeroed
    codes, scores = lat.attribution(ids, S.answer_id(model, " w21"))
    seen = []
    lat.edited(ids, lambda l, c: seen.append(c) or None)
    for c in [*lat.codes(ids).values(), *codes.values(), *scores.values(), *seen]:
        assert not c[0].any() and c[1:].any()
