"""The artifact schema: version, names, plain values, and checked JSON reads and atomic writes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import MechscopeError
from ..core.files import write_atomically

SCHEMA_VERSION = 1
FORMAT = "mechscope-artifacts"
DEFAULT_DIR = "out"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,127}$")
KINDS = ("overview", "attention", "head_roles", "patching", "circuit", "training", "features", "explanation",
         "graph", "vision", "study")

REQUIRED: dict[str, tuple[str, ...]] = {
    "overview": ("name", "architecture", "n_layers", "n_heads", "d_model", "vocab", "sites", "params"),
    "attention": ("tokens", "patterns"),
    "head_roles": ("roles", "n_layers", "n_heads"),
    "patching": ("name", "rows", "cols", "values", "metric", "ablation"),
    "circuit": ("name", "method", "nodes", "edges", "ablation"),
    "training": ("metrics",),
    "features": ("store",),
    "explanation": ("name", "hypothesis", "results"),
    "graph": ("name", "tokens", "nodes", "edges", "feature_sets"),
    "vision": ("name", "layer", "panels"),
    "study": ("name", "title", "sections", "checks", "graphs"),
}


class ArtifactError(MechscopeError):
    """An artifact directory or file that is missing, of another schema version, or malformed.

    Example::

        from mechscope.artifacts import ArtifactError, read_artifacts
        try:
            read_artifacts("out")
        except ArtifactError as err:
            print(err)                           # names the file and what to do
    """


def check_name(name: str, what: str = "name") -> str:
    """A name usable as one path component: letters, digits and _ . @ : + -, not starting with '.'.

    Example::

        from mechscope.artifacts import check_name
        check_name("ioi-heads")                  # "ioi-heads"
        check_name("../x", "patching name")      # raises ArtifactError
    """
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise ArtifactError(f"invalid {what} {name!r}: use letters, digits and _ . @ : + - "
                            "(at most 128 characters, not starting with '.' and without '..')")
    return name


def slug(name: str) -> str:
    """A directory name for a model name ("zoo:induction-quick" -> "zoo_induction-quick").

    Example::

        from mechscope.artifacts import slug
        slug("zoo:induction-quick")              # "zoo_induction-quick"
    """
    s = re.sub(r"[^A-Za-z0-9_.+-]", "_", name).strip(".") or "model"
    return check_name(s.replace("..", "_")[:128])


def plain(x: Any, digits: int | None = None) -> Any:
    """Tensors, numpy arrays and numbers as nested lists of Python floats/ints; NaN/inf -> None.

    Example::

        from mechscope.artifacts import plain
        plain(torch.tensor([[0.12345, float("nan")]]), digits=2)    # (1, 2) -> [[0.12, None]]
    """
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().to("cpu")
        x = x.float().tolist() if x.is_floating_point() else x.tolist()
    elif hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy
        x = x.tolist()
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return round(x, digits) if digits is not None else x
    if isinstance(x, Mapping):
        return {str(k): plain(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v, digits) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def spec_text(spec: Any) -> str:
    """An ablation specification as one line: an AblationSpec, its describe() dict, or text.

    Example::

        from mechscope.artifacts import spec_text
        from mechscope.causal import AblationSpec
        spec_text(AblationSpec("mean", reference="ioi-abc"))
    """
    if spec is None:
        return "unspecified"
    if isinstance(spec, str):
        return spec
    if hasattr(spec, "describe"):
        spec = spec.describe()
    if isinstance(spec, Mapping):
        return ", ".join(f"{k}={v}" for k, v in spec.items() if v is not None)
    return str(spec)


def header(kind: str) -> dict[str, Any]:
    """The fields every artifact file starts with."""
    return {"kind": kind, "schema_version": SCHEMA_VERSION}


def write_json(path: Path, obj: dict[str, Any], indent: int | None = None) -> Path:
    """Write `obj` atomically (NaN refused: `plain` turns it into null first)."""
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"), allow_nan=False)
    write_atomically(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def check_version(path: Path, got: Any) -> None:
    """Raise ArtifactError, saying what to do, when file `path`'s schema version `got` is not the one this
    mechscope reads."""
    if got != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has artifact schema version {got!r}, but this mechscope reads version "
                            f"{SCHEMA_VERSION}; write the artifacts again with this version of mechscope "
                            "(or open them with the version that wrote them)")


def load_json(path: Path, missing: str = "", invalid: str = "write the artifacts again") -> Any:
    """The JSON in file `path`; ArtifactError when it is absent or not JSON (`missing` and `invalid`
    say what to do then)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist" + (f"; {missing}" if missing else "")) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); {invalid}") from e


def read_json(path: Path, kind: str) -> dict[str, Any]:
    """An artifact file of `kind`, checked: valid JSON object, this schema version, the kind's fields."""
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} holds a {type(obj).__name__}, expected a JSON object")
    check_version(path, obj.get("schema_version"))
    if obj.get("kind") != kind:
        raise ArtifactError(f"{path} is a {obj.get('kind')!r} artifact, expected {kind!r}")
    missing = [k for k in REQUIRED[kind] if k not in obj]
    if missing:
        raise ArtifactError(f"{path} lacks the fields {missing} of a {kind} artifact (schema {SCHEMA_VERSION})")
    return obj


def read_manifest(root: Path) -> dict[str, Any]:
    """`root/manifest.json`, checked (format, version, a list of models with valid directory names)."""
    path = root / "manifest.json"
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory of mechscope artifacts (it does not exist)")
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{root} has no manifest.json: it is not a mechscope artifact directory "
                            "(write one with mechscope.artifacts.ArtifactWriter, or `make demo`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a mechscope artifact manifest (format {obj.get('format')!r})"
                            if isinstance(obj, dict) else f"{path} is not a JSON object")
    check_version(path, obj.get("schema_version"))
    if not isinstance(obj.get("models"), list):
        raise ArtifactError(f"{path} has no list of models")
    for m in obj["models"]:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or "dir" not in m:
            raise ArtifactError(f"{path}: every model entry needs a name (text) and a dir, got {m!r}")
        check_name(m["dir"], f"model directory in {path}")
    return obj
