"""The zoo: small reference networks trained here, with their checkpoints.

    from mechscope import zoo
    zoo.train("modadd", quick=True)        # or `mechscope zoo train modadd --quick`
    model = zoo.load_zoo("modadd-quick")   # the adapter, canonical sites; step=N for a checkpoint
    zoo.open_run("modadd-quick").metrics() # the training log
    zoo.network("induction")               # a finished run: trained here, else shipped, else trained now

Zoo names are `RECIPE[-VARIANT][-seedN]`: `modadd`, `modadd-quick`, `tms-quick-seed3`.

The networks the demo needs are also shipped in the package (`zoo/shipped.py`: final weights, the
run's config and metrics, SHA-256 checked): `load_zoo` and `network` use them when the cache has
no finished run, so a fresh clone analyses without training. `train` always trains (replications
need the checkpoints along the way).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import LoadError
from ..models.load import register_source
from .files import CheckpointError
from .recipe import Recipe
from . import shipped
from .recipes import RECIPES
from .train import Run, RunSpec, checkpoint_schedule, run_training, zoo_dir

_SEED = re.compile(r"^(.*)-seed(\d+)$")


def spec(name: str, quick: bool = False, seed: int | None = None, steps: int | None = None) -> RunSpec:
    """The RunSpec of a zoo name; `quick` picks the quick variant, `steps` shortens a run (tests).

    Example::

        from mechscope.zoo import spec
        spec("modadd", quick=True).hp
    """
    m = _SEED.match(name)
    if m:
        name, parsed = m.group(1), int(m.group(2))
        if seed is not None and seed != parsed:
            raise ValueError(f"seed {seed} contradicts the name's -seed{parsed}")
        seed = parsed
    recipe, variant = _split(name)
    if quick:
        if variant:
            raise ValueError(f"{name!r} already names a variant; drop --quick")
        variant = "quick"
    if variant not in recipe.variants:
        raise LoadError(f"recipe {recipe.name!r} has no variant {variant!r}; it has "
                        + ", ".join(repr(v) for v in recipe.variants))
    hp = dict(recipe.variants[variant])
    if steps is not None:
        hp["steps"] = int(steps)
    return RunSpec(recipe, variant, int(seed or 0), hp)


def _split(name: str) -> tuple[Recipe, str]:
    # the longest recipe name that prefixes `name`: "induction-1l-quick" -> induction-1l, quick
    for rname in sorted(RECIPES, key=len, reverse=True):
        if name == rname:
            return RECIPES[rname], ""
        if name.startswith(rname + "-"):
            return RECIPES[rname], name[len(rname) + 1:]
    raise LoadError(f"no zoo recipe named {name!r}; recipes: {', '.join(sorted(RECIPES))}")


def train(name: str, quick: bool = False, seed: int | None = None, *, steps: int | None = None,
          path: Path | None = None, progress: bool = True, **kw: Any) -> Run:
    """Train a zoo network (or resume it, or return it at once if it is already trained).

    Example::

        from mechscope.zoo import train
        run = train("induction", quick=True)     # what `mechscope zoo train induction --quick` does
    """
    return run_training(spec(name, quick, seed, steps), path, progress=progress, **kw)


def open_run(name: str, path: Path | None = None) -> Run:
    """The run directory of a zoo name (trained or not).

    Example::

        from mechscope.zoo import open_run
        open_run("induction").done
    """
    return Run(path or zoo_dir() / spec(name).name)


def build_module(run: Run, step: int | None = None) -> nn.Module:
    """The run's network with its final weights (or those after `step` updates), in eval mode.

    Example::

        from mechscope.zoo import build_module, network
        net = build_module(network("induction-quick"))          # the final weights, in eval mode
        run = network("induction")
        net = build_module(run, step=run.checkpoint_steps()[10])   # an early checkpoint (a run trained here)
    """
    if not run.done and step is None:
        if run.state_path.is_file() or run.config_path.is_file():
            raise LoadError(f"{run.path.name} was not trained to the end; run `mechscope zoo train "
                            f"{run.path.name}` to resume it")
        raise LoadError(f"zoo model {run.path.name!r} is not trained yet; run `mechscope zoo train "
                        f"{run.path.name}` first")
    cfg = run.config()
    module = RECIPES[cfg["recipe"]].build(cfg["hparams"])
    try:
        module.load_state_dict(run.weights(step))
    except RuntimeError as e:
        raise CheckpointError(f"weights in {run.path} do not fit the recipe's network: {e}") from e
    return module.eval()


def _shipped_instead(name: str, retrain: bool = False) -> bool:
    """Whether the shipped copy stands in for `name`: the cache holds no finished run of it."""
    return not retrain and not open_run(name).done and shipped.is_shipped(spec(name).name)


def finished_run(name: str, *, retrain: bool = False) -> Run | None:
    """The finished run `network` would return without training, or None: the cache's run when it is
    trained, else (unless `retrain`) the copy shipped in the package, checked and unpacked.

    Example::

        from mechscope.zoo import finished_run
        run = finished_run("induction-quick")    # None when it would have to be trained
    """
    if _shipped_instead(name, retrain):
        return shipped.unpack(spec(name).name, spec(name).config())
    run = open_run(name)
    return run if run.done else None


def network(name: str, *, retrain: bool = False, progress: bool = True) -> Run:
    """The finished run of a zoo name: the cache's when it is trained (checked against the recipe's
    current settings), else the copy shipped in the package (checked and unpacked, see
    `zoo/shipped.py`), else trained here now. `retrain` leaves the shipped copy out: the network is
    trained here, or a run trained here before is reused.

    Example::

        from mechscope.zoo import network
        run = network("induction-quick")         # trained, shipped, or trained now
    """
    if _shipped_instead(name, retrain):
        return shipped.unpack(spec(name).name, spec(name).config())
    return train(name, progress=progress)


def load_zoo(name: str, step: int | None = None, path: Path | None = None):
    """A trained zoo network wrapped in its adapter (`mechscope.load("zoo:NAME")`): the cache's run,
    else the copy shipped in the package (final weights only). An absolute path as NAME is a finished
    run directory anywhere (`mechscope.load(path)` of such a directory comes here).

    Example::

        from mechscope.zoo import load_zoo
        model = load_zoo("induction-quick")      # the same as ms.load("zoo:induction-quick")
    """
    from ..models import wrap

    name = name.removeprefix("zoo:")
    if path is None and Path(name).is_absolute():  # a run directory outside the zoo (a saved variant)
        path = Path(name)
    run = open_run(name, path)
    if path is None and _shipped_instead(name):
        if step is not None:
            raise LoadError(f"zoo model {name!r} is not trained here and its copy shipped in the package holds the "
                            f"final weights only, not step {step}; `mechscope zoo train {name}` trains it with "
                            "its checkpoints")
        run = shipped.unpack(spec(name).name, spec(name).config())
    module = build_module(run, step)
    label = f"zoo:{name}" + ("" if step is None else f"@{step}")
    make = getattr(module, "mechscope_adapter", None)
    tokenizer = RECIPES[run.config()["recipe"]].tokenizer(run.config()["hparams"])
    if callable(make):
        adapter = make(name=label, **({"tokenizer": tokenizer} if tokenizer is not None else {}))
    else:  # a Hugging Face module gets its family adapter, anything else the generic one
        adapter = wrap(module, tokenizer=tokenizer, name=label)
    adapter.zoo_run = run  # the run directory: config, metrics, checkpoints
    return adapter


register_source("zoo", load_zoo)


def names() -> list[str]:
    """Every zoo name the recipes define (seed 0).

    Example::

        from mechscope.zoo import names
        names()                                  # ["modadd", ..., "induction-quick", ...]
    """
    return [r.name + (f"-{v}" if v else "") for r in RECIPES.values() for v in r.variants]


__all__ = ["CheckpointError", "Recipe", "RECIPES", "Run", "RunSpec", "build_module", "checkpoint_schedule",
           "finished_run", "load_zoo", "names", "network", "open_run", "shipped", "spec", "train", "zoo_dir"]
