"""Saving the vision results: a frozen dataclass as a directory of safetensors plus a small JSON.

`result.save(directory)` writes `tensors.safetensors` (every tensor field, and every tensor of a
field that is a dict of tensors, named "field" or "field/key") and `result.json` (the type's name and
every other field: numbers, strings, tuples, an `ImageSpec`); a field that is itself a saved result goes
into a subdirectory of its name. `Type.load(directory)` reads them back
into an equal object: tensors bit for bit, numbers exactly (JSON keeps a float's shortest exact form).

Underneath, `save_result` / `load_result` (also used directly by the equivariance, modularity and
feature-visualisation results): the tensors file carries the kind of result and a SHA-256 digest of its
tensors, checked on reading, so a result is never read as another kind and a corrupt file is an error;
writes are atomic.
Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from ..core.errors import LoadError
from ..core.files import digest, write_json, write_tensors
from .layers import ImageSpec

T = TypeVar("T", bound="Saved")
TENSORS = "tensors.safetensors"
SETTINGS = "result.json"
FIELDS = SETTINGS


def _to_json(value: Any) -> Any:
    if isinstance(value, ImageSpec):
        return {"__imagespec__": dataclasses.asdict(value)}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in JSON")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):  # results hold tuples, never lists
        return tuple(_from_json(v) for v in value)
    if isinstance(value, dict) and "__imagespec__" in value:
        return ImageSpec(**value["__imagespec__"])
    if isinstance(value, dict) and "__dict__" in value:
        return {_from_json(k): _from_json(v) for k, v in value["__dict__"]}
    return value


def save_result(path: str | Path, kind: str, tensors: dict[str, Tensor], fields: dict[str, Any]) -> Path:
    """Write `tensors` and the JSON-able `fields` of a result of `kind` into directory `path`; returns it."""
    out = Path(path)
    write_tensors(out / TENSORS, tensors, {"kind": kind}, clone=True)
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


class Saved:
    """Mixin of the frozen result dataclasses: `save(directory)` and `load(directory)`."""

    def save(self, directory: str | Path) -> Path:
        """Write the result into `directory` (created if missing); returns it."""
        directory = Path(directory)
        tensors: dict[str, Tensor] = {}
        settings: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                tensors[f.name] = value
            elif isinstance(value, Saved):
                value.save(directory / f.name)
                settings[f.name] = {"__saved__": type(value).__name__}
            elif isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values()):
                tensors.update({f"{f.name}/{k}": v for k, v in value.items()})
                settings[f.name] = {"__tensors__": list(value)}
            else:
                settings[f.name] = _to_json(value)
        return save_result(directory, type(self).__name__, tensors, {"fields": settings})

    @classmethod
    def load(cls: type[T], directory: str | Path) -> T:
        """The result saved in `directory` by `save`."""
        directory = Path(directory)
        tensors, meta = load_result(directory, cls.__name__)
        values: dict[str, Any] = {}
        kinds = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            saved = meta["fields"].get(f.name)
            if f.name in tensors:
                values[f.name] = tensors[f.name]
            elif isinstance(saved, dict) and "__saved__" in saved:
                values[f.name] = kinds[f.name].load(directory / f.name)
            elif isinstance(saved, dict) and "__tensors__" in saved:
                values[f.name] = {k: tensors[f"{f.name}/{k}"] for k in saved["__tensors__"]}
            elif f.name in meta["fields"]:
                values[f.name] = _from_json(meta["fields"][f.name])
        return cls(**values)
