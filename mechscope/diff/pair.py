"""Two networks to compare: loading either from any name mechscope knows, and checking they match.

A and B may each be a zoo name (`zoo:textlm-quick`), a zoo run directory (one holding a zoo
`config.json` and `model.safetensors`, as the public fine-tunes are), a local Hugging Face
directory or a registered name (`mechscope.load`), or an adapter or `nn.Module` already in memory.
A diff is only defined between networks of one architecture: `check_same_architecture` refuses
different classes and names the first parameter that is missing on one side or differs in shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import LoadError
from ..models import wrap


class ArchitectureMismatch(LoadError):
    """A and B are not the same architecture (the message names the parameter and both shapes).

    Example::

        from mechscope.diff import ArchitectureMismatch, load_pair
        try:
            load_pair("zoo:textlm-quick", "zoo:induction-quick")
        except ArchitectureMismatch as err:
            print(err)                           # names the parameter and both shapes
    """


def _zoo_run_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "recipe" in data and "hparams" in data


def load_model(spec: Any, role: str = "model", device: str | None = None) -> Any:
    """The adapter of `spec` (see the module docstring), moved to `device` when one is given; `role` ("A" or "B")
    goes into error messages.

    Example::

        from mechscope.diff import load_model
        a = load_model("zoo:textlm-quick", role="A")   # a zoo name, a run directory or a checkpoint
    """
    from ..models.load import check_device

    device = check_device(device)  # before anything is read
    model = _load_model(spec, role)
    if device is not None:
        model.module.to(device)
    return model


def _load_model(spec: Any, role: str) -> Any:
    if isinstance(spec, nn.Module):
        return wrap(spec)
    if not isinstance(spec, (str, os.PathLike)):
        if hasattr(spec, "module") and hasattr(spec, "sites"):
            return spec  # an adapter
        raise TypeError(f"{role}: expected a name, a directory, a module or an adapter, got {type(spec).__name__}")
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir() and _zoo_run_dir(path):
        from ..zoo import load_zoo

        return load_zoo(path.name, path=path)
    if ":" not in text and (os.sep in text or text.startswith(".")) and not path.exists():
        raise LoadError(f"{role}: {path} does not exist (give a zoo name such as zoo:textlm-quick, a "
                        "Hugging Face directory or a zoo run directory)")
    from ..models.load import load

    try:
        return load(text)
    except LoadError as e:
        raise LoadError(f"{role}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint surfaces as many error types
        bad = _unreadable_weights(path) if path.is_dir() else None
        where = f"{bad} cannot be read ({type(e).__name__}: {e})" if bad else f"cannot load {text}: {type(e).__name__}: {e}"
        raise LoadError(f"{role}: {where}; replace the file or give another checkpoint") from e


def _unreadable_weights(directory: Path) -> Path | None:
    """The first safetensors file in `directory` whose header cannot be read, if any."""
    from safetensors import safe_open

    for f in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as g:
                for k in g.keys():
                    g.get_slice(k)
        except Exception:  # noqa: BLE001 - any failure to read it names the file
            return f
    return None


def check_same_architecture(a: Any, b: Any) -> None:
    """Raise ArchitectureMismatch unless A and B are the same class with the same parameter shapes.

    Example::

        from mechscope.diff import check_same_architecture, load_model
        check_same_architecture(load_model("zoo:modadd-quick"), load_model("zoo:modadd-frac05"))  # or raises
    """
    ma, mb = a.module, b.module
    if type(ma) is not type(mb):
        raise ArchitectureMismatch(f"A is a {type(ma).__name__} and B a {type(mb).__name__}: a diff needs two "
                                   "networks of one architecture")
    pa = {k: tuple(v.shape) for k, v in ma.state_dict().items()}
    pb = {k: tuple(v.shape) for k, v in mb.state_dict().items()}
    only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
    if only_a or only_b:
        side, names = ("A", only_a) if only_a else ("B", only_b)
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise ArchitectureMismatch(f"parameter {names[0]} is only in {side}{more}: A and B are not the same "
                                   "architecture")
    for k in pa:
        if pa[k] != pb[k]:
            raise ArchitectureMismatch(f"parameter {k} has shape {list(pa[k])} in A and {list(pb[k])} in B: "
                                       "A and B are not the same architecture")


def load_pair(a: Any, b: Any, device: str | None = None) -> tuple[Any, Any]:
    """Both adapters (on `device` when one is given), checked to be one architecture.

    Example::

        from mechscope.diff import load_pair
        a, b = load_pair("zoo:modadd-quick", "zoo:modadd-frac05")   # or run directories, HF directories
    """
    ma, mb = load_model(a, "A", device), load_model(b, "B", device)
    check_same_architecture(ma, mb)
    return ma, mb
