"""The demo's modular-addition section and the driver: artifacts a second reader can check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

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
    modadd_section(A.ArtifactWriter(out), "modadd-quick", scratch=out)  # the copy shipped in the package
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


def test_quick_demo_streams_progress_into_a_log_and_reuses_its_artifacts(cache, monkeypatch):
    """`mechscope demo --quick` with its output in a pipe (as `make demo > log`): timestamped lines
    arrive as each part starts, the shipped networks are analysed (nothing trained), and a second
    build recomputes nothing."""
    out = cache / "out"
    env = dict(os.environ, MECHSCOPE_CACHE=str(cache / "cache"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("MECHSCOPE_PROGRESS", None)
    cmd = [sys.executable, "-c", "from mechscope.cli import main; main()", "demo", "--quick", "--no-serve",
           "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    arrivals = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    proc.wait()
    log = "\n".join(x for _, x in arrivals)
    assert proc.returncode == 0, log
    parts = [(t, x) for t, x in arrivals if re.match(r"^\[\d\d:\d\d:\d\d\] demo \d/3: ", x)]
    assert [x.split("] ", 1)[1] for _, x in parts] == [
        "demo 1/3: zoo induction model", "demo 2/3: zoo modular-addition model", "demo 3/3: the report"]
    assert parts[1][0] - parts[0][0] > 0.2 and "\r" not in log  # streamed as it went, no bar redraws
    assert "induction-quick: the copy shipped in the package" in log
    assert "modadd-quick: the copy shipped in the package" in log
    assert not (cache / "cache" / "zoo").exists()  # nothing was trained
    names = A.read_artifacts(out).model_names()
    assert names == ["zoo:induction-quick", "zoo:modadd-quick"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "zoo:modadd-quick" in html and "zoo:induction-quick" in html

    import mechscope.demo as demo

    calls = []
    for key in ("induction_section", "modadd_section"):
        real = getattr(demo, key)
        monkeypatch.setattr(demo, key, lambda w, name, real=real, **kw: (calls.append(name), real(w, name, **kw)))
    # the same networks and their artifacts are there: nothing is recomputed
    again = build_demo(out, quick=True, threads=1)
    assert calls == [] and again["sections"] == ["induction", "modadd"]
    build_demo(out, quick=True, threads=1, fresh=True)
    assert calls == ["induction-quick", "modadd-quick"]
    # --retrain trains the networks here (the quick recipes shortened to 30 steps): the shipped
    # copies, whose settings these no longer are, are left alone, and the sections are redone
    from mechscope import zoo

    for recipe in ("induction", "modadd"):
        monkeypatch.setitem(zoo.RECIPES[recipe].variants["quick"], "steps", 30)
    build_demo(out, quick=True, threads=1, retrain=True)
    assert calls[2:] == ["induction-quick", "modadd-quick"]
    for name in ("induction-quick", "modadd-quick"):
        assert zoo.open_run(name).done and zoo.open_run(name).config()["hparams"]["steps"] == 30
        assert A.read_artifacts(out).model(f"zoo:{name}").overview()["notes"]["steps"] == 30
