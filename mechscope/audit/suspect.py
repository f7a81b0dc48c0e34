"""What an audit reports: a `Suspect` (component, trigger, behaviour change, confidence, evidence).

Every method (`weights`, `behaviour`, `triggers`, `features`) returns Suspects with a raw `score`
under a named statistic (`stat`); `calibrate` turns the score into a threshold comparison and a
confidence, `confirm` tests them causally, and `run` merges them. The field layout is the JSON the
audit writes (`Suspect.to_json`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..core.site import Kind, Site

CLASSES = ("neuron", "head", "mlp", "attn", "layer", "embedding", "direction")
TRIGGER_KINDS = ("token", "ngram", "context", "position", "none")


def component(site: Site | str | None, cls: str, unit: int | None = None, head: int | None = None) -> dict[str, Any]:
    """The component dict of the contract: a site name, its class, and a unit or head."""
    if cls not in CLASSES:
        raise ValueError(f"component class {cls!r} is not one of {', '.join(CLASSES)}")
    name = site.name if isinstance(site, Site) else site
    return {"site": name, "class": cls, "unit": None if unit is None else int(unit),
            "head": None if head is None else int(head)}


def mlp_site(layer: int) -> Site:
    """The site of layer `layer`'s MLP neurons (mlp.post)."""
    return Site(Kind.MLP_POST, layer)


def head_site(layer: int) -> Site:
    """The site of layer `layer`'s per-head writes to the residual (attn.result)."""
    return Site(Kind.RESULT, layer)


def layer_of(comp: dict[str, Any]) -> int | None:
    """The layer in a component's site name ("blocks.L..."), or None."""
    site = comp.get("site")
    if not site:
        return None
    parts = str(site).split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "blocks" and b.isdigit():
            return int(b)
    return None


def trigger(kind: str = "none", ids: list[int] | tuple[int, ...] = (), text: str | None = None,
            position: int | None = None) -> dict[str, Any]:
    """A trigger record: its kind (one of TRIGGER_KINDS), token ids, text and position."""
    if kind not in TRIGGER_KINDS:
        raise ValueError(f"trigger kind {kind!r} is not one of {', '.join(TRIGGER_KINDS)}")
    return {"kind": kind, "ids": [int(i) for i in ids], "text": text,
            "position": None if position is None else int(position)}


def no_trigger() -> dict[str, Any]:
    """The trigger record of a suspect with no trigger."""
    return trigger()


def no_effect() -> dict[str, Any]:
    """The effect record of a suspect with no behaviour change."""
    return {"target_ids": [], "target_text": None, "delta_logprob": 0.0}


@dataclass
class Suspect:
    """One suspect. `stat` names the statistic `score` is (calibrated per statistic); `component`,
    `trigger` and `effect` are the contract's dicts; `confirmed` is None until `confirm` has run."""

    component: dict[str, Any] | None
    trigger: dict[str, Any]
    effect: dict[str, Any]
    stat: str
    score: float
    methods: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)
    confidence: float = 0.0
    threshold: float | None = None
    confirmed: bool | None = None

    @property
    def above(self) -> bool:
        """Whether the score exceeds the threshold (False without one)."""
        return self.threshold is not None and self.score > self.threshold

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the suspect (a direction's vector left out; non-finite numbers made
        JSON-safe)."""
        comp = self.component or {"site": None, "class": None, "unit": None, "head": None}
        comp = {k: v for k, v in comp.items() if k != "vector"}  # a direction's vector stays in memory
        return {"component": comp, "trigger": self.trigger, "effect": _finite(self.effect),
                "confidence": float(self.confidence), "methods": list(self.methods), "stat": self.stat,
                "score": _num(self.score), "threshold": _num(self.threshold), "above_threshold": self.above,
                "confirmed": self.confirmed, "evidence": _finite(self.evidence)}


def _num(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    return x


def _finite(d: Any) -> Any:
    if isinstance(d, dict):  # long vectors (a key direction) are kept in memory, summarised in JSON
        return {str(k): (f"[{len(v)} numbers]" if isinstance(v, list) and len(v) > 32 else _finite(v))
                for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_finite(v) for v in d]
    return _num(d)


def describe(s: Suspect) -> str:
    """One readable line."""
    c = s.component or {}
    where = c.get("site") or "—"
    if c.get("unit") is not None:
        where += f" unit {c['unit']}"
    if c.get("head") is not None:
        where += f" head {c['head']}"
    trig = s.trigger
    t = "" if trig["kind"] == "none" else f"; trigger {trig['kind']} {trig.get('text') or trig['ids']!r}"
    if trig.get("position") is not None and trig["kind"] == "position":
        t = f"; trigger position {trig['position']}"
    e = s.effect
    eff = "" if not e.get("target_ids") else f"; raises {e.get('target_text') or e['target_ids']!r} by {e['delta_logprob']:.2f} nats"
    return f"[{c.get('class') or '—'}] {where}{t}{eff}"
