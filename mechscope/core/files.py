"""Files written atomically: safetensors with a digest of their tensors, and JSON.

A write goes to a temporary file next to its target, is flushed to disk and renamed over the
target (and the rename itself is flushed), so a reader, or a run resumed after SIGKILL, sees the
old file or the new one, never part of one. Tensor files carry a SHA-256 digest of their tensors
in the safetensors metadata. Reading back, with errors that name the file, is up to each user
(the zoo and the dictionaries say different things about what to do next). Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor


def digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of `tensors`, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def tmp_path(path: Path) -> Path:
    """The temporary file beside `path` that an atomic write fills before the rename (hidden, named by this
    process' id)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_partial_write(path: Path) -> bool:
    """Whether `path` is the temporary file of an atomic write: ours (`tmp_path`), or the one
    safetensors' `save_file` writes first beside its target (Rust's tempfile: ".tmp" and six
    letters or digits), which a kill can leave behind too."""
    name = path.name
    return (name.startswith(".") and ".tmp-" in name) or re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", name) is not None


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete the temporary files that writes interrupted by a kill left in `directory` (not below
    it); returns them. Call it only where no other process is writing into the directory (a run or
    a harvest being resumed owns its directory)."""
    gone = []
    if directory.is_dir():
        for p in directory.iterdir():
            if is_partial_write(p) and p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path` durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself must survive a crash
        finally:
            os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)


def write_dir_atomically(path: Path, fill: Callable[[Path], None]) -> None:
    """Call `fill(tmp)` on a fresh hidden directory beside `path`, then put it in place of `path` (an older
    `path` is removed first): a reader finds the whole directory or the one before, never half of one."""
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_tensors(path: Path, tensors: dict[str, Tensor], meta: dict[str, str] | None = None,
                  clone: bool = False) -> str:
    """Write contiguous CPU copies of `tensors` and `meta` (plus their "sha256") to `path`
    atomically; returns the digest. `clone` copies views too (safetensors refuses tensors that
    share memory, as a state dict's may)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if clone:
        data = {k: v.clone() for k, v in data.items()}
    sha = digest(data)
    write_atomically(path, lambda tmp: save_file(data, str(tmp), metadata={**(meta or {}), "sha256": sha}))
    return sha


def write_json(path: Path, obj: Any, indent: int = 2) -> None:
    """Write `obj` as JSON (sorted keys, a final newline) to `path` atomically."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent, sort_keys=True) + "\n"))
