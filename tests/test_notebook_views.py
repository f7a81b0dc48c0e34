"""Notebook views: `_repr_html_` of the main result objects is small self-contained HTML, and the
report and viewer import no analysis code."""

from __future__ import annotations

import re
import subprocess
import sys

import torch

import mechscope as ms
from mechscope.causal import AblationSpec, eap, graph_of
from mechscope.circuits.head_roles import head_roles
from mechscope.core import Kind, Score, Site, metrics
from mechscope.features import FeatureSet
from mechscope.models.tiny import TinyConfig, TinyTransformer


def _model():
    torch.manual_seed(0)
    return ms.wrap(TinyTransformer(TinyConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8,
                                              d_vocab=20)))


def _no_external(html: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, flags=re.I)
    assert "<link" not in html and "@import" not in html


def test_repr_html_of_result_objects():
    model = _model()
    ids = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(1))
    cache = ms.run(model, ids, capture=["attn.pattern.0", "resid_post.1"]).cache
    h = cache._repr_html_()
    assert "blocks.0.attn.hook_pattern" in h and "(3, 2, 8, 8)" in h and "Cache: 2 sites" in h

    s = Score.from_items([0.5, 0.7, 0.9], "faithfulness[logit_diff]", dataset="toy <set>", how={"ablation": "mean"})
    h = s._repr_html_()
    assert "faithfulness[logit_diff]" in h and "95% CI" in h and "ablation" in h and "toy &lt;set&gt;" in h

    roles = head_roles(model, n=4, batch=2, vocab=20)
    h = roles._repr_html_()
    assert h.count("<svg") == 4 and "induction" in h and "top heads" in h

    ld = metrics.logit_diff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))
    scores = eap(model, ids, ld, AblationSpec("zero", granularity="edge"))
    h = scores._repr_html_()
    assert "EdgeScores" in h and "top 20 edges" in h and "EAP" in h and h.count("<tr>") >= 20

    circuit = scores.circuit(k=6, name="top six")
    h = circuit._repr_html_()
    assert "Circuit(top six: 6 edges)" in h and "MS.circuit" in h and "<script>" in h
    assert h.count("</script>") == 1  # the inlined renderer never closes the script early

    feats = FeatureSet.neurons(Site(Kind.MLP_POST, 0), d=32, name="mlp.post.0")
    h = feats._repr_html_()
    assert "mlp.post.0" in h and "blocks.0.mlp.hook_post" in h and "32" in h
    for obj in (cache, s, roles, scores, circuit, feats):
        _no_external(obj._repr_html_())
    assert graph_of(model).n_edges == len(scores.values)


def test_report_and_viewer_import_no_analysis():
    code = ("import sys, mechscope.viewer.app, mechscope.report, mechscope.report.notebook, mechscope.artifacts;"
            "print(' '.join(m for m in sys.modules if m.startswith('mechscope')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    assert "mechscope.viewer.app" in loaded
    for analysis in ("mechscope.causal", "mechscope.circuits", "mechscope.features.dashboards", "mechscope.zoo",
                     "mechscope.dictionaries", "mechscope.features.pipeline"):
        assert analysis not in loaded, analysis


def test_training_and_feature_page_views(tmp_path):
    from mechscope.features import FeatureStore, build_dashboards
    from mechscope.report.notebook import feature_page_html, training_html

    curves = {"metrics": {"train_loss": [(0, 3.0), (10, 1.5)], "test_loss": [(0, 3.1), (10, 2.0)]},
              "run": "a </script><b>run", "checkpoints": [0, 10], "config": {"recipe": "toy"}}
    h = training_html(curves)
    assert "MS.training" in h and "train_loss" in h and "test_loss" in h
    assert h.count("</script>") == 1  # the run name cannot close the script
    _no_external(h)

    model = _model()
    docs = torch.randint(0, 20, (6, 8), generator=torch.Generator().manual_seed(2))
    feats = FeatureSet.neurons(Site(Kind.MLP_POST, 0), units=range(4), d=32, name="mlp.post.0")
    with FeatureStore(tmp_path / "f.duckdb") as store:
        build_dashboards(model, feats, docs, store, dataset="toy", k=4, reservoir=4, progress=False)
        page = store.page("mlp.post.0", 1)
    h = feature_page_html(page)
    assert "MS.featurePage" in h and "mlp.post.0" in h
    assert h.count("</script>") == 1
    _no_external(h)
    style = re.search(r"<style>(.*?)</style>", h, flags=re.S).group(1)  # the viewer's CSS, scoped to the output
    selectors = [x.strip() for rule in re.findall(r"([^{}]+)\{", style) for x in rule.split(",")]
    assert ".ms-nb .tok" in selectors and all(x.startswith(".ms-nb") for x in selectors), selectors
    a, b = training_html(curves), training_html(curves)
    assert re.findall(r'id="(ms-[0-9a-f]+)"', a) != re.findall(r'id="(ms-[0-9a-f]+)"', b)  # unique per output
