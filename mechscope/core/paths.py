"""Where mechscope keeps what it builds: one cache directory for every layer.

`$MECHSCOPE_CACHE`, else `~/.cache/mechscope`. Below it: `zoo/` (zoo runs), `zoo-shipped/` (the
zoo checkpoints shipped in the package, unpacked), `data/` (corpora and their token streams),
`dictionaries/`, and converted real models (`smollm2-135m/`).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root, read from the environment at each call (tests move it per test)."""
    return Path(os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope")
