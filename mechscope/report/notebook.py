"""Notebook views (`_repr_html_`) of mechscope's result objects, in small self-contained HTML.

Static parts (tables, SVG heatmaps) are drawn here; the circuit graph reuses the report's JS
renderer (`mechscope.js`, inlined once per output, so it also works in an exported notebook).
Nothing is fetched. Result objects are read by attribute; no analysis is imported.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ..core.html import fmt, kv, table
from .embed import json_for_script, script_text

_FONT = "font:12px/1.4 system-ui,sans-serif"


def _seq(v: float) -> str:
    t = max(0.0, min(1.0, v))
    return f"rgb({round(255 - t * 247)},{round(255 - t * 207)},{round(255 - t * 148)})"


def _div(v: float | None) -> str:
    if v is None or v != v:
        return "#e8e8e8"
    t = max(-1.0, min(1.0, v))
    r0, g0, b0 = (33, 102, 172) if t >= 0 else (178, 24, 43)
    a = abs(t)
    return f"rgb({round(255 + a * (r0 - 255))},{round(255 + a * (g0 - 255))},{round(255 + a * (b0 - 255))})"


def heatmap_svg(values: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], title: str = "",
                diverging: bool = False, cell: int = 22, vmax: float | None = None) -> str:
    """A static SVG heatmap with a title and a hover title per cell."""
    flat = [v for r in values for v in r if v is not None and v == v]
    top = vmax if vmax is not None else max([abs(v) for v in flat] or [1.0]) or 1.0
    lw, th = 8 + 7 * max(len(str(r)) for r in rows), 24
    W, H = lw + len(cols) * cell + 4, th + len(rows) * cell + 18
    e = html.escape
    s = [f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" style="{_FONT}">',
         f'<text x="0" y="12" font-size="12" font-weight="600">{e(title)}</text>']
    for j, c in enumerate(cols):
        s.append(f'<text x="{lw + j * cell + cell / 2}" y="{th - 2}" font-size="10" text-anchor="middle">{e(str(c))}</text>')
    for i, r in enumerate(rows):
        y = th + i * cell
        s.append(f'<text x="{lw - 4}" y="{y + cell / 2 + 4}" font-size="10" text-anchor="end">{e(str(r))}</text>')
        for j, c in enumerate(cols):
            v = values[i][j]
            fill = _div(None if v is None else v / top) if diverging else _seq(0 if v is None else v / top)
            s.append(f'<rect x="{lw + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                     f'<title>{e(str(r))} {e(str(c))}: {e(fmt(v))}</title></rect>')
    s.append(f'<text x="{lw}" y="{H - 4}" font-size="10" fill="#666">max {e(fmt(top, 3))}</text></svg>')
    return "".join(s)


def _matrix(t: Any) -> list[list[float]]:
    return t.detach().float().tolist() if hasattr(t, "detach") else [list(map(float, r)) for r in t]


def head_roles_html(roles: Any) -> str:
    """HeadRoles: one heatmap per role (layer x head) and the top heads of each role."""
    names = [r for r in ("previous_token", "duplicate_token", "induction", "bos") if hasattr(roles, r)]
    mats = {r: _matrix(getattr(roles, r)) for r in names}
    n_layers, n_heads = len(mats[names[0]]), len(mats[names[0]][0])
    rows, cols = [f"L{i}" for i in range(n_layers)], [f"H{h}" for h in range(n_heads)]
    maps = "".join(f'<div style="display:inline-block;margin-right:14px;vertical-align:top">'
                   f'{heatmap_svg(m, rows, cols, r.replace("_", " "), vmax=1.0)}</div>' for r, m in mats.items())
    tops = [(r, ", ".join(f"L{l}H{h} {v:.2f}" for l, h, v in roles.top(r, 3))) for r in names]
    probe = f"probe: repeated random tokens, n={roles.n}, batch={roles.batch}, seed={roles.seed}"
    return (f'<div style="{_FONT}"><div><b>HeadRoles</b> <span style="color:#666">{html.escape(probe)}</span></div>'
            f'{maps}{table(tops, ["role", "top heads"])}</div>')


def edge_scores_html(scores: Any, k: int = 20) -> str:
    """EdgeScores: how they were made, and the top-k edges by |score|."""
    rows = [(i + 1, str(e), v) for i, (e, v) in enumerate(scores.top(k))]
    return (f'<div style="{_FONT}"><div><b>EdgeScores</b>: {scores.graph.n_edges} edges</div>'
            f'{kv(dict(scores.how), caption="how")}'
            f'{table(rows, ["rank", "edge", "score"], caption=f"top {len(rows)} edges by |score|")}</div>')


def _renderer() -> str:
    return (resources.files("mechscope.viewer") / "static" / "mechscope.js").read_text()


def _scoped_css(scope: str) -> str:
    """The viewer's stylesheet, scoped to `scope`: every rule with each selector prefixed by it and
    the page variables (`:root`) set on the scope itself, so a notebook output styles only its own
    elements. Rules for the page's frame (`*`, body, header, nav, main) and @-rules are left out."""
    css = (resources.files("mechscope.viewer") / "static" / "mechscope.css").read_text()
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out = []
    for m in re.finditer(r"([^{}]+)\{([^{}]*)\}", css):
        selectors = [" ".join(x.split()) for x in m.group(1).split(",")]
        body = " ".join(m.group(2).split())
        first = selectors[0].split()[0] if selectors[0] else ""
        if first == ":root":
            out.insert(0, f"{scope}{{{body}}}")
        elif first.startswith("@") or any(x.split()[0] in ("*", "body", "main") or
                                          x.split()[0].startswith(("header", "nav")) for x in selectors):
            continue
        else:
            out.append(", ".join(f"{scope} {x}" for x in selectors) + "{" + body + "}")
    return "<style>" + "".join(out) + "</style>"


