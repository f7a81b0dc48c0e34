"""What every demo section shares: a thread setting for its duration, and its zoo network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads, then restore the previous setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def zoo_network(name: str, steps: int | None = None, run_path: Path | None = None, progress: bool = False,
                retrain: bool = False, device: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """The zoo network `name`: its finished run, its adapter (on `device`, None: the CPU) and its hyperparameters. The cache's run
    when it is trained, else the copy shipped in the package, else (or with `retrain`) trained here.
    `steps` shortens training (tests); the run then lives in its own directory (`run_path`, default
    beside the zoo's runs) so it never clashes with a full run of the same name."""
    from .. import zoo
    from ..models.load import check_device

    if steps is None and run_path is None:
        run = zoo.network(name, retrain=retrain, progress=progress)
    else:
        run_path = run_path or zoo.zoo_dir() / f"{name}-{steps}steps"
        run = zoo.train(name, steps=steps, path=run_path, progress=progress)
    model = zoo.load_zoo(name, path=run.path)
    if device is not None:
        model.module.to(check_device(device))
    return run, model, run.config()["hparams"]


def run_source(run: Any) -> str:
    """How a finished zoo run came here: shipped in the package, or trained on this machine."""
    import json

    done = json.loads(run.done_path.read_text())
    if done.get("source") == "shipped":
        return "the copy shipped in the package"
    return f"trained here ({run.path})"
