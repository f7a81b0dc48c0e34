"""Small self-contained HTML views of core values for notebooks (`_repr_html_`).

Plain tables with inline styles: no scripts, no external resources, nothing imported beyond the
standard library (core must not depend on the report or the viewer).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_TABLE = "font:12px/1.4 system-ui,sans-serif"
_CELL = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left"
_HEAD = _CELL + ";background:#f3f5f8;font-weight:600"


def fmt(x: Any, digits: int = 4) -> str:
    """A number to `digits` significant figures (NaN and None as a dash); anything else as text."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return "—" if not math.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, caption: str = "",
          raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw`; the header and caption may be any values (shown as text)."""
    cell = (lambda v: str(v)) if raw else (lambda v: html.escape(fmt(v)))
    out = [f'<div style="{_TABLE}"><table>']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:600;padding:2px 0">{html.escape(str(caption))}</caption>')
    if header:
        out.append("<thead><tr>" + "".join(f'<th style="{_HEAD}">{html.escape(str(h))}</th>' for h in header)
                   + "</tr></thead>")
    out.append("<tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td style="{_CELL}">{cell(v)}</td>' for v in r) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def kv(pairs: Mapping[str, Any], caption: str = "") -> str:
    """A two-column key/value table."""
    return table(((k, v if not isinstance(v, (dict, list, tuple)) else str(v)) for k, v in pairs.items()),
                 caption=caption)


def cache_html(cache: Any) -> str:
    """A Cache: one row per captured site with its shape, dtype and norm."""
    rows = []
    for site, t in cache.items():
        rows.append((site.name, site.short, tuple(t.shape), str(t.dtype).replace("torch.", ""),
                     float(t.float().norm())))
    total = getattr(cache, "nbytes", None)
    cap = f"Cache: {len(rows)} sites" + (f", {total / 1e6:.2f} MB" if total is not None else "")
    return table(rows, ["site", "short", "shape", "dtype", "norm"], caption=cap)


def score_html(score: Any) -> str:
    """A Score: value with its confidence interval, then metric, aggregation, data and setting."""
    d = score.describe()
    ci = "" if not d.get("ci") else (f" [{fmt(d['ci'][0])}, {fmt(d['ci'][1])}] "
                                     f"{round(100 * d.get('confidence', 0.95))}% CI")
    head = (f'<div style="font:14px system-ui,sans-serif;margin:2px 0"><b>{html.escape(d["metric"])}</b> = '
            f'{html.escape(fmt(d["value"]))}{html.escape(ci)}</div>')
    rows = {"aggregation": d.get("aggregation"), "dataset": d.get("dataset"), "n": d.get("n"),
            "seed": d.get("seed"), **{f"how: {k}": v for k, v in (d.get("how") or {}).items()}}
    return head + kv(rows)


__all__ = ["cache_html", "fmt", "kv", "score_html", "table"]
