"""The self-contained HTML report: one file with every artifact, its CSS, JS and data inline.

The page skeleton (model sections, section headings, measurement specifications) is written here;
the drawings (heatmaps, attention patterns, circuit graph, charts, feature pages) are made in the
browser by the same renderers the viewer uses (`mechscope/viewer/static/mechscope.js`), from the
artifacts embedded as JSON. Nothing is fetched when the file is opened.

Every artifact string is data: names in the skeleton are HTML-escaped, the embedded JSON cannot end
its script element (`embed.json_for_script`), the renderers put text in the page through DOM text
nodes and attributes only, and the page's Content-Security-Policy allows its two inline scripts by
hash, so an event handler smuggled into the page would not run either.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from ..artifacts import load_all
from ..core.html import fmt, table
from ..core.files import write_atomically
from .embed import csp_hash, json_for_script, script_text

SECTIONS = ("overview", "attention", "head_roles", "patching", "circuits", "features", "training", "explanations",
            "vision", "studies")
TITLES = {"overview": "Model overview", "attention": "Attention patterns", "head_roles": "Head-role scores",
          "patching": "Activation patching", "circuits": "Circuits", "features": "Features",
          "training": "Training dynamics", "explanations": "Explanations as code",
          "vision": "Vision: what channels respond to", "studies": "Studies"}


def _asset(package: str, name: str) -> str:
    return (resources.files(package) / "static" / name).read_text()


def _esc(x: Any) -> str:
    """Any value from an artifact as HTML text (also safe inside a quoted attribute)."""
    return html.escape(str(x), quote=True)


def _model_section(i: int, m: dict[str, Any]) -> str:
    e = _esc
    parts = [f'<section class="model" id="model-{i}" data-model="{e(m["name"])}">',
             f'<h2>{e(m["name"])}</h2>']

    def part(key: str, body: str, note: str = "") -> None:
        parts.append(f'<section class="part" id="m{i}-{key}" data-section="{key}"><h3>{TITLES[key]}</h3>'
                     f'{note}{body}</section>')

    def box(kind: str, extra: str = "") -> str:
        return f'<div class="ms-render" data-kind="{kind}" data-model="{i}"{extra}></div>'

    missing = '<p class="muted">Not in the artifacts.</p>'
    part("overview", box("overview") if m["overview"] else missing)
    part("attention", box("attention") if m["attention"] else missing)
    part("head_roles", box("head_roles") if m["head_roles"] else missing)
    if m["patching"]:
        body = "".join(f'<div class="patching" id="m{i}-patching-{e(p["name"])}">'
                       f'{box("patching", f" data-index={j}")}</div>'
                       for j, p in enumerate(m["patching"]))
        part("patching", body)
    else:
        part("patching", missing)
    if m["circuits"]:
        body = "".join(f'<div class="circuit-view" id="m{i}-circuit-{e(c["name"])}">'
                       f'{box("circuit", f" data-index={j}")}</div>' for j, c in enumerate(m["circuits"]))
        part("circuits", body)
    else:
        part("circuits", missing)
    part("features", box("features") if m["features"] else missing)
    part("training", box("training") if m["training"] else missing)
    explanations = m.get("explanations") or []
    part("explanations", "".join(_explanation_html(x) for x in explanations) if explanations else missing)
    vision = m.get("vision") or []
    part("vision", "".join(f'<div class="vision-view" id="m{i}-vision-{e(v["name"])}"><h4>{e(v["name"])}</h4>'
                           f'{box("vision", f" data-index={j}")}</div>' for j, v in enumerate(vision))
         if vision else missing)
    studies = m.get("studies") or []
    part("studies", "".join(_study_html(s) for s in studies) if studies else missing)
    parts.append("</section>")
    return "\n".join(parts)


def _study_html(s: dict[str, Any]) -> str:
    """One study artifact: its sections (heading, paragraph, tables), its checks, the graphs it saved (drawn in
    the viewer's Graphs page) and the command that re-creates it."""
    e = _esc
    out = [f'<h4 id="study-{e(s["name"])}">{e(s.get("title") or s["name"])}</h4>']
    if s.get("command"):
        out.append(f'<p class="small">re-create: <code>{e(s["command"])}</code></p>')
    for sec in s.get("sections", []):
        out.append(f'<h5>{e(sec.get("heading", ""))}</h5>')
        if sec.get("text"):
            out.append(f'<p>{e(sec["text"])}</p>')
        for t in sec.get("tables", []):
            out.append(table([tuple(r) for r in t.get("rows", [])], list(t.get("columns", [])),
                             caption=t.get("caption", "")))
    checks = s.get("checks") or {}
    if checks:
        out.append(table([(k, c.get("target"), c.get("got"), "pass" if c.get("pass") else "FAIL")
                          for k, c in checks.items()], ["check", "target (fixed before measuring)", "got", ""],
                         caption="checks"))
    if s.get("graphs"):
        out.append(f'<p class="small">attribution graphs (viewer, Graphs page): {e(", ".join(s["graphs"]))}</p>')
    return "".join(out)


def _explanation_html(x: dict[str, Any]) -> str:
    """One explain-all artifact: the explanation's size and the joint loss recovered under each ablation, the
    parts with their sizes, scores alone and share of the unexplained loss (jointly), then the robustness
    table (drawn here, as tables: no script needed)."""
    hyp, results = x["hypothesis"], x["results"]
    abls = list(results)
    rows = []
    for i, part in enumerate(hyp.get("parts", [])):
        per = [(results[a].get("parts") or [{}] * (i + 1))[i] or {} for a in abls]
        rows.append((part.get("component"), part.get("kind"), part.get("name"), part.get("lines"),
                     part.get("numbers"), *((r.get("alone") or {}).get("value") for r in per),
                     *(r.get("unexplained_share") for r in per)))
    robust, joint = [], []
    for a in abls:
        rec = results[a]["recovered"]
        ci = rec.get("ci")
        ci_text = "" if not ci else f"[{fmt(ci[0], 6)}, {fmt(ci[1], 6)}]"
        groups = results[a].get("groups") or {}
        worst = min(groups.items(), key=lambda kv: kv[1].get("value", float("inf"))) if groups else None
        robust.append((a, rec.get("value"), ci_text, results[a].get("loss_clean"), results[a].get("loss_hypothesis"),
                       results[a].get("loss_ablated"),
                       "" if worst is None else f"{worst[0]}: {fmt(worst[1].get('value'), 6)}"))
        joint.append(f"{_esc(a)} <b>{_esc(fmt(rec.get('value'), 6))}</b> {_esc(ci_text)}")
    head = (f'<h4 id="explanation-{_esc(x["name"])}">{_esc(hyp.get("name", x["name"]))}</h4>'
            f'<p class="small">{_esc(hyp.get("claim", ""))}; {_esc(hyp.get("lines"))} lines of code, '
            f'{_esc(hyp.get("numbers"))} numbers; scored on {_esc(x.get("dataset", ""))}</p>'
            f'<p class="joint">loss recovered by the whole explanation ({_esc(hyp.get("lines"))} lines, '
            f'{_esc(hyp.get("numbers"))} numbers), against each ablation: {"; ".join(joint)}</p>')
    return (head + table(rows, ["component", "kind", "explanation", "lines", "numbers",
                                *(f"alone vs {a}" for a in abls), *(f"share of unexplained ({a})" for a in abls)],
                         caption="components: alone, and the share of the unexplained loss each holds jointly")
            + table(robust, ["ablation", "loss recovered", "95% CI", "loss clean", "loss code", "loss ablated",
                             "worst group"], caption="the whole hypothesis at once"))


def render_report(data: dict[str, Any], title: str = "mechscope report") -> str:
    """The report's HTML text for `data` as returned by `mechscope.artifacts.load_all`.

    Example::

        from mechscope.artifacts import load_all
        from mechscope.report import render_report
        html = render_report(load_all("out"), title="induction-quick")
    """
    e = _esc
    css = _asset("mechscope.viewer", "mechscope.css")
    js = script_text(_asset("mechscope.viewer", "mechscope.js"))
    boot = script_text(_asset("mechscope.report", "report.js"))
    csp = (f"default-src 'none'; script-src {csp_hash(js)} {csp_hash(boot)}; style-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    nav = []
    for i, m in enumerate(data["models"]):
        links = " ".join(f'<a href="#m{i}-{k}">{TITLES[k]}</a>' for k in SECTIONS)
        nav.append(f'<div><a href="#model-{i}"><b>{e(m["name"])}</b></a> <span class="small">{links}</span></div>')
    man = data["manifest"]
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = "\n".join(_model_section(i, m) for i, m in enumerate(data["models"]))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{e(title)}</title>
<style>{css}</style>
</head>
<body>
<header class="top"><h1>{e(title)}</h1><span class="small muted">artifacts schema {e(str(man.get("schema_version")))},
written {e(str(man.get("created", "")))}; report made {made}</span></header>
<main>
<noscript><p class="err">The drawings in this report need JavaScript (it is all inline; nothing is fetched).</p></noscript>
<nav class="toc">{"".join(nav)}</nav>
{body}
</main>
<script type="application/json" id="ms-data">{json_for_script(data)}</script>
<script>{js}</script>
<script>{boot}</script>
</body>
</html>
"""


def write_report(artifacts_dir: str | Path = "out", out_path: str | Path | None = None,
                 title: str = "mechscope report", max_feature_pages: int = 64) -> Path:
    """Write one self-contained HTML report of every artifact in `artifacts_dir` (default
    `artifacts_dir/report.html`); returns its path.

    Example::

        from mechscope.report import write_report
        path = write_report("out")               # out/report.html, one self-contained file
    """
    data = load_all(artifacts_dir, max_feature_pages=max_feature_pages)
    out = Path(out_path) if out_path is not None else Path(artifacts_dir) / "report.html"
    text = render_report(data, title)
    write_atomically(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out
