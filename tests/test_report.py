"""The HTML report: one self-contained file (nothing external), every section of every model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mechscope import artifacts as A
from mechscope.report import write_report
from mechscope.report.html import SECTIONS


@pytest.fixture(scope="module")
def demo_dir(demo_artifacts, tmp_path_factory):
    import shutil

    out = tmp_path_factory.mktemp("report") / "out"
    shutil.copytree(demo_artifacts, out)
    # a second model with only some artifacts: its missing sections say so
    m = A.ArtifactWriter(out).model("partial </script> model")
    m.overview(architecture="X", n_layers=1, n_heads=1, d_model=2, vocab=3, sites=4, params=5)
    return out


@pytest.fixture(scope="module")
def report(demo_dir):
    path = write_report(demo_dir)
    return path, path.read_text(encoding="utf-8")


def test_no_external_resources(report):
    path, text = report
    assert path.name == "report.html" and path.parent.name == "out"
    # no src/href/url() that points anywhere but into the page itself
    refs = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"'\s>]+)""", text, flags=re.I)
    assert refs and all(r.startswith(("#", "data:")) for r in refs), [r for r in refs if not r.startswith("#")]
    assert not re.search(r"url\(\s*['\"]?(?!data:|#)", text)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text, flags=re.I)
    assert "@import" not in text and "<link" not in text
    assert not re.search(r"<script[^>]+src=", text)
    assert "Content-Security-Policy" in text  # a browser would refuse to fetch anything anyway


def test_every_section_of_every_model_is_present(report):
    _, text = report
    for i in (0, 1):
        assert f'id="model-{i}"' in text
        for key in SECTIONS:
            assert f'id="m{i}-{key}"' in text, (i, key)
    for kind in ("overview", "attention", "head_roles", "patching", "circuit", "features", "training"):
        assert f'data-kind="{kind}" data-model="0"' in text, kind
    assert 'id="m0-patching-heads"' in text and 'id="m0-patching-resid_pre"' in text and 'id="m0-circuit-eap"' in text
    assert text.count("Not in the artifacts.") == 6  # the partial model has only its overview


def test_embedded_data_round_trips_and_is_script_safe(report):
    _, text = report
    m = re.search(r'<script type="application/json" id="ms-data">(.*?)</script>', text, flags=re.S)
    data = json.loads(m.group(1))
    names = [x["name"] for x in data["models"]]
    assert names == ["zoo:induction-quick", "partial </script> model"]
    first = data["models"][0]
    assert first["attention"]["tokens"] and first["circuits"][0]["faithfulness"]
    assert first["features"]["sets"][0]["pages"] and first["training"]["metrics"]["train_loss"]
    assert text.count("</script>") == 3  # the data and two inline scripts: nothing closes a script early
    assert "partial &lt;/script&gt; model" in text


def test_cli_report_writes_the_file(demo_dir, tmp_path):
    out = tmp_path / "r.html"
    res = subprocess.run([sys.executable, "-m", "mechscope.cli", "report", str(demo_dir), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.is_file() and "wrote" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "mechscope.cli", "report", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    said = " ".join((bad.stdout + bad.stderr).split())  # rich wraps long lines
    assert bad.returncode == 2 and "not a directory of mechscope artifacts" in said
