"""Saving an analysis result: its tensors as safetensors and its settings and small fields as JSON.

A result saved at `DIR` is two files, `DIR/tensors.safetensors` (with a SHA-256 digest of the tensors
in its metadata, checked on reading) and `DIR/result.json` (the kind of result, so one kind is never
read as another, and everything that is not a tensor). Writes are atomic; nothing here unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from ..core.errors import LoadError
from ..core.files import digest, write_json, write_tensors

TENSORS = "tensors.safetensors"
FIELDS = "result.json"


def save_result(path: str | Path, kind: str, tensors: dict[str, Tensor], fields: dict[str, Any]) -> Path:
    """Write `tensors` and the JSON-able `fields` of a result of `kind` into directory `path`; returns it."""
    out = Path(path)
    write_tensors(out / TENSORS, tensors, {"kind": kind})
    write_json(out / FIELDS, {"kind": kind, **fields})
    return out


def load_result(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and fields `save_result` wrote into `path`; an error naming the file when it is missing,
    corrupt or holds another kind of result."""
    d = Path(path)
    try:
        fields = json.loads((d / FIELDS).read_text())
    except FileNotFoundError:
        raise LoadError(f"{d / FIELDS} does not exist: give the directory a result was saved into") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{d / FIELDS} is not valid JSON ({e})") from e
    got = fields.pop("kind", None)
    if got != kind:
        raise LoadError(f"{d} holds a saved {got!r} result, not {kind!r}")
    try:
        with safe_open(str(d / TENSORS), "pt") as f:
            want = (f.metadata() or {}).get("sha256")
        tensors = load_file(str(d / TENSORS))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LoadError(f"{d / TENSORS} is missing, truncated or not safetensors ({e})") from e
    if want != digest(tensors):
        raise LoadError(f"{d / TENSORS} is corrupt (its tensors do not match the digest it carries); save again")
    return tensors, fields
