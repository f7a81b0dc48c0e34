"""Replications: published results re-measured on zoo networks, as checks with targets.

Each replication is one file with a `replicate(quick) -> Replication` function. A Replication is
a list of checks (target, what we got, pass) plus the raw figures, and prints as a table or as
the one JSON result line described in benchmarks/README.md (`"kind": "replication"`).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Check:
    """One target of a replication and the value obtained."""

    name: str
    target: str  # the target as a person reads it, e.g. ">= 0.85"
    got: Any  # a number, or a short string when the check could not run
    passed: bool
    note: str = ""  # how it was measured, or how --quick loosens it


@dataclass
class Replication:
    name: str
    checks: list[Check]
    figures: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    loosened: list[str] = field(default_factory=list)  # what --quick relaxes, in words

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "replication",
                "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": None,
                            "python": platform.python_version()},
                "quick": self.quick, "loosened": self.loosened, "figures": self.figures,
                "checks": {c.name: {"target": c.target, "got": c.got, "pass": c.passed} for c in self.checks},
                "pass": self.passed}

    def json_line(self) -> str:
        return json.dumps(self.to_json())


def _registry() -> dict[str, Callable[[bool], Replication]]:
    from . import grokking, induction_heads, sae_universality, tms

    return {"tms": tms.replicate, "grokking": grokking.replicate, "sae-universality": sae_universality.replicate,
            "induction-heads": induction_heads.replicate}


NAMES = ("tms", "grokking", "sae-universality", "induction-heads")


def replicate(name: str, quick: bool = False) -> Replication:
    """Train (or reuse) the zoo networks of replication `name`, measure, and check the targets."""
    from ..core.progress import duration, note

    reg = _registry()
    if name not in reg:
        raise KeyError(f"no replication named {name!r}; available: {', '.join(reg)}")
    t0 = time.monotonic()
    note(f"replicate {name}{' --quick' if quick else ''}: training (or reusing) its zoo networks, then measuring")
    rep = reg[name](quick)
    note(f"replicate {name}: measured in {duration(time.monotonic() - t0)}")
    return rep
