"""Zoo files: safetensors and JSON written atomically, read back with checks that name the file.

Every tensor file carries a SHA-256 digest of its tensors in the safetensors metadata, so a file
that was truncated, overwritten or bit-flipped fails with a `CheckpointError` naming the file and
the problem instead of loading wrong numbers. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..core import files
from ..core.errors import LoadError
from ..core.files import digest

SCHEMA = 1  # version of the zoo's file layout (config.json, checkpoints, state, metrics)


class CheckpointError(LoadError):
    """A zoo file that is missing, truncated or corrupt (the message names the file).

    Example::

        from mechscope.zoo import CheckpointError, load_zoo
        try:
            load_zoo("induction-quick")
        except CheckpointError as err:
            print(err)                           # names the file
    """


def save_tensors(path: Path, tensors: dict[str, Tensor], meta: dict[str, str] | None = None) -> None:
    """Write `tensors` (contiguous CPU copies) and `meta` to `path` atomically: temp file, then rename."""
    files.write_tensors(path, tensors, {"schema": str(SCHEMA), **(meta or {})}, clone=True)


def load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by `save_tensors`; CheckpointError names the file when it is damaged."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read as safetensors ({e}); "
                              "delete it and train again (`mechscope zoo train NAME` resumes from the "
                              "last good state)") from e
    want = meta.get("sha256")
    if want is None:
        raise CheckpointError(f"{path} has no sha256 digest in its metadata: it was not written by the zoo")
    got = digest(tensors)
    if got != want:
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the digest stored in it "
                              f"(sha256 {got[:12]}… instead of {want[:12]}…); delete it and train again")
    return tensors, meta


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` atomically."""
    files.write_json(path, obj, indent=2)


def read_json(path: Path) -> Any:
    """The JSON in `path`; a missing or invalid file raises CheckpointError naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); delete the run directory and train again") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSONL log; a last line cut short by a kill is ignored."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no newline after it: the write was interrupted
                break
            raise CheckpointError(f"{path}, line {i + 1}, is not valid JSON ({e})") from e
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    files.write_atomically(path, lambda tmp: tmp.write_text(text))
