"""Files of the dictionaries package: written atomically by `mechscope.core.files` (so a harvest
resumed after SIGKILL sees whole files only), read back with checks that name the file and say
what to do. `read_tensors` recomputes the digest stored in each tensor file. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from ..core import files
from ..core.errors import LoadError
from ..core.files import digest


class DictionaryFileError(LoadError):
    """A store shard, manifest or dictionary file that is missing, truncated or corrupt.

    Example::

        from mechscope.dictionaries import DictionaryFileError, load
        try:
            load("sae/")
        except DictionaryFileError as err:
            print(err)                           # names the file and what is wrong
    """


def write_tensors(path: Path, tensors: dict[str, Tensor], meta: dict[str, str] | None = None) -> str:
    """Write `tensors` and `meta` to `path` atomically; returns the digest stored in the file."""
    return files.write_tensors(path, tensors, meta)


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
    """Write `obj` as JSON to `path` atomically."""
    files.write_json(path, obj, indent=1)


def read_json(path: Path) -> Any:
    """The JSON in `path`; a missing or invalid file raises DictionaryFileError naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DictionaryFileError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryFileError(f"{path} is not valid JSON ({e})") from e


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
