"""Dictionary files in the SAELens layout: exact round trips, files written by sae-lens itself load
and give sae-lens's outputs, and (when the sae-lens environment exists) sae-lens loads ours."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mechscope.dictionaries as dl

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
SAE_VENV = Path(__file__).parent.parent / ".venv-sae" / "bin" / "python"


def _randomised(arch: str, **kw) -> dl.Dictionary:
    d = dl.build(arch, seed=3, **kw)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (0.2 if p.dim() == 1 else 0.0))
        if isinstance(d, dl.BatchTopKSAE):
            d.threshold.fill_(0.15)
        if arch == "jumprelu":
            d.set_threshold_(0.3 * torch.rand(d.config.d_sae, generator=g) + 0.05)  # thresholds are positive
    return d.eval()


CASES = {
    "relu": dict(d_in=12, d_sae=40, l1_coefficient=2.0, site="blocks.1.hook_resid_post", model="tiny"),
    "topk": dict(d_in=12, d_sae=40, k=5),
    "batchtopk": dict(d_in=12, d_sae=40, k=5),
    "jumprelu": dict(d_in=12, d_sae=40),
    "transcoder": dict(d_in=12, d_out=9, d_sae=40, k=4, site="ln2.1", site_out="mlp_out.1"),
    "crosscoder": dict(d_in=6, n_sources=2, d_sae=40, k=4),
    "batchtopk-crosscoder": dict(d_in=6, n_sources=2, d_sae=40, k=4),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_save_load_round_trip_is_exact(tmp_path, arch):
    d = _randomised(arch, **CASES[arch])
    dl.save(d, tmp_path / arch)
    back = dl.load(tmp_path / arch)
    assert type(back) is type(d) and back.config == d.config
    assert dl.weights_equal(d, back)
    x = torch.randn(32, *d.in_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(d(x), back(x)) and torch.equal(d.encode(x), back.encode(x))


def test_saelens_architecture_names_in_cfg(tmp_path):
    names = {}
    for arch in CASES:
        dl.save(_randomised(arch, **CASES[arch]), tmp_path / arch)
        names[arch] = json.loads((tmp_path / arch / "cfg.json").read_text())["architecture"]
    assert names == {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
                     "transcoder": "mechscope.transcoder", "crosscoder": "mechscope.crosscoder",
                     "batchtopk-crosscoder": "mechscope.batchtopk-crosscoder"}
    cfg = json.loads((tmp_path / "relu" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["d_in"] == 12


@pytest.mark.parametrize("name, arch", [("standard", "relu"), ("topk", "topk"), ("jumprelu", "jumprelu")])
def test_a_file_written_by_saelens_loads_and_gives_its_outputs(name, arch):
    d = dl.load(FIXTURES / name)
    assert d.architecture == arch and d.config.site == "blocks.1.hook_resid_post"
    assert d.config.model == "tiny-test-model"
    want = load_file(str(FIXTURES / name / "expected.safetensors"))
    with torch.no_grad():
        codes = d.encode(want["x"])
        recon = d.decode(codes)
    torch.testing.assert_close(codes, want["codes"], rtol=0, atol=1e-6)
    torch.testing.assert_close(recon, want["recon"], rtol=0, atol=1e-6)
    assert ((codes != 0) == (want["codes"] != 0)).all()  # the same latents fire


def test_batchtopk_saved_as_jumprelu_loads_as_jumprelu_with_the_same_outputs(tmp_path):
    d = _randomised("batchtopk", **CASES["batchtopk"])
    dl.save(d, tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    del cfg["mechscope"]  # what SAELens sees: a JumpReLU SAE
    (tmp_path / "b" / "cfg.json").write_text(json.dumps(cfg))
    j = dl.load(tmp_path / "b")
    assert j.architecture == "jumprelu"
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(j.encode(x), d.encode(x))
        torch.testing.assert_close(j(x), d(x), rtol=1e-6, atol=1e-6)


def test_damaged_or_foreign_files_are_named(tmp_path):
    d = _randomised("topk", **CASES["topk"])
    dl.save(d, tmp_path / "t")
    w = tmp_path / "t" / "sae_weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(dl.DictionaryFileError, match="corrupt"):
        dl.load(tmp_path / "t")
    dl.save(d, tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "cfg.json").read_text())
    del cfg["mechscope"]
    cfg["architecture"] = "gated"
    (tmp_path / "g" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(dl.DictionaryFileError, match="'gated' has no mechscope counterpart"):
        dl.load(tmp_path / "g")


# `make test` creates .venv-sae and sets this, so that a missing environment fails instead of skipping
REQUIRE_SAE_VENV = os.environ.get("MECHSCOPE_REQUIRE_SAE_VENV") == "1"


@pytest.mark.skipif(not SAE_VENV.exists() and not REQUIRE_SAE_VENV,
                    reason="needs .venv-sae (bash benchmarks/setup_env.sh sae; make test creates it)")
def test_saelens_loads_our_files_and_agrees(tmp_path):
    assert SAE_VENV.exists(), f"{SAE_VENV} is missing: run bash benchmarks/setup_env.sh sae"
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(4))
    ours = {}
    for arch in ("relu", "topk", "jumprelu", "batchtopk"):
        d = _randomised(arch, **CASES[arch])
        dl.save(d, tmp_path / arch)
        save_file({"x": x}, str(tmp_path / arch / "input.safetensors"))
        with torch.no_grad():
            ours[arch] = (d.encode(x), d(x))
    script = Path(__file__).parent / "fixtures" / "make_saelens_fixture.py"
    proc = subprocess.run([str(SAE_VENV), str(script), "--check", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for arch, (codes, recon) in ours.items():
        got = load_file(str(tmp_path / arch / "saelens_outputs.safetensors"))
        torch.testing.assert_close(got["codes"], codes, rtol=0, atol=1e-6, msg=arch)
        torch.testing.assert_close(got["recon"], recon, rtol=0, atol=1e-5, msg=arch)
