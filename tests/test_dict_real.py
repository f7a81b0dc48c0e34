"""Dictionaries on the real networks (slow): a small TopK SAE on SmolLM2-135M and on MiniLM, trained
from the command line on Python source text, spliced back in; the full-size runs are in the report."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechscope.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "stdlib.txt"
    p.write_text("\n\n".join(Path(m.__file__).read_text() for m in (tarfile, json.decoder, pytest)))
    return p


@pytest.mark.parametrize("model, site", [("smollm2-135m", "resid_post.6"), ("minilm-l6", "resid_post.2")])
def test_cli_trains_a_topk_sae_and_splices_it_in(tmp_path, text, model, site):
    res = CliRunner().invoke(app, ["dict", "train", model, "--site", site, "--out", str(tmp_path), "--d-sae", "768",
                                   "-k", "16", "--tokens", "24000", "--seq-len", "64", "--text", str(text),
                                   "--eval-sequences", "8", "--batch", "1024", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output.strip().splitlines()[-1])
    assert s["l0"] == pytest.approx(16, abs=1e-6)  # TopK: exactly k on every held-out row
    assert 0 < s["fvu"] < 1
    # the dictionary is far better than deleting the residual stream, and no better than the model
    assert s["loss_clean"] <= s["loss_spliced"] + 1e-6 and s["recovered_vs_zero"] > 0.5
    rep = json.loads((tmp_path / s["name"] / "report.json").read_text())
    assert rep["study"]["drop_first"] == 1 and rep["rows_trained"] == (24000 // 1024) * 1024
    shown = CliRunner().invoke(app, ["dict", "show", str(tmp_path / s["name"])])
    assert shown.exit_code == 0 and "topk" in shown.output
