"""Studies on real networks: end-to-end analyses that print their figures and one JSON line."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any


def result_line(name: str, kind: str, config: Mapping[str, Any], figures: Mapping[str, Any],
                checks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A study's result line: its name, kind and config, this machine (threads, torch, load), figures, checks and
    whether every check passed."""
    import torch

    return {"name": name, "kind": kind, "config": dict(config),
            "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": None,
                        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                        "python": platform.python_version()},
            "figures": dict(figures), "checks": dict(checks), "pass": all(c["pass"] for c in checks.values())}
