"""`audit(model)`: every method, calibrated, merged and causally confirmed, into one AuditReport.

Order of work, within the time budget (`budget_minutes`, checked between steps and inside the
trigger search; the features method is skipped, with the reason, once more than half the budget is
spent):

1. weights (`weights.scan`), behaviour (`behaviour.scan`), features (`features.scan`, and with a
   reference `features.diff_scan`: crosscoder latents only the model has);
2. triggers: a GCG search for the input that drives each of the strongest weight suspects (a
   neuron's pre-activation, a head's write), and with a reference one more for the input that
   most separates the model from it (`triggers.search`);
2b. patching, with a reference: the inputs where the two models part ways most (the corpus's
   largest KL, the triggers found so far, n-grams and positions) localised by patching each
   component from the reference (`patching.scan`);
3. each suspect's score against the calibration (threshold, confidence);
4. suspects merged by component and trigger, then every above-threshold suspect with a trigger
   confirmed causally (`confirm.Confirmer`: mean ablation, or with a reference patching from it),
   localising it to a component when it has none; merged again by component (a confirmed trigger
   kept over one that is not).

The verdict is "suspect" when an above-threshold suspect is left that confirmation did not reject,
else "nothing found". `report.methods` holds what each method found on its own (its suspects above
threshold, before merging and confirmation); `report.scored` everything each method scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.progress import note
from ..core.site import Kind, Site
from . import behaviour, features, patching, triggers, weights
from .calibrate import Calibration, confidence, load_or_build
from .confirm import Confirmer
from .inputs import AuditInputError, check_corpus, check_reference, decode, default_corpus, load
from .suspect import Suspect, layer_of, no_effect, no_trigger

METHODS = ("weights", "behaviour", "triggers", "patching", "features")
__all__ = ["AuditReport", "Suspect", "audit"]


@dataclass
class AuditReport:
    """What `audit` found: the verdict, the merged suspects, each method's suspects and scores, what was dropped
    or skipped, the corpus, the calibration and the time taken."""

    model: str
    reference: str | None
    verdict: str
    suspects: list[Suspect]
    methods: dict[str, list[Suspect]]  # per method: its suspects above threshold, before merging
    timings: dict[str, float]
    scored: dict[str, list[Suspect]] = field(default_factory=dict)  # per method: everything it scored
    dropped: list[Suspect] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def all_suspects(self) -> list[Suspect]:
        """Every suspect any method scored, above its threshold or not."""
        return [s for v in self.scored.values() for s in v]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the report (each method's ten strongest scores kept)."""
        return {"model": self.model, "reference": self.reference, "verdict": self.verdict,
                "suspects": [s.to_json() for s in self.suspects],
                "methods": {k: [s.to_json() for s in v] for k, v in self.methods.items()},
                "scored": {k: [s.to_json() for s in sorted(v, key=lambda s: -_strength(s))[:10]]
                           for k, v in self.scored.items()},
                "dropped": [s.to_json() for s in self.dropped], "skipped": self.skipped,
                "timings": {k: round(v, 3) for k, v in self.timings.items()}, "corpus": self.corpus,
                "calibration": self.calibration}

    def to_html(self) -> str:
        """The report as an HTML page."""
        from .report import render

        return render(self)


def _copy(s: Suspect) -> Suspect:
    import copy

    return copy.deepcopy(s)


def _key(s: Suspect, by_trigger: bool = False) -> tuple:
    c, t = s.component, s.trigger
    trig = (t["kind"], tuple(t["ids"]), t["position"])
    if c is not None:
        return ("c", c["site"], c["class"], c["unit"], c["head"]) + (trig if by_trigger else ())
    return ("t", *trig)


def _strength(s: Suspect) -> float:
    if s.threshold is not None and s.threshold > 0:
        return s.score / s.threshold
    return s.score


def merge(suspects: list[Suspect], by_trigger: bool = False) -> list[Suspect]:
    """One suspect per component (or per trigger when there is no component; with `by_trigger`, per
    component and trigger, so that each trigger of a component is confirmed on its own): methods
    joined, the strongest score and confidence kept, a token trigger and its effect preferred over
    none, a confirmed trigger over one that is not."""
    groups: dict[tuple, Suspect] = {}
    for s in suspects:
        k = _key(s, by_trigger)
        part = {"stat": s.stat, "score": s.score, "threshold": s.threshold, "above": s.above, "methods": s.methods}
        if k not in groups:
            groups[k] = _copy(s)
            groups[k].evidence.setdefault("parts", [part])
            continue
        g = groups[k]
        g.evidence.setdefault("parts", []).append(part)
        g.methods = sorted(set(g.methods) | set(s.methods))
        has = lambda x: x.trigger["kind"] != "none" and x.effect.get("target_ids")  # noqa: E731
        if (has(s) and not has(g)) or (has(s) and has(g) and s.confirmed and not g.confirmed):
            g.trigger, g.effect = s.trigger, s.effect
            g.evidence = {**s.evidence, **{f"{k}": v for k, v in g.evidence.items() if k not in s.evidence}}
        if s.confidence > g.confidence or (s.confidence == g.confidence and _strength(s) > _strength(g)):
            g.stat, g.score, g.threshold, g.confidence = s.stat, s.score, s.threshold, s.confidence
        if s.confirmed is not None:
            g.confirmed = bool(s.confirmed) or bool(g.confirmed)
    return sorted(groups.values(), key=lambda s: (-s.confidence, -_strength(s)))


