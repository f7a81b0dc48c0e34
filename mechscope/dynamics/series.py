"""An ordered series of checkpoints of one architecture, each loaded as a mechscope adapter on demand.

    series = CheckpointSeries.from_zoo("induction")            # a zoo run's log-spaced checkpoints
    series = CheckpointSeries.from_hf_dirs(["ckpt-100", "ckpt-1000"])   # Hugging Face directories
    series = CheckpointSeries.from_safetensors(files, base="ckpt-100")  # weight files over one network
    for step, model in series:                                 # one network in memory at a time
        ...

Every file is checked when the series is built (it exists, its safetensors header reads, its tensor
names and shapes match the first checkpoint's), so a bad checkpoint fails at once with an error
naming the file, not after an hour of measuring; the weights themselves are read only when that
checkpoint is loaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import LoadError


class SeriesError(LoadError):
    """A checkpoint that is missing, unreadable, or of another architecture than the series' first.

    Example::

        from mechscope.dynamics import CheckpointSeries, SeriesError
        try:
            CheckpointSeries.from_paths(["ckpt/step100.safetensors", "ckpt/other.safetensors"])
        except SeriesError as err:
            print(err)                           # names the checkpoint and the problem
    """


Signature = dict[str, tuple[int, ...]]  # tensor name -> shape


def _header(path: Path) -> Signature:
    """Tensor names and shapes from a safetensors header (no weights read)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise SeriesError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SeriesError(f"checkpoint {path} is truncated or corrupt: its safetensors header does not read "
                          f"({e})") from e


def _mismatch(a: Signature, b: Signature) -> str | None:
    """The first difference between two signatures, in words, or None."""
    if missing := sorted(set(a) - set(b)):
        return f"tensor {missing[0]!r} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra := sorted(set(b) - set(a)):
        return f"it has an extra tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    for k in a:
        if a[k] != b[k]:
            return f"tensor {k!r} has shape {list(b[k])} instead of {list(a[k])}"
    return None


def _step_of(path: Path, index: int) -> int:
    """The training step a file or directory names (its last run of digits), else its position."""
    digits = re.findall(r"\d+", path.stem if path.is_file() else path.name)
    return int(digits[-1]) if digits else index


def _hf_weight_files(d: Path) -> list[Path]:
    files = sorted(d.glob("*.safetensors"))
    if not files:
        if not d.is_dir():
            raise SeriesError(f"checkpoint directory {d} does not exist")
        raise SeriesError(f"checkpoint directory {d} holds no .safetensors weights (only safetensors are read: "
                          "convert other formats first)")
    return files


def _hf_signature(d: Path) -> Signature:
    if not (d / "config.json").is_file():
        raise SeriesError(f"checkpoint directory {d} has no config.json: not a Hugging Face model directory")
    try:
        model_type = json.loads((d / "config.json").read_text()).get("model_type", "?")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SeriesError(f"{d / 'config.json'} is not valid JSON ({e})") from e
    sig: Signature = {f"config.model_type={model_type}": ()}
    for f in _hf_weight_files(d):
        sig |= _header(f)
    return sig


