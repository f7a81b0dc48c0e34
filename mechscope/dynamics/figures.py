"""dynamics.html: the boundaries and phases as tables and the series that moved most as inline SVG
charts on the log-step axis, boundaries drawn as vertical lines. One file, no scripts, nothing loaded
from elsewhere; every text is escaped."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ..core.files import write_atomically
from ..core.html import table

W, H, PAD = 420, 170, 36
MAX_CHARTS = 12


def _chart(series: dict[str, Any], steps: list[int], boundaries: list[dict[str, Any]]) -> str:
    xs = [math.log1p(s) for s in steps]
    vals = series["values"] + series["fit"]
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    x0, x1 = xs[0], xs[-1]

    def px(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0 or 1) * (W - 2 * PAD)

    def py(y: float) -> float:
        return H - PAD + (y - lo) / (hi - lo) * (2 * PAD - H)

    def path(ys: list[float]) -> str:
        return " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))

    top = max((b["support"] for b in boundaries), default=1.0) or 1.0
    lines = [f'<line x1="{px(math.log1p(b["step"])):.1f}" x2="{px(math.log1p(b["step"])):.1f}" y1="{PAD / 2}" '
             f'y2="{H - PAD}" stroke="#d33" stroke-opacity="{0.15 + 0.85 * b["support"] / top:.2f}"/>'
             for b in boundaries]
    ticks = [s for s in (1, 10, 100, 1000, 10_000, 100_000, 1_000_000) if s <= steps[-1]]
    labels = [f'<text x="{px(math.log1p(s)):.1f}" y="{H - PAD + 14}" font-size="10" text-anchor="middle">{s}</text>'
              for s in ticks]
    return (f'<figure style="display:inline-block;margin:4px"><svg width="{W}" height="{H}" '
            f'xmlns="http://www.w3.org/2000/svg" style="font:10px system-ui,sans-serif">'
            f'<rect x="{PAD}" y="{PAD / 2}" width="{W - 2 * PAD}" height="{H - 1.5 * PAD}" fill="none" stroke="#ccc"/>'
            + "".join(lines)
            + f'<polyline points="{path(series["values"])}" fill="none" stroke="#246" stroke-width="1.3"/>'
            + f'<polyline points="{path(series["fit"])}" fill="none" stroke="#e80" stroke-dasharray="3,2"/>'
            + "".join(labels)
            + f'<text x="4" y="{PAD / 2 + 4}" font-size="10">{hi:.3g}</text>'
            + f'<text x="4" y="{H - PAD}" font-size="10">{lo:.3g}</text>'
            + f'</svg><figcaption style="font:11px system-ui,sans-serif">{html.escape(series["name"])}</figcaption>'
            + "</figure>")


def write_html(path: Path, full: dict[str, Any]) -> None:
    """The page of one result (`study.to_json`'s dictionary)."""
    steps, bounds = full["steps"], full["boundaries"]
    by_name = {s["name"]: s for s in full["series"]}
    chosen: list[str] = []
    for b in sorted(bounds, key=lambda b: -b["support"]):
        for name, _ in b["top_measures"][:3]:
            if name not in chosen:
                chosen.append(name)
    for name in ("log10_loss.train@model", "log10_loss@model"):  # the losses first
        if name in by_name:
            chosen = [name] + [c for c in chosen if c != name]
    charts = "".join(_chart(by_name[n], steps, bounds) for n in chosen[:MAX_CHARTS])
    body = [f"<h1>mechscope dynamics: {html.escape(full['source'])}</h1>",
            f"<p>{len(full['series'])} series over {len(steps)} checkpoints; change-point threshold "
            f"{full['threshold']:.3g} (quantile {full['null']['quantile']} of the largest permuted-series statistic "
            f"over {full['null']['rounds']} rounds); control series flagged: {full['null']['control_flagged']}. "
            "Red lines: boundaries (darker = more support). Orange dashes: the piecewise-linear fit.</p>",
            table(((f"{b['step']:.0f}", f"{b['span'][0]}-{b['span'][1]}", round(b["support"], 2),
                    ", ".join(f"{c} {v:.2f}" for c, v in b["top_components"]),
                    ", ".join(f"{n} {v:.2f}" for n, v in b["top_measures"])) for b in bounds),
                  ["boundary", "span", "support", "top components", "measures that moved most"], "boundaries"),
            table(((f"{p['steps'][0]}-{p['steps'][1]}", ", ".join(f"{c} {v:.2f}" for c, v in p["top_components"]),
                    ", ".join(f"{n} {v:.2f}" for n, v in p["top_measures"])) if p["steps"][0] != p["steps"][1]
                   else (str(p["steps"][0]), "(one checkpoint)", "") for p in full["phases"]),
                  ["steps", "top components", "measures that moved most"], "phases"),
            table(((k, c["target"], str(c["got"]), "pass" if c["pass"] else "FAIL") for k, c in full["checks"].items()),
                  ["check", "target", "got", ""], "checks"),
            table(full["unavailable"].items(), ["measure", "unavailable because"], "unavailable measures"),
            f"<div>{charts}</div>"]
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>mechscope dynamics</title></head>"
            "<body style=\"font:13px system-ui,sans-serif;margin:16px\">" + "".join(body) + "</body></html>")
    write_atomically(path, lambda tmp: tmp.write_text(page))
