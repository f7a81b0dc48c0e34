"""The demo's modular-addition section and the driver: artifacts a second reader can check."""

from __future__ import annotations

import pytest
import torch

from mechscope import artifacts as A
from mechscope.demo import build_demo
from mechscope.demo.modadd import modadd_section


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tmp_path


def test_modadd_section_writes_every_section_it_names(cache):
    out = cache / "out"
    modadd_section(A.ArtifactWriter(out), "modadd-quick", steps=40, scratch=out)
    m = A.read_artifacts(out).model("zoo:modadd-quick")
    ov = m.overview()
    assert ov["n_layers"] == 1 and ov["vocab"] == 114 and isinstance(ov["notes"]["key_frequencies"], list)
    assert m.attention()["tokens"] == ["17", "42", "="] and len(m.attention()["patterns"][0]) == 4
    assert set(m.patching_names()) == {"heads", "resid"}
    resid = m.patching("resid")
    assert resid["cols"] == ["0:a", "1:b", "2:="] and len(resid["rows"]) == 3
    # patching the whole residual stream after the block restores the clean run exactly
    assert resid["values"][2][2] == pytest.approx(1.0, abs=1e-3)
    assert "train_loss" in m.training()["metrics"]
    assert m.features_info()["sets"] == ["mlp.post.0 neurons (top variance)"]
    assert not list(out.glob(".build-*"))  # the scratch store is removed once copied in


def test_quick_demo_builds_both_zoo_models_and_a_report(cache, monkeypatch):
    import mechscope.demo as demo

    real_ind, real_mod = demo.induction_section, demo.modadd_section
    calls = []

    def ind(w, name, **kw):
        calls.append(name)
        real_ind(w, name, **kw)

    def mod(w, name, **kw):
        calls.append(name)
        real_mod(w, name, **kw)

    monkeypatch.setattr(demo, "induction_section", ind)
    monkeypatch.setattr(demo, "modadd_section", mod)
    from mechscope.zoo import RECIPES
    for recipe in ("induction", "modadd"):  # the demo's quick networks, shortened to 30 steps
        monkeypatch.setitem(RECIPES[recipe].variants["quick"], "steps", 30)
    info = build_demo(cache / "out", quick=True, threads=1)
    assert info["sections"] == ["induction", "modadd"] and info["seconds"]["total"] > 0
    names = A.read_artifacts(cache / "out").model_names()
    assert names == ["zoo:induction-quick", "zoo:modadd-quick"]
    html = (cache / "out" / "report.html").read_text(encoding="utf-8")
    assert "zoo:modadd-quick" in html and "zoo:induction-quick" in html
    # a second run finds the same trained networks and its own artifacts: nothing is recomputed
    again = build_demo(cache / "out", quick=True, threads=1)
    assert calls == ["induction-quick", "modadd-quick"] and again["sections"] == info["sections"]
    build_demo(cache / "out", quick=True, threads=1, fresh=True)
    assert calls[2:] == ["induction-quick", "modadd-quick"]
