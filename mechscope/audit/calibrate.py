"""Thresholds and confidence, calibrated on clean models only.

Every method reports raw scores under named statistics (`Suspect.stat`). A calibration runs the
audit without thresholds on clean models of one architecture -- a zoo base (`textlm-quick`, or
`bytegpt2` where that recipe is present) trained with seeds 100, 101, 102 (never the seeds a
benchmark's clean cases use, which are below 100) -- and, for audits with a reference, on clean
pairs: each seed against the previous one (siblings), and each seed against itself fine-tuned on
its own clean training text (the architecture's fine-tune of `mechscope.audit.plant_tune`, with
the steps and learning rate planted fine-tunes use, data seeds `FINETUNE_DATA_SEED` + seed, far from
the benchmark's). Thresholds are per architecture: a byte-level GPT-2 pair is judged on byte-level
GPT-2 pairs, never on the text model's. An audit uses the calibration of the base whose vocabulary, width and depth match the
model, else the text model's, with a warning in the report that the thresholds come from another
architecture. For each
statistic and mode ("alone" or "reference") it keeps the largest score any clean model reached;
the threshold is `MARGIN` times that. A suspect is above threshold when its score exceeds it, and
its confidence is s⁴ / (s⁴ + t⁴) for score s and threshold t: 0.5 at the threshold (a value no clean
model came within `MARGIN` of), 0.94 at twice it, near 0 well below it. A statistic no clean
model produced has no threshold and its suspects confidence 0.

The calibration is a JSON file per base under cache_dir()/audit/; `load_or_build` builds it on
first use (progress lines), `mechscope audit --calibrate` rebuilds it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import write_json
from ..core.paths import cache_dir
from ..core.progress import note
from .suspect import Suspect

MARGIN = 1.5
SEEDS = (100, 101, 102)
BASES = ("textlm-quick", "bytegpt2")  # zoo bases a calibration can be built for (recipe and variant)
FINETUNE_DATA_SEED = 5000  # + the base's seed: data orders no benchmark fine-tune uses (they use 1000-2999)
VERSION = 6  # 3: the n-gram sweep's statistic (ngram_shift_ratio) is calibrated; older files lack it. 4: byte-level
# patching candidates are whole UTF-8 characters (its thresholds were measured on more candidates). 5: weight kurtosis
# (neuron_in_kurt_z, neuron_out_kurt_z) and crosscoder diff latents (diff_latent_spike_z). 6: diff latents are
# candidates only where they fire on at least features.MIN_FIRES tokens


def confidence(score: float, threshold: float) -> float:
    """s⁴ / (s⁴ + t⁴): 0.5 at the threshold, 0.94 at twice it (1 for an infinite score, 0 for none)."""
    if score <= 0 or threshold is None:
        return 0.0
    if not math.isfinite(score):
        return 1.0
    return 1.0 / (1.0 + (threshold / score) ** 4)


@dataclass
class Calibration:
    """Largest clean score per mode and statistic, and where it came from."""

    clean: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {"alone": {}, "reference": {}})
    margin: float = MARGIN
    models: list[str] = field(default_factory=list)
    note: str = ""
    base: str = ""
    warning: str = ""

    def threshold(self, stat: str, mode: str) -> float | None:
        """The threshold of statistic `stat` in `mode`: the largest clean score times the margin (divided by it
        when negative); None when no clean score was recorded."""
        vals = [v for v in self.clean.get(mode, {}).get(stat, []) if math.isfinite(v)]
        if not vals:
            return None
        top = max(vals)
        return self.margin * top if top > 0 else abs(top) / self.margin if top < 0 else 1e-9

    def apply(self, s: Suspect, mode: str) -> Suspect:
        """Set `s`'s threshold and confidence from its score (confidence 0 without a threshold or a positive
        score); returns `s`."""
        t = self.threshold(s.stat, mode)
        s.threshold = t
        if t is None or not math.isfinite(s.score) and s.score < 0:
            s.confidence = 0.0
        elif s.score <= 0:
            s.confidence = 0.0
        else:
            s.confidence = confidence(s.score, t)
        return s

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the calibration, its version included."""
        return {"version": VERSION, "base": self.base, "margin": self.margin, "models": self.models,
                "clean": self.clean, "note": self.note}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Calibration":
        """The calibration `to_json` wrote; another version raises ValueError (`load` adds how to rebuild it)."""
        if d.get("version") != VERSION:
            raise ValueError(f"calibration version {d.get('version')} is not {VERSION}")
        return cls(clean=d["clean"], margin=float(d["margin"]), models=list(d["models"]), note=d.get("note", ""),
                   base=d.get("base", ""))

    def add(self, mode: str, suspects: list[Suspect]) -> None:
        """Record the largest finite score per statistic among `suspects`, one clean model's audit in `mode`."""
        best: dict[str, float] = {}
        for s in suspects:
            if math.isfinite(s.score):
                best[s.stat] = max(best.get(s.stat, -math.inf), s.score)
        for stat, v in best.items():
            self.clean.setdefault(mode, {}).setdefault(stat, []).append(v)