def _without_trigger(s: Suspect) -> list[Suspect]:
    """A rejected suspect whose component stands out in its weights on its own (above threshold)
    stays a suspect of that component, without the trigger confirmation rejected."""
    parts = [p for p in s.evidence.get("parts", []) if p["above"] and "weights" in p["methods"]]
    if s.component is None or not parts:
        return []
    best = max(parts, key=lambda p: p["score"] / p["threshold"] if p["threshold"] else 0.0)
    keep = _copy(s)
    keep.evidence = {"parts": parts, "rejected_trigger": {"trigger": s.trigger, "effect": s.effect,
                                                          "removed": s.evidence.get("removed"),
                                                          "trigger_effect": s.evidence.get("trigger_effect")}}
    keep.trigger, keep.effect = no_trigger(), no_effect()
    keep.stat, keep.score, keep.threshold = best["stat"], best["score"], best["threshold"]
    keep.confidence = confidence(best["score"], best["threshold"])
    keep.methods, keep.confirmed = sorted(set(best["methods"])), None
    return [keep]


def to_confirm(merged: list[Suspect]) -> list[Suspect]:
    """The suspects (merged by component and trigger) whose trigger is confirmed, first to last: every one
    with a trigger that is above its threshold or whose component is above in another of its suspects (a
    neuron that stands out in its weights, say, with the trigger another method found for it), ordered by
    the confidence of the component's strongest suspect. Uncalibrated, nothing is above."""
    best: dict[tuple, float] = {}
    for s in merged:
        if s.above:
            best[_key(s)] = max(best.get(_key(s), 0.0), s.confidence)
    todo = [s for s in merged if s.trigger["kind"] != "none" and (s.above or _key(s) in best)]
    return sorted(todo, key=lambda s: (-max(s.confidence if s.above else 0.0, best.get(_key(s), 0.0)),
                                       -_strength(s)))


def settle(merged: list[Suspect]) -> tuple[list[Suspect], list[Suspect]]:
    """After confirmation, the suspects kept and those dropped. A rejected suspect (its trigger did not
    reproduce the behaviour) is dropped on its own and never merged into its component's other
    suspects, so a component that stands out without that trigger (in its weights, say) stays a
    suspect; one whose own weight evidence is above threshold stays too, without the trigger
    (`_without_trigger`). The others are merged by component."""
    rejected = [s for s in merged if s.confirmed is False]
    rest = [s for s in merged if s.confirmed is not False]
    for s in rejected:
        rest.extend(_without_trigger(s))
    kept = [s for s in merge(rest) if s.above and s.confirmed is not False]
    dropped = sorted(rejected, key=lambda s: (-s.confidence, -_strength(s)))  # each was a confirmation candidate
    return kept, dropped


def _objective(s: Suspect) -> Any:
    c = s.component or {}
    layer = layer_of(c)
    if c.get("class") == "neuron" and layer is not None:
        return triggers.Activation(Site(Kind.MLP_PRE, layer), unit=c["unit"]), f"pre-activation of {c['site']} unit {c['unit']}"
    if s.evidence.get("key") is not None:
        site = Site.parse(s.evidence["key_site"])
        return (triggers.Activation(site, direction=torch.tensor(s.evidence["key"]),
                                    signed=bool(s.evidence.get("key_signed"))),
                f"projection of {site.name} on the top singular direction of {s.evidence.get('matrix') or s.evidence.get('component')}")
    if c.get("class") == "head" and layer is not None:
        return triggers.Activation(Site(Kind.RESULT, layer), head=c["head"]), f"norm of head {c['head']}'s write at layer {layer}"
    return None, ""


