"""The diff report: findings ranked like a code review, each with its evidence and how it was measured.

A finding is one thing that changed from A to B:

- `weight`: a component whose weights changed (score: relative Frobenius norm of the change);
- `behaviour`: the corpus overall, or a context (a token, or a pair of tokens) after which the
  next-token distributions differ (score: mean KL(A‖B) per token there);
- `activation`: the mean residual shift at a site (score: the KL per token that adding it to A
  removes, with the fraction of KL(A‖B) closed beside it).

Thresholds come from a control pair (A and A trained further on its own data, on the same corpus):
each finding's threshold is `margin` times the same measurement on the control (the same
component, the same context, the same site, the corpus overall); a context's threshold is at least
`margin` times the control's KL per token over the whole corpus, so a context the control leaves
alone is not above threshold for a difference smaller than the control's average one. A finding
is above threshold when its score exceeds it -- the lower end of the score's 95% interval for
scores that have one (the KL of a context over its occurrences, of the corpus over windows), so
that the largest of thousands of contexts seen a few times each is not above threshold by chance --
and findings are ranked by that figure / threshold ("times the control"). Without a control there are no thresholds: findings are then ranked within each
kind by score and the kinds interleaved (weight, behaviour, activation, weight, ...), and none is
called above threshold.

Every string in the HTML is escaped.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import write_json
from ..core.html import table
from ..core.score import Score

MARGIN = 1.5


@dataclass
class Finding:
    """One thing that changed from A to B (a weight, a behaviour or an activation), with its score, evidence, the
    tokens it names and, against a control, its threshold."""

    kind: str  # "weight", "behaviour" or "activation"
    key: str  # what changed: "L1.mlp_out", "context ' thou'", "corpus", "blocks.1.hook_resid_pre"
    title: str  # one line, readable
    score: Score
    evidence: dict[str, Any] = field(default_factory=dict)
    tokens: tuple[int, ...] = ()  # the token ids the finding names (keys first, then what it writes or raises)
    key_tokens: tuple[int, ...] = ()  # the context tokens of a behaviour finding
    ref: tuple = ()  # what the control is asked for: ("weight", name), ("context", key), ("corpus",), ...
    threshold: float | None = None

    @property
    def conservative(self) -> float:
        """The score's lower confidence bound when it has an interval, else the score."""
        return self.score.ci[0] if self.score.ci is not None else self.score.value

    @property
    def strength(self) -> float | None:
        """The conservative score in units of the threshold (None without a threshold)."""
        if self.threshold is None:
            return None
        return self.conservative / self.threshold if self.threshold > 0 else math.inf

    @property
    def above(self) -> bool:
        """Whether the conservative score exceeds the threshold (False without one)."""
        return self.threshold is not None and self.conservative > self.threshold

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the finding."""
        return {"kind": self.kind, "key": self.key, "title": self.title, "score": self.score.describe(),
                "threshold": self.threshold, "times_control": self.strength, "above_threshold": self.above,
                "tokens": list(self.tokens), "evidence": self.evidence}


def rank(findings: list[Finding], threshold: Callable[[Finding], float] | None) -> list[Finding]:
    """Findings in review order; `threshold` (from a control pair) sets each one's threshold."""
    if threshold is not None:
        for f in findings:
            f.threshold = threshold(f)
        return sorted(findings, key=lambda f: -(f.strength if f.strength is not None else 0.0))
    kinds = ("weight", "behaviour", "activation")
    per = {k: sorted((f for f in findings if f.kind == k), key=lambda f: -f.score.value) for k in kinds}
    out = []
    for i in range(max((len(v) for v in per.values()), default=0)):
        out += [per[k][i] for k in kinds if i < len(per[k])]
    return out


def findings_html(title: str, findings: list[Finding], summary: dict[str, Any]) -> str:
    """One HTML section: a summary table and the ranked findings with their evidence (all escaped)."""
    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    parts = [f'<section class="diff"><h2>{e(title)}</h2>',
             table([(k, v) for k, v in summary.items()], ("", ""), caption="the pair")]
    rows = []
    for i, f in enumerate(findings, 1):
        rows.append((i, f.kind, f.title, f"{f.score.value:.4g}",
                     "—" if f.threshold is None else f"{f.threshold:.4g}",
                     "—" if f.strength is None else f"{f.strength:.3g}×", "yes" if f.above else "no"))
    parts.append(table(rows, ("#", "kind", "finding", "score", "threshold", "vs control", "above"),
                       caption="findings, ranked"))
    for i, f in enumerate(findings, 1):
        parts.append(f"<details><summary>{i}. {e(f.title)}</summary>"
                     f"<p>{e(str(f.score))}</p>")
        ev = [(k, v if isinstance(v, (int, float)) else str(v)) for k, v in f.evidence.items() if k != "examples"]
        parts.append(table(ev, ("evidence", "value")))
        if f.evidence.get("examples"):
            parts.append(table([(x["context"], x["a_top"], x["b_top"], f"{x['kl']:.3g}") for x in f.evidence["examples"]],
                               ("context", "A predicts", "B predicts", "KL")))
        parts.append("</details>")
    parts.append("</section>")
    return "\n".join(parts)


def page(body: str, title: str) -> str:
    """A self-contained HTML page (remote loads forbidden by its content security policy) with `body`."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">'
            f'</head><body style="font:14px/1.4 system-ui,sans-serif;max-width:1100px;margin:2em auto">{body}'
            '</body></html>\n')


def write_out(out: str | os.PathLike, files: dict[str, str | dict]) -> Path:
    """Write `files` (name -> text or JSON-able dict) into directory `out` as a whole: into a temporary
    directory beside it first, then renamed into place (replacing an older `out`), so `out` never
    holds part of a report."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, content in files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                write_json(tmp / name, content)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out
