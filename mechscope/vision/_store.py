"""Saving the vision results: a frozen dataclass as a directory of safetensors plus a small JSON.

`result.save(directory)` writes `tensors.safetensors` (every tensor field, and every tensor of a
field that is a dict of tensors, named "field" or "field/key") and `result.json` (the type's name and
every other field: numbers, strings, tuples, an `ImageSpec`); a field that is itself a saved result goes
into a subdirectory of its name. `Type.load(directory)` reads them back
into an equal object: tensors bit for bit, numbers exactly (JSON keeps a float's shortest exact form).
Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor

from ..core.errors import LoadError
from ..core.files import write_json, write_tensors
from .layers import ImageSpec

T = TypeVar("T", bound="Saved")
TENSORS = "tensors.safetensors"
SETTINGS = "result.json"


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
        write_tensors(directory / TENSORS, tensors, clone=True)
        write_json(directory / SETTINGS, {"type": type(self).__name__, "fields": settings})
        return directory

    @classmethod
    def load(cls: type[T], directory: str | Path) -> T:
        """The result saved in `directory` by `save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / SETTINGS).read_text())
            tensors = load_file(str(directory / TENSORS))
        except (OSError, ValueError) as e:
            raise LoadError(f"{directory} does not hold a saved {cls.__name__} ({e}); save one with "
                            f"result.save(directory)") from e
        if meta.get("type") != cls.__name__:
            raise LoadError(f"{directory} holds a {meta.get('type')}, not a {cls.__name__}; load it with "
                            f"{meta.get('type')}.load")
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