@dataclass
class CheckpointSeries:
    """Checkpoints in training order: `steps[i]` and a loader of checkpoint i as an adapter.

    `zoo_run` is the zoo run directory when the series comes from one (its config and data give the
    held-out set); `source` says where the checkpoints came from, for reports. `device` is where each
    checkpoint runs once loaded (None: where its loader puts it, the CPU).

    Example::

        from mechscope.dynamics import CheckpointSeries
        series = CheckpointSeries.from_zoo("induction")
        series.steps[:3]
        model = series.loaders[0]()              # the first checkpoint as an adapter
    """

    steps: list[int]
    loaders: list[Callable[[], Any]]
    paths: list[Path]
    source: str
    zoo_run: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.steps:
            raise SeriesError(f"{self.source}: no checkpoints")
        if len(self.steps) != len(self.loaders) or len(self.steps) != len(self.paths):
            raise ValueError("steps, loaders and paths must have one entry per checkpoint")
        order = sorted(range(len(self.steps)), key=lambda i: self.steps[i])
        if len(set(self.steps)) != len(self.steps):
            dup = next(s for s in self.steps if self.steps.count(s) > 1)
            raise SeriesError(f"{self.source}: two checkpoints have step {dup} "
                              f"({', '.join(str(p) for s, p in zip(self.steps, self.paths) if s == dup)})")
        self.steps = [self.steps[i] for i in order]
        self.loaders = [self.loaders[i] for i in order]
        self.paths = [self.paths[i] for i in order]

    def __len__(self) -> int:
        return len(self.steps)

    def load(self, i: int) -> Any:
        """Checkpoint i as a mechscope adapter (read from disk now), on `device`."""
        model = self.loaders[i]()
        if self.device is not None:
            model.module.to(self.device)
        return model

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """(step, adapter) pairs, one network loaded at a time."""
        for i, step in enumerate(self.steps):
            yield step, self.load(i)

    # --- constructors -----------------------------------------------------------------------------

    @classmethod
    def from_zoo(cls, name: str, path: Path | None = None) -> "CheckpointSeries":
        """The checkpoints of a trained zoo run (`induction`, `zoo:modadd`, ...)."""
        from .. import zoo

        name = name.removeprefix("zoo:")
        run = zoo.open_run(name, path)
        if not run.config_path.is_file():
            raise SeriesError(f"zoo run {name!r} has no run directory at {run.path}; train it with "
                              f"`mechscope zoo train {name}` (the copy shipped in the package has no checkpoints)")
        steps = run.checkpoint_steps()
        if not steps:
            raise SeriesError(f"zoo run {name!r} at {run.path} has no checkpoints under {run.path / 'checkpoints'}")
        paths = [run.checkpoint_path(s) for s in steps]
        _check_same(paths, [_header(p) for p in paths])

        def loader(step: int) -> Callable[[], Any]:
            return lambda: zoo.load_zoo(name, step=step, path=run.path)

        return cls(steps, [loader(s) for s in steps], paths, f"zoo:{name}", zoo_run=run,
                   info={"config": run.config()})

    @classmethod
    def from_hf_dirs(cls, dirs: Sequence[str | Path], steps: Sequence[int] | None = None) -> "CheckpointSeries":
        """Hugging Face model directories, one per checkpoint; steps from the directory names (their
        last number, e.g. `checkpoint-1200`) unless given."""
        from ..models.load import load

        paths = [Path(d).expanduser() for d in dirs]
        sigs = [_hf_signature(p) for p in paths]
        _check_same(paths, sigs)
        steps = list(steps) if steps is not None else [_step_of(p, i) for i, p in enumerate(paths)]
        return cls(steps, [(lambda p=p: load(p)) for p in paths], paths, f"{len(paths)} Hugging Face directories")

    @classmethod
    def from_safetensors(cls, files: Sequence[str | Path], base: str | Path | None = None,
                         steps: Sequence[int] | None = None) -> "CheckpointSeries":
        """Weight files of one network. `base` gives the architecture: a Hugging Face directory whose
        model each file's weights are loaded into; without it the files must lie in a zoo run's
        `checkpoints/` directory (the run's config builds the network)."""
        paths = [Path(f).expanduser() for f in files]
        sigs = [_header(p) for p in paths]
        _check_same(paths, sigs)
        steps = list(steps) if steps is not None else [_step_of(p, i) for i, p in enumerate(paths)]
        if base is None:
            run_dir = paths[0].parent.parent
            if paths[0].parent.name != "checkpoints" or not (run_dir / "config.json").is_file():
                raise SeriesError(f"{paths[0]} is not in a zoo run's checkpoints/ directory: give `base`, a Hugging "
                                  "Face directory of the same architecture, to load it into")
            return _zoo_files(paths, steps, run_dir)
        from ..models.load import load

        base = Path(base).expanduser()
        base_sig = {k: v for k, v in _hf_signature(base).items() if not k.startswith("config.")}

        def loader(p: Path) -> Callable[[], Any]:
            def go():
                from safetensors.torch import load_file

                model = load(base)
                state = load_file(str(p))
                try:
                    model.module.load_state_dict(state, strict=True)
                except RuntimeError as e:
                    raise SeriesError(f"checkpoint {p} does not fit the model of {base}: {e}") from e
                return model
            return go

        if why := _mismatch(base_sig, sigs[0]):
            raise SeriesError(f"checkpoint {paths[0]} is not of the architecture of {base}: {why}")
        return cls(steps, [loader(p) for p in paths], paths, f"{len(paths)} safetensors files over {base}")

    @classmethod
    def from_paths(cls, items: Sequence[str | Path], base: str | Path | None = None) -> "CheckpointSeries":
        """One zoo name (`zoo:NAME`), or checkpoint paths: all directories or all .safetensors files."""
        items = [str(i) for i in items]
        if not items:
            raise SeriesError("no checkpoints given: name a zoo run (zoo:NAME) or checkpoint paths")
        looks_like_path = "/" in items[0] or items[0].endswith(".safetensors") or Path(items[0]).exists()
        if len(items) == 1 and (items[0].startswith("zoo:") or not looks_like_path):
            return cls.from_zoo(items[0])
        paths = [Path(i) for i in items]
        for p in paths:
            if not p.exists():
                raise SeriesError(f"checkpoint {p} does not exist")
        if all(p.is_dir() for p in paths):
            return cls.from_hf_dirs(paths)
        if all(p.suffix == ".safetensors" for p in paths):
            return cls.from_safetensors(paths, base)
        raise SeriesError("give one zoo name, or checkpoints that are all Hugging Face directories or all "
                          ".safetensors files")


def _zoo_files(paths: list[Path], steps: list[int], run_dir: Path) -> CheckpointSeries:
    from .. import zoo
    from ..models import wrap
    from ..zoo.files import load_tensors

    run = zoo.Run(run_dir)
    cfg = run.config()
    recipe = zoo.RECIPES[cfg["recipe"]]

    def loader(p: Path) -> Callable[[], Any]:
        def go():
            module = recipe.build(cfg["hparams"])
            try:
                module.load_state_dict(load_tensors(p)[0])
            except RuntimeError as e:
                raise SeriesError(f"checkpoint {p} does not fit the network of {run_dir / 'config.json'}: {e}") from e
            return wrap(module.eval(), name=f"{run_dir.name}@{p.stem}")
        return go

    return CheckpointSeries(steps, [loader(p) for p in paths], paths, f"{len(paths)} files of {run_dir}",
                            zoo_run=run, info={"config": cfg})


def _check_same(paths: Sequence[Path], sigs: Sequence[Signature]) -> None:
    for p, s in zip(paths[1:], sigs[1:]):
        if why := _mismatch(sigs[0], s):
            raise SeriesError(f"checkpoint {p} is of another architecture than {paths[0]}: {why}")
