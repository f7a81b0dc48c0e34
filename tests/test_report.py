"""The HTML report: one self-contained file (nothing external), every section of every model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

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
    # the partial model has only its overview; no explanation; neither model has vision artifacts or studies
    assert text.count("Not in the artifacts.") == 7 + 1 + 2 + 2


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


def test_hostile_strings_stay_data_in_the_report(hostile_artifacts, tmp_path):
    """Artifact strings made to break out of HTML text, attributes, the JSON script element and its
    comment state are all escaped; the page allows its own two inline scripts by hash only."""
    import base64
    import hashlib

    root, H = hostile_artifacts
    text = write_report(root, tmp_path / "r.html", title=H["model"]).read_text(encoding="utf-8")
    assert text.count("<script") == 3 and text.count("</script>") == 3 and "<!--" not in text
    tags, handlers = [], []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)
            handlers.extend(k for k, _ in attrs if k.startswith("on"))

    Tags().feed(text)
    assert set(tags) <= {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "span", "main",
                         "noscript", "p", "nav", "div", "a", "b", "section", "script",
                         # the explanation's tables, written by the report itself
                         "h4", "table", "caption", "thead", "tbody", "tr", "th", "td"}, set(tags)
    assert tags.count("script") == 3 and handlers == []
    data = json.loads(re.search(r'<script type="application/json" id="ms-data">(.*?)</script>', text, re.S).group(1))
    assert data["models"][0]["name"] == H["model"] and data["manifest"]["created"] == H["created"]
    assert data["models"][0]["circuits"][0]["edges"][0]["via"] == H["via"]
    assert data["models"][0]["features"]["sets"][0]["pages"][0]["explanations"][0]["explanation"] == H["explanation"]
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    script_src = csp.split("script-src")[1].split(";")[0].split()
    inline = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
    assert sorted(script_src) == sorted(
        "'sha256-" + base64.b64encode(hashlib.sha256(js.encode()).digest()).decode() + "'" for js in inline)


def test_script_embedding_helpers():
    from mechscope.report.embed import json_for_script, script_text

    obj = {"a": "</script><!--<script>&amp;\u2028\u2029", "</b>": [1, None, "x"]}
    s = json_for_script(obj)
    assert not set(s) & set("<>&\u2028\u2029") and json.loads(s) == obj
    assert script_text("const a = 1 < 2;") == "const a = 1 < 2;"
    for bad in ("x = '</script>'", "// <!-- note", "s = '<SCRIPT>'", "</ScRiPt "):
        with pytest.raises(ValueError, match="inline script"):
            script_text(bad)


def test_the_renderers_never_hand_text_to_the_html_parser():
    """The JS of the viewer and the report builds every element with DOM calls (text nodes and
    attributes), so no artifact string is ever parsed as markup; the browser tests show it working."""
    from importlib import resources

    for package, name in (("mechscope.viewer", "mechscope.js"), ("mechscope.viewer", "app.js"),
                          ("mechscope.report", "report.js")):
        js = (resources.files(package) / "static" / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser",
                     "createContextualFragment", "srcdoc", "eval(", "Function("):
            assert sink not in js, (name, sink)


def test_a_study_with_numeric_column_headers_and_caption_renders():
    from mechscope.report.html import _study_html

    study = {"name": "sweep", "sections": [{"heading": 3, "text": "k <= 8", "tables": [
        {"columns": ["k", 8, 16.5], "rows": [["loss", 0.25, 0.5]], "caption": 2026}]}]}
    out = _study_html(study)
    assert "<th" in out and ">8</th>" in out and ">16.5</th>" in out and ">2026</caption>" in out
    assert "k &lt;= 8" in out and ">0.25<" in out
