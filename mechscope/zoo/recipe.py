"""Recipe: everything the zoo trainer needs to know about one reference network.

A recipe is a small class in `mechscope/zoo/recipes/`: hyperparameters per variant (JSON-able),
how to build the model and its fixed data from a seed, the loss of one training step and the
evaluation metrics logged along the way. The trainer (`mechscope.zoo.train`) owns seeds,
checkpoints, resumption, progress bars and the device, so a recipe never touches files: on a
device, the trainer moves the model and the fixed data there (`to_device`), and a recipe moves the
batches it draws from the CPU generator `gen` to the model's device, so every device trains on the
same batches.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn


class Recipe(ABC):
    """One family of zoo networks; `variants` maps a variant name ("" is the full recipe) to its
    hyperparameters. The zoo name of a variant is `name` or `name-variant`.

    Example::

        from mechscope.zoo import spec
        recipe = spec("induction").recipe        # the family's Recipe
        net = recipe.build(spec("induction").hp)
    """

    name: str
    summary: str
    variants: dict[str, dict[str, Any]]

    @abstractmethod
    def build(self, hp: dict[str, Any]) -> nn.Module:
        """A freshly initialised model (the trainer seeds torch's global RNG first)."""

    @abstractmethod
    def data(self, hp: dict[str, Any], seed: int) -> Any:
        """Data fixed for the whole run (a train/test split, say), a pure function of hp and seed."""

    @abstractmethod
    def loss(self, model: nn.Module, data: Any, hp: dict[str, Any], gen: torch.Generator) -> Tensor:
        """The loss of one training step; batches are drawn from `gen` (saved with the state)."""

    def evaluate(self, model: nn.Module, data: Any, hp: dict[str, Any]) -> dict[str, float]:
        """Metrics logged every `hp["eval_every"]` steps and at checkpoints; must not use `gen`."""
        return {}

    def tokenizer(self, hp: dict[str, Any]) -> Any:
        """The tokenizer the network reads text with (given to its adapter), or None for token ids only."""
        return None

    def optimizer(self, model: nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
        """AdamW over every parameter with hp's lr, weight decay (default 0) and betas (default (0.9, 0.999))."""
        return torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp.get("weight_decay", 0.0),
                                 betas=tuple(hp.get("betas", (0.9, 0.999))))

    def lr(self, step: int, hp: dict[str, Any]) -> float:
        """Learning rate of update `step` (0-based): linear warm-up over hp["warmup"] steps, then flat."""
        warm = hp.get("warmup", 0)
        return hp["lr"] * (min(1.0, (step + 1) / warm) if warm else 1.0)


def to_device(x: Any, device: torch.device | str) -> Any:
    """`x` with every tensor in it (inside dicts, lists, tuples and dataclasses too) on `device`."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: to_device(getattr(x, f.name), device)
                                         for f in dataclasses.fields(x) if f.init})
    return x

