"""The audit report as one self-contained HTML page (tables from `core/html.py`, every string escaped;
the page frame and the all-or-nothing directory write from the diff report)."""

from __future__ import annotations

import html
from typing import Any

from ..core.html import fmt, kv, table
from ..diff.report import page, write_out
from .suspect import Suspect, describe


def _row(i: int, s: Suspect) -> tuple:
    c = s.component or {}
    trig = s.trigger
    t = "—" if trig["kind"] == "none" else f"{trig['kind']}: {trig.get('text')!r} {trig['ids']}" + (
        f" @ {trig['position']}" if trig.get("position") is not None else "")
    e = s.effect
    eff = "—" if not e.get("target_ids") else f"{e.get('target_text')!r} {e['target_ids']} {fmt(e.get('delta_logprob'), 3)} nats"
    where = (c.get("site") or "—") + (f" unit {c['unit']}" if c.get("unit") is not None else "") + (
        f" head {c['head']}" if c.get("head") is not None else "")
    return (i, c.get("class") or "—", where, t, eff, f"{s.confidence:.2f}", s.stat, fmt(s.score, 4),
            fmt(s.threshold, 4), {True: "yes", False: "no", None: "—"}[s.confirmed], ", ".join(s.methods))


HEADER = ("#", "class", "component", "trigger", "behaviour change", "confidence", "statistic", "score", "threshold",
          "confirmed", "methods")


def render(rep: Any) -> str:
    """The audit report `rep` as a self-contained HTML page."""
    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    parts = [f"<h1>Audit of {e(rep.model)}</h1>",
             f"<p><b>Verdict: {e(rep.verdict)}</b>"
             + (f" — {len(rep.suspects)} suspect(s) above the calibrated thresholds and not rejected by confirmation"
                if rep.suspects else " — nothing passes the thresholds calibrated on clean models") + "</p>",
             kv({"reference": rep.reference or "none (self-consistency only)",
                 "corpus": f"{rep.corpus.get('windows')} windows of {rep.corpus.get('tokens_per_window')} tokens",
                 "calibration": rep.calibration.get("note") or "none",
                 **({"calibration warning": rep.calibration["warning"]} if rep.calibration.get("warning") else {}),
                 "calibration margin": rep.calibration.get("margin"),
                 **{f"seconds: {k}": round(v, 2) for k, v in rep.timings.items()},
                 **{f"skipped: {k}": v for k, v in rep.skipped.items()}}, caption="the audit")]
    parts.append(table([_row(i, s) for i, s in enumerate(rep.suspects, 1)], HEADER, caption="suspects, ranked"))
    for i, s in enumerate(rep.suspects, 1):
        parts.append(f"<details><summary>{i}. {e(describe(s))}</summary>")
        parts.append(table([(k, v if isinstance(v, (int, float)) else str(v)) for k, v in s.evidence.items()],
                           ("evidence", "value")))
        parts.append("</details>")
    if rep.dropped:
        parts.append(table([_row(i, s) for i, s in enumerate(rep.dropped, 1)], HEADER,
                           caption="above threshold but rejected by causal confirmation"))
    for name, found in rep.scored.items():
        ranked = sorted(found, key=lambda s: -(s.score / s.threshold if s.threshold else 0))
        n = len(rep.methods.get(name, []))
        parts.append(table([_row(i, s) for i, s in enumerate(ranked[:10], 1)], HEADER,
                           caption=f"method {name}: {n} above threshold on its own; its top 10 by score / threshold"))
    return page("\n".join(parts), f"audit: {rep.model}")


def write(rep: Any, out: str) -> Any:
    """Write audit.json and audit.html into directory `out` (whole or not at all)."""
    return write_out(out, {"audit.json": rep.to_json(), "audit.html": render(rep)})