def audit(model: Any, *, reference: Any = None, corpus: Any = None, budget_minutes: float = 10.0,
          calibration: Any = None, seed: int = 0, progress: bool = True, methods: tuple[str, ...] = METHODS,
          n_windows: int = 48, seq_len: int = 64, n_trigger_searches: int = 3, max_confirm: int = 8,
          device: str | None = None) -> AuditReport:
    """Audit `model` (see the module docstring), it and the reference on `device` (None: where they are, the CPU
    when loaded here); `corpus` is token ids (n_seq, n_tokens), a corpus name or text file, or None for the
    held-out zoo text."""
    t_start = time.monotonic()
    deadline = t_start + 60.0 * budget_minutes
    say = note if progress else (lambda *a, **k: None)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown audit methods {sorted(unknown)}; they are {', '.join(METHODS)}")
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    t = time.monotonic()
    m = load(model, "model", device)
    ref = load(reference, "reference", device) if reference is not None else None
    if ref is not None:
        check_reference(m, ref)
    stats = None
    if corpus is None or isinstance(corpus, str):
        ids = default_corpus(m, n=n_windows, seq_len=seq_len, corpus=corpus or "textlm")
        try:  # a larger sample of the same text for the corpus's bigram statistics
            stats = default_corpus(m, n=8 * n_windows, seq_len=seq_len, corpus=corpus or "textlm")
        except AuditInputError:  # a text too short for more windows: count over the corpus itself
            stats = None
    else:
        ids = check_corpus(corpus, m)
    timings["load"] = time.monotonic() - t
    t = time.monotonic()
    cal = calibration if isinstance(calibration, Calibration) else load_or_build(calibration, m, progress)
    mode = "reference" if ref is not None else "alone"
    timings["calibration"] = time.monotonic() - t
    t_start += timings["calibration"]  # building a calibration once is not part of the budget
    deadline += timings["calibration"]
    found: dict[str, list[Suspect]] = {}
    skipped: dict[str, str] = {}

    def timed(name: str, fn: Any) -> None:
        t0 = time.monotonic()
        say(f"audit: {name}")
        found[name] = [cal.apply(s, mode) for s in fn()]
        timings[name] = time.monotonic() - t0

    if "weights" in methods:
        timed("weights", lambda: weights.scan(m, ref))
    if "behaviour" in methods:
        timed("behaviour", lambda: behaviour.scan(m, ids, ref, stats=stats))
    L = min(24, ids.shape[1])
    contexts = ids[: min(8, ids.shape[0]), :L]
    position = L // 2
    if "triggers" in methods and L >= 4:
        def search() -> list[Suspect]:
            out = []
            cands = sorted((s for s in found.get("weights", []) if _objective(s)[0] is not None),
                           key=lambda s: -_strength(s))
            seen = set()
            for s in cands:
                if len(seen) >= n_trigger_searches:
                    break
                if time.monotonic() > deadline:
                    skipped["triggers"] = f"the time budget was spent after {len(seen)} searches"
                    break
                if _key(s) in seen:
                    continue
                seen.add(_key(s))
                obj, what = _objective(s)
                res = triggers.search(m, obj, contexts, position=position, deadline=deadline, seed=seed)
                sus = triggers.suspect(m, res, contexts, position, ref, dict(s.component), what)
                sus.evidence["searched_for"] = f"{s.stat} suspect"
                out.append(sus)
            if ref is not None and time.monotonic() > deadline:
                skipped["triggers"] = "the time budget was spent before the search against the reference"
            elif ref is not None:
                res = triggers.search(m, triggers.Divergence(ref), contexts, position=position, deadline=deadline,
                                      seed=seed)
                out.append(triggers.suspect(m, res, contexts, position, ref, None, "KL(model ‖ reference)"))
                if time.monotonic() > deadline:
                    skipped["triggers"] = "the time budget was spent before the n-gram sweep against the reference"
                else:
                    shifted, n, field = triggers.sweep(m, ref, contexts, position,
                                                       tokens=triggers.learned(ref, ids), deadline=deadline)
                    out += [triggers.sweep_suspect(m, r, contexts, position, n, field) for r in shifted]
            return out
        timed("triggers", search)
    if "patching" in methods and ref is not None and L >= 4:
        extra = [s.trigger for k in ("behaviour", "triggers") for s in found.get(k, [])]
        timed("patching", lambda: patching.scan(m, ref, stats if stats is not None else ids, contexts, position,
                                                extra=extra, deadline=deadline))
    if "features" in methods:
        if time.monotonic() - t_start > 0.5 * 60.0 * budget_minutes:
            skipped["features"] = "more than half the time budget was spent before it could start"
        else:
            timed("features", lambda: features.scan(m, ids, seed=seed)
                  + (features.diff_scan(m, ref, ids, seed=seed) if ref is not None else []))
    # merge, confirm, merge
    t0 = time.monotonic()
    say("audit: confirming suspects")
    merged = merge([s for v in found.values() for s in v], by_trigger=True)  # each trigger confirmed on its own
    conf = Confirmer(m, ids, contexts, position, seed=seed, reference=ref)
    todo = to_confirm(merged)
    for s in todo[:max_confirm]:
        if time.monotonic() > deadline + 30:
            s.evidence["confirm"] = "not run: the time budget was spent"
            continue
        conf.confirm(s)
    kept, dropped = settle(merged)
    timings["confirm"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - t_start
    verdict = "suspect" if kept else "nothing found"
    say(f"audit: {verdict} ({len(kept)} suspects) in {timings['total']:.1f} s")
    own = {k: sorted((_copy(s) for s in v if s.above), key=lambda s: (-s.confidence, -_strength(s)))
           for k, v in found.items()}
    return AuditReport(model=str(getattr(m, "name", model)), reference=None if ref is None else str(getattr(ref, "name", reference)),
                       verdict=verdict, suspects=kept, methods=own, scored=found, timings=timings, dropped=dropped,
                       skipped=skipped,
                       corpus={"windows": int(ids.shape[0]), "tokens_per_window": int(ids.shape[1]),
                               "example": decode(m, ids[0, :32])},
                       calibration={"base": cal.base, "models": cal.models, "margin": cal.margin, "note": cal.note,
                                    "mode": mode, "warning": cal.warning})

