"""Replications: published results re-measured on zoo networks, as checks with targets.

Each replication is one file with a `replicate(quick, seed) -> Replication` function. A Replication is
a list of checks (target, what we got, pass) plus the raw figures, and prints as a table or as
the one JSON result line described in benchmarks/README.md (`"kind": "replication"`). `replicate_seeds` runs one replication on several seeds
(each seed trains its own networks) and gives each check's pass rate: a replication passes only when
every check passes on every seed.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.progress import duration, note


@dataclass(frozen=True)
class Check:
    """One target of a replication and the value obtained."""

    name: str
    target: str  # the target as a person reads it, e.g. ">= 0.85"
    got: Any  # a number, or a short string when the check could not run
    passed: bool
    note: str = ""  # how it was measured, or how --quick loosens it


def _machine() -> dict[str, Any]:
    return {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": None,
            "python": platform.python_version()}


@dataclass
class Replication:
    """The result of one replication on one seed: its checks (target, measured value, pass) and raw figures.

    `loosened` says in words what a `--quick` run relaxes; `reported` lists figures shown without a
    target. `json_line()` is the result line a replication prints last.
    """

    name: str
    checks: list[Check]
    figures: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    loosened: list[str] = field(default_factory=list)  # what --quick relaxes, in words
    seed: int = 0
    reported: list[str] = field(default_factory=list)  # figures shown without a target, in words

    @property
    def passed(self) -> bool:
        """Whether every check passes."""
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The result line's object: name, kind, machine, checks (target, got, pass), figures and pass."""
        return {"name": self.name, "kind": "replication", "machine": _machine(), "quick": self.quick,
                "seed": self.seed, "loosened": self.loosened, "reported": self.reported, "figures": self.figures,
                "checks": {c.name: {"target": c.target, "got": c.got, "pass": c.passed} for c in self.checks},
                "pass": self.passed}

    def json_line(self) -> str:
        """`to_json()` as one line of JSON."""
        return json.dumps(self.to_json())


@dataclass
class SeedSweep:
    """One replication on several seeds. A check passes when it passes on every seed, and the
    replication passes when every check does: a target that holds on some seeds only is not replicated."""

    name: str
    runs: dict[int, Replication]  # by seed, in the order run
    quick: bool = False
    seconds: dict[int, float] = field(default_factory=dict)  # wall time of each seed

    RULE = "a check passes when it passes on every seed; the replication passes when every check does"

    @property
    def seeds(self) -> list[int]:
        """The seeds, in the order they ran."""
        return list(self.runs)

    def check_names(self) -> list[str]:
        """Every check's name over all seeds, in first-seen order."""
        names: list[str] = []
        for rep in self.runs.values():
            names += [c.name for c in rep.checks if c.name not in names]
        return names

    def check(self, seed: int, name: str) -> Check | None:
        """The check `name` on `seed`, or None when that seed did not measure it."""
        return next((c for c in self.runs[seed].checks if c.name == name), None)

    def passed_seeds(self, name: str) -> list[int]:
        """The seeds on which check `name` passes."""
        return [s for s in self.runs if (c := self.check(s, name)) is not None and c.passed]

    def pass_rate(self, name: str) -> float:
        """The share of seeds on which check `name` passes."""
        return len(self.passed_seeds(name)) / len(self.runs)

    @property
    def passed(self) -> bool:
        """Whether every check passes on every seed."""
        return all(self.pass_rate(n) == 1.0 for n in self.check_names())

    def targets(self, name: str) -> str:
        """Check `name`'s target (targets that differ between seeds are joined with " | ")."""
        found = list(dict.fromkeys(c.target for s in self.runs if (c := self.check(s, name)) is not None))
        return found[0] if len(found) == 1 else " | ".join(found)

    def to_json(self) -> dict[str, Any]:
        """The result line's object: per check the target, the value on each seed, the pass rate and the seeds that
        passed."""
        first = next(iter(self.runs.values()))
        checks = {}
        for n in self.check_names():
            got = {str(s): (c.got if (c := self.check(s, n)) is not None else "not measured on this seed")
                   for s in self.runs}
            checks[n] = {"target": self.targets(n), "got": got, "pass": self.pass_rate(n) == 1.0,
                         "pass_rate": round(self.pass_rate(n), 4), "passed_seeds": self.passed_seeds(n)}
        return {"name": self.name, "kind": "replication", "machine": _machine(), "quick": self.quick,
                "seeds": self.seeds, "rule": self.RULE, "loosened": first.loosened, "reported": first.reported,
                "figures": {"seconds": {str(s): round(t, 1) for s, t in self.seconds.items()},
                            "per_seed": {str(s): r.figures for s, r in self.runs.items()}},
                "checks": checks, "pass": self.passed}

    def json_line(self) -> str:
        """`to_json()` as one line of JSON."""
        return json.dumps(self.to_json())