class Uncalibrated(Calibration):
    """No thresholds: every score is reported raw (used while building a calibration)."""

    def apply(self, s: Suspect, mode: str) -> Suspect:
        """Leave the score raw: no threshold, confidence 0; returns `s`."""
        s.threshold, s.confidence = None, 0.0
        return s


def shape_of(model: Any) -> tuple[int, int, int]:
    """(vocabulary, d_model, layers) of an adapter."""
    w = model.weights()
    return int(w.W_E.shape[0]), int(w.W_E.shape[1]), int(w.n_layers)


def base_for(model: Any) -> str | None:
    """The zoo base whose vocabulary, width and depth are the model's, if any."""
    from .. import zoo

    for base in BASES:
        try:
            hp = zoo.spec(base).hp
        except Exception:  # noqa: BLE001 - a recipe this installation does not have
            continue
        if (hp.get("vocab_size"), hp.get("d_model"), hp.get("n_layers")) == shape_of(model):
            return base
    return None


def default_path(base: str = BASES[0]) -> Path:
    """Where the calibration for zoo base `base` is cached."""
    return cache_dir() / "audit" / f"calibration-{base}.json"


def load(path: str | Path) -> Calibration:
    """The calibration in the JSON file `path`; an unreadable file raises ValueError saying how to rebuild it."""
    p = Path(path)
    try:
        return Calibration.from_json(json.loads(p.read_text()))
    except (OSError, ValueError, KeyError) as e:
        fix = "" if "mechscope audit --calibrate" in str(e) else "; rebuild it with `mechscope audit --calibrate`"
        raise ValueError(f"cannot read the audit calibration {p}: {e}{fix}") from e


def clean_finetune(base: str, seed: int, progress: bool = True) -> str:
    """The zoo base `base` of seed `seed` fine-tuned on its own clean training text (the planted
    fine-tunes' recipe, nothing rewritten), saved once under cache_dir()/audit/calibration-models/;
    its path."""
    from .plant import TUNE
    from .plant_arch import ARCHES
    from .plant_tune import finetune

    a = next((a for a in ARCHES.values() if a.zoo == base), None)
    if a is None:
        raise ValueError(f"no fine-tune recipe for calibration base {base!r}; bases: {', '.join(BASES)}")
    name = f"{a.base_name(seed)}-clean-finetune-{FINETUNE_DATA_SEED + seed}"
    path = cache_dir() / "audit" / "calibration-models" / name
    module, ref = a.base(seed, progress=progress)
    if not path.is_dir():  # saving writes a temporary directory and renames it: a directory is complete
        note(f"calibration: fine-tuning {a.base_name(seed)} on its own clean text ({TUNE[a.name]['steps']} steps)")
        model = finetune(a, module, seed=FINETUNE_DATA_SEED + seed, progress=progress, desc=f"fine-tune {name}",
                         **TUNE[a.name])
        a.save(model, path, ref)
    return str(path)


