"""mechscope explain-all: a zoo network as code, measured under each ablation, with its result line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mechscope.cli import app
from mechscope.core.errors import MechscopeError
from mechscope.studies import explain_all as ea


def test_unregistered_recipe_names_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))  # the shipped copy of the network
    monkeypatch.delitem(ea.HYPOTHESES, "induction")
    with pytest.raises(MechscopeError, match="no explanation registered for zoo recipe .induction..*fmnist-cnn, modadd, tms"):
        ea.explain_all("induction-quick")


def test_checks_need_every_ablation_and_every_instance():
    def res(v, groups=None):
        return {"recovered": {"value": v}, "groups": groups or {}}

    out = {"results": {"mean": res(0.995), "zero": res(0.999, {"a[0]": {"value": 0.999}, "a[1]": {"value": 0.98}})}}
    got = ea.checks(out)
    assert got["recovered_mean"]["pass"] and got["recovered_zero"]["pass"]
    assert not got["every_instance_zero"]["pass"] and "a[1]" in got["every_instance_zero"]["got"]


@pytest.mark.slow
def test_explain_all_modadd_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))  # zoo:modadd-frac05 is shipped in the package
    result = CliRunner().invoke(app, ["explain-all", "modadd-frac05", "--n-boot", "100"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "component" in text and "resid_post.0[positions=[2]]" in text and "vs resample" in text
    line = json.loads(text.strip().splitlines()[-1])
    assert line["kind"] == "benchmark" and set(line["checks"]) == {"recovered_mean", "recovered_resample",
                                                                   "recovered_zero"}
    assert line["figures"]["numbers"] > 0 and line["figures"]["lines"] > 0
    assert line["figures"]["restricted_loss"] < line["figures"]["excluded_loss"]
    assert line["pass"], line["checks"]


@pytest.mark.slow
def test_explain_all_induction_clears_the_bar(tmp_path, monkeypatch):
    """The registered rules (circuits.induction_code) on the shipped zoo:induction, scored on the recipe's
    evaluation batch: >= 0.99 against mean and resample ablation; no zero ablation (a norm's divisor)."""
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    out = ea.explain_all("induction", n_boot=100)
    assert set(out["results"]) == {"mean", "resample"}
    got = ea.checks(out)
    assert all(c["pass"] for c in got.values()), got
    assert out["hypothesis"]["numbers"] == 13  # 4 offsets, 4 x 2 match weights, 1 divisor


def test_induction_needs_only_its_hypothesis(tmp_path, monkeypatch):
    """The registry's one line: a hypothesis for the induction recipe (here every head as is) runs."""
    import torch

    from mechscope.core.hypothesis import AsIs, Hypothesis

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))  # zoo:induction-quick is shipped
    monkeypatch.setitem(ea.HYPOTHESES, "induction",
                        lambda model: Hypothesis("as is", (AsIs("attn.z.0"), AsIs("attn.z.1"))))
    out = ea.explain_all("induction-quick", ablations=("mean",), n_boot=50)
    assert out["results"]["mean"]["recovered"]["value"] == 1.0
    assert json.loads(json.dumps(out))["recipe"] == "induction"  # what --json prints is plain JSON
    ids = torch.tensor([[1, 2, 3, 1, 2, 3]])
    logits = torch.full((1, 6, 5), -1e4)
    logits[0, torch.arange(5), ids[0, 1:]] = 0.0  # a perfect next-token prediction everywhere
    repeat = torch.tensor([[False, False, False, True, True]])
    assert ea.repeat_loss(logits, (ids, repeat)).item() < 1e-6


def sample_explanation() -> dict:
    """An explain-all output with known values (what `explain_all` returns, shortened)."""
    part = {"component": "resid_post.0[positions=[2]]", "kind": "code", "name": "angle_sum_features", "lines": 17,
            "numbers": 1408}
    result = {"recovered": {"value": 0.9991, "ci": [0.998, 0.9995]}, "loss_clean": 1e-7, "loss_hypothesis": 2e-3,
              "loss_ablated": 4.8, "parts": [{"alone": {"value": 0.9997}, "unexplained_share": 0.4321}], "groups": {}}
    zero = dict(result, recovered={"value": 0.9876, "ci": [0.9811, 0.9902]},
                groups={"inst[0]": {"value": 0.9935}, "inst[1]": {"value": 0.9712}})
    return {"name": "modadd", "dataset": "test split", "figures": {"excluded_loss": 5.8},
            "hypothesis": {"name": "modadd as code", "claim": "embed -> Fourier", "lines": 17, "numbers": 1408,
                           "parts": [part]},
            "results": {"mean": result, "zero": zero}}


def test_the_report_shows_an_explanation_artifact(tmp_path):
    from mechscope.report import write_report

    path = ea.write_artifact(sample_explanation(), str(tmp_path / "out"))
    assert path.name == "explain-all.json" and path.parent.name == "explanations"
    text = write_report(tmp_path / "out").read_text()
    assert "Explanations as code" in text and "angle_sum_features" in text and "alone vs zero" in text
    body = text[:text.index('<script type="application/json"')]  # the tables themselves, not the embedded data
    assert "0.9991" in body and "[0.998, 0.9995]" in body and "0.9876" in body and "[0.9811, 0.9902]" in body
    assert "share of unexplained (mean)" in body and "0.4321" in body and "0.9997" in body
    assert "17 lines, 1408 numbers" in body and "inst[1]: 0.9712" in body


def test_the_viewer_serves_an_explanation_artifact(tmp_path):
    from fastapi.testclient import TestClient

    from mechscope.viewer import create_app

    ea.write_artifact(sample_explanation(), str(tmp_path / "out"))
    with TestClient(create_app(tmp_path / "out"), base_url="http://127.0.0.1:8765") as c:
        models = c.get("/api/models").json()["models"]
        assert models[0]["name"] == "zoo:modadd" and models[0]["explanations"] == ["explain-all"]
        base = "/api/models/zoo:modadd/explanations"
        assert c.get(base).json() == {"names": ["explain-all"]}
        got = c.get(base + "/explain-all").json()
        assert got["results"]["zero"]["recovered"]["value"] == 0.9876 and got["hypothesis"]["numbers"] == 1408
        for bad, status in (("nope", 404), ("..%2Fexplain-all", 404), ("x" * 201, 400)):
            r = c.get(f"{base}/{bad}")
            assert r.status_code == status and "error" in r.json(), (bad, r.text)
        assert c.get("/api/models/other/explanations").status_code == 404
