"""Files of the dictionaries package: safetensors and JSON written atomically and read back with checks.

A write goes to a temporary file in the same directory, is flushed to disk, and is renamed over
its target, so a reader (or a harvest resumed after SIGKILL) sees either the old file or the new
one, never half of one. Tensor files carry a SHA-256 digest of their tensors in the safetensors
metadata; `read_tensors` recomputes it. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.errors import LoadError


class DictionaryFileError(LoadError):
    """A store shard, manifest or dictionary file that is missing, truncated or corrupt."""


def digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of `tensors`, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself must survive a crash
    finally:
        os.close(fd)


def write_tensors(path: Path, tensors: dict[str, Tensor], meta: dict[str, str] | None = None) -> str:
    """Write `tensors` and `meta` to `path` atomically; returns the digest stored in the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    sha = digest(data)
    tmp = tmp_path(path)
    try:
        save_file(data, str(tmp), metadata={**(meta or {}), "sha256": sha})
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sha


def read_meta(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors."""
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DictionaryFileError(f"{path} is missing, truncated or not safetensors ({e})") from e


def read_tensors(path: Path, check: bool = True) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of `path`; with `check`, the stored digest must match (names the file if not)."""
    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DictionaryFileError(f"{path} is truncated or corrupt ({e})") from e
    if check:
        want = meta.get("sha256")
        if want is None:
            raise DictionaryFileError(f"{path} has no sha256 digest in its metadata: mechscope did not write it")
        got = digest(tensors)
        if got != want:
            raise DictionaryFileError(f"{path} is corrupt: its tensors hash to {got[:12]}…, the file says "
                                      f"{want[:12]}…; delete it (a harvest rewrites missing shards)")
    return tensors, meta


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DictionaryFileError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryFileError(f"{path} is not valid JSON ({e})") from e


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