def _js_view(function: str, data: Any, id_prefix: bool = False) -> tuple[str, str]:
    """A placeholder div and the script that draws `data` into it with the report's `MS.<function>`
    (the renderer inlined once per output, so an exported notebook shows it too). `id_prefix` passes
    the div's id as the renderer's `idPrefix` option (element ids stay unique among outputs)."""
    uid = "ms-" + uuid.uuid4().hex[:12]
    payload = json_for_script(data, default=str)
    js = script_text(_renderer())
    extra = f', {{idPrefix: "{uid}"}}' if id_prefix else ""
    script = (f'<script>(function(){{if(!window.MS){{{js}}}'
              f'window.MS.{function}(document.getElementById("{uid}"), {payload}{extra});}})();</script>')
    return f'<div id="{uid}"></div>', script


def training_html(training: dict[str, Any]) -> str:
    """Training curves as the report draws them (one line chart per logged metric, a log-step switch).

    `training` is what `mechscope.artifacts.training_from_run(run)` returns for a zoo run:
    {"metrics": {name: [(step, value), ...]}, "run": ..., "checkpoints": [...], "config": {...}}.
    """
    div, script = _js_view("training", training)
    return f'<div class="ms-nb" style="{_FONT}">{_scoped_css(".ms-nb")}{div}{script}</div>'


def feature_page_html(page: dict[str, Any]) -> str:
    """One feature's dashboard as the viewer shows it: explanations with their scores, top and
    quantile examples with per-token values, the activation histogram, logit effects and
    co-activating features. `page` is `FeatureStore.page(set_id, feature)`."""
    div, script = _js_view("featurePage", page)
    return f'<div class="ms-nb" style="{_FONT}">{_scoped_css(".ms-nb")}{div}{script}</div>'


def circuit_html(circuit: Any, scores: Any = None, max_rows: int = 30) -> str:
    """A Circuit as the report's layered graph (inline JS, pruning slider) and a list of edges."""
    from ..artifacts import circuit_from_edges

    data = circuit_from_edges(scores=scores, circuit=circuit)
    data = {"name": circuit.name or "circuit", **data, "method": data["method"] or "circuit"}
    rows = [(str(e),) for e in list(circuit)[:max_rows]]
    more = "" if len(circuit) <= max_rows else f"<div>… and {len(circuit) - max_rows} more</div>"
    nodes = sorted(str(n) for n in circuit.nodes)
    listing = (f'<details><summary>{len(circuit)} edges, {len(nodes)} components</summary>'
               f'{table(rows, ["edge"])}{more}</details>')
    div, script = _js_view("circuit", data, id_prefix=True)
    return f'<div style="{_FONT}"><div><b>{html.escape(str(circuit))}</b></div>{div}{listing}{script}</div>'


def feature_set_html(features: Any, n_labels: int = 12) -> str:
    """A FeatureSet: name, site, kind, size and the first labels."""
    d = getattr(features, "directions", None)
    labels = ", ".join(features.labels[:n_labels]) + (" …" if len(features.labels) > n_labels else "")
    return kv({"FeatureSet": features.name, "site": getattr(features.site, "name", str(features.site)),
               "kind": features.kind, "features": len(features),
               "write directions": "unknown" if d is None else f"{tuple(d.shape)}",
               "labels": labels})


__all__ = ["circuit_html", "edge_scores_html", "feature_page_html", "feature_set_html", "head_roles_html", "heatmap_svg",
           "training_html"]
