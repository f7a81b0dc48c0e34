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


def zoo_network(name: str, steps: int | None = None, run_path: Path | None = None,
                progress: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """Train (or reuse) the zoo network `name`: its run, its adapter and its hyperparameters.
    `steps` shortens training (tests); the run then lives in its own directory (`run_path`, default
    beside the zoo's runs) so it never clashes with a full run of the same name."""
    from .. import zoo

    if steps is not None and run_path is None:
        run_path = zoo.zoo_dir() / f"{name}-{steps}steps"
    run = zoo.train(name, steps=steps, path=run_path, progress=progress)
    return run, zoo.load_zoo(name, path=run_path), run.config()["hparams"]