def _registry() -> dict[str, Callable[..., Replication]]:
    from . import grokking, induction_heads, sae_universality, tms

    return {"tms": tms.replicate, "grokking": grokking.replicate, "sae-universality": sae_universality.replicate,
            "induction-heads": induction_heads.replicate}


NAMES = ("tms", "grokking", "sae-universality", "induction-heads")


def _lookup(name: str) -> Callable[..., Replication]:
    reg = _registry()
    if name not in reg:
        raise KeyError(f"no replication named {name!r}; available: {', '.join(reg)}")
    return reg[name]


def replicate(name: str, quick: bool = False, seed: int = 0, device: str | None = None) -> Replication:
    """Train (or reuse) the zoo networks of replication `name` for `seed`, measure, and check the targets.
    `device` is where networks not trained yet are trained (default the CPU; see `zoo.train`); the
    measurements read the saved weights."""
    fn = _lookup(name)
    t0 = time.monotonic()
    label = f"replicate {name}{' --quick' if quick else ''}" + (f" --seed {seed}" if seed else "")
    note(f"{label}: training (or reusing) its zoo networks, then measuring")
    rep = fn(quick, seed, device=device)
    note(f"{label}: measured in {duration(time.monotonic() - t0)}")
    return rep


def replicate_seeds(name: str, seeds: Sequence[int], quick: bool = False,
                    log: Callable[[str], None] | None = note, device: str | None = None) -> SeedSweep:
    """`replicate(name, quick, seed, device)` for every seed, one after another (each trains or reuses its own
    networks), with a progress line before and after each seed."""
    fn = _lookup(name)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("replicate_seeds needs at least one seed")
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be >= 0, got {seeds}")
    label = f"replicate {name}" + (" --quick" if quick else "")
    sweep = SeedSweep(name, {}, quick)
    for i, s in enumerate(seeds, 1):
        if log:
            log(f"{label}: seed {s} ({i}/{len(seeds)}): training or reusing its networks, then measuring")
        t = time.monotonic()
        rep = fn(quick, s, device=device)
        sweep.runs[s] = rep
        sweep.seconds[s] = time.monotonic() - t
        if log:
            bad = [c.name for c in rep.checks if not c.passed]
            log(f"{label}: seed {s}: {len(rep.checks) - len(bad)}/{len(rep.checks)} checks pass in "
                f"{sweep.seconds[s]:.0f} s" + (f"; failing: {', '.join(bad)}" if bad else ""))
    return sweep


def parse_seeds(text: str) -> list[int]:
    """"3" -> [0, 1, 2] (that many seeds from 0); "0,1,2" or "4,7" -> those seeds; "2-5" -> [2, 3, 4, 5]."""
    text = text.strip()
    try:
        if "," in text:
            out = [int(t) for t in text.split(",") if t.strip()]
        elif "-" in text.lstrip("-"):
            lo, hi = text.split("-", 1)
            out = list(range(int(lo), int(hi) + 1))
        else:
            out = list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give a count (3 = seeds 0, 1, 2), a list (0,1,2) or a range "
                         "(0-2)") from None
    if not out or any(s < 0 for s in out):
        raise ValueError(f"--seeds {text!r} names no seed >= 0; give a count (3), a list (0,1,2) or a range (0-2)")
    return out