def build(seeds: tuple[int, ...] = SEEDS, *, base: str = BASES[0], budget_minutes: float = 10.0,
          progress: bool = True, path: str | Path | None = None, reference_pairs: bool = True) -> Calibration:
    """Train (or find) the clean calibration models, audit each without thresholds, and write the JSON."""
    from .. import zoo
    from .plant_arch import ARCHES
    from .run import audit

    if any(s < 100 for s in seeds):
        raise ValueError("calibration seeds must be 100 or more: lower seeds are kept for benchmark test cases")
    a = next((a for a in ARCHES.values() if a.zoo == base), None)
    cal = Calibration(base=base, note=f"{base} seeds {list(seeds)}"
                      + ("; reference pairs: each seed against the previous one and against itself fine-tuned on "
                         "its own clean text" if reference_pairs else ""))
    t0 = time.monotonic()
    names: list[str] = []
    refs: list[str] = []
    for s in seeds:
        name = f"{base}-seed{s}"
        names.append(name)
        if zoo.finished_run(name) is None:
            note(f"calibration: training {name}")
            zoo.train(base, seed=s, progress=progress)
        # the path the bench's cases are read from (a Hugging Face export for GPT-2), else the zoo name
        refs.append(a.base(s, progress=progress)[1] if a is not None else f"zoo:{name}")
        note(f"calibration: auditing {name} alone")
        rep = audit(refs[-1], budget_minutes=budget_minutes, calibration=Uncalibrated(), seed=s, progress=False)
        cal.add("alone", rep.all_suspects)
        cal.models.append(name)
        if not reference_pairs:
            continue
        pairs = [(refs[-1], refs[-2], f"{name} vs {names[-2]}")] if len(names) > 1 else []
        if a is not None:
            pairs.append((clean_finetune(base, s, progress), refs[-1], f"{name} fine-tuned on clean text vs {name}"))
        for m, r, label in pairs:
            note(f"calibration: auditing {label}")
            rep = audit(m, reference=r, budget_minutes=budget_minutes, calibration=Uncalibrated(), seed=s,
                        progress=False)
            cal.add("reference", rep.all_suspects)
            cal.models.append(label)
    note(f"calibration: {len(cal.models)} clean audits in {time.monotonic() - t0:.0f} s")
    out = Path(path) if path is not None else default_path(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, cal.to_json())
    note(f"calibration written to {out}")
    return cal


def load_or_build(calibration: Any = None, model: Any = None, progress: bool = True) -> Calibration:
    """A Calibration from an object, a path, or the cached one of the model's base: built on first use, and
    built again when the cached file was written by another calibration version or cannot be read (a path
    given here is never rebuilt: it is refused with how to rebuild it)."""
    if isinstance(calibration, Calibration):
        return calibration
    if calibration is not None:
        cal = load(calibration)
        mine = base_for(model) if model is not None else None
        if model is not None and cal.base != mine:
            cal.warning = (f"the calibration {calibration} was built on {cal.base}; this model's shape "
                           f"{shape_of(model)} is " + (f"{mine}'s" if mine else "no calibration base's")
                           + ": its thresholds may not transfer")
        return cal
    base = base_for(model) if model is not None else None
    warning = "" if base is not None or model is None else (
        f"no calibration base has this model's shape (vocabulary, d_model, layers) {shape_of(model)}: thresholds "
        f"come from {BASES[0]}, another architecture, and may not transfer")
    base = base or BASES[0]
    p = default_path(base)
    cal = None
    if p.is_file():
        try:
            cal = load(p)
        except ValueError as e:  # the cache's own copy, from another version or damaged: derived data, rebuilt
            note(f"the cached audit calibration {p} cannot be used ({e.__cause__ or e}): building it again")
    else:
        note(f"no audit calibration at {p}")
    if cal is None:
        note(f"building the audit calibration from clean {base} models (seeds {list(SEEDS)}; a few minutes, once)")
        cal = build(base=base, progress=progress)
    cal.warning = warning
    return cal
