"""fmnist-cnn: a small convolutional network on Fashion-MNIST, for vision features and weights.

Data: Debian's `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`, the original idx
files, installed by `make data`); 60 000 training and 10 000 test images of 28 x 28 in 10
classes. Network (every layer a named submodule, so every one is a site through the generic
adapter):

    conv1 3x3x32 -> relu1 -> pool1 (14x14) -> conv2 3x3x64 -> relu2 -> pool2 (7x7)
    -> flatten -> fc1 128 -> relu3 -> fc2 10 (logits)

Inputs are images (batch, 1, 28, 28) scaled to [0, 1]. Adam, batch 128, no augmentation.
Variants: "" (6 epochs; >= 88% test accuracy is the target), "quick" (a narrower network for
150 steps, for tests).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.errors import LoadError
from ..recipe import Recipe

FASHION_DIR = Path(os.environ.get("MECHSCOPE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")


def _idx(path: Path, magic: int) -> np.ndarray:
    if not path.is_file():
        raise LoadError(f"{path} is missing: install Debian's dataset-fashion-mnist (`make data` does it)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise LoadError(f"{path} is not an idx file of the expected kind (magic {got}, expected {magic})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise LoadError(f"{path} is truncated: {data.size} values for shape {dims}")
    return data.reshape(dims)


def fashion_mnist(split: str) -> tuple[Tensor, Tensor]:
    """Images uint8 (n, 28, 28) and labels int64 (n,) of the "train" or "test" split."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = _idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", 2051)
    labels = _idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz", 2049)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionCNN(nn.Module):
    """Images (batch, 1, 28, 28) in [0, 1] -> logits (batch, 10)."""

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (batch, 10) of images (batch, 1, 28, 28)."""
        x = self.pool1(self.relu1(self.conv1(x)))  # (batch, c1, 14, 14)
        x = self.pool2(self.relu2(self.conv2(x)))  # (batch, c2, 7, 7)
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))  # (batch, 10)


@dataclass(frozen=True)
class Split:
    """Fashion-MNIST images (n, 28, 28) uint8 and labels (n,), train and test."""

    train_x: Tensor  # (n, 28, 28) uint8
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def as_input(images: Tensor) -> Tensor:
    """uint8 (n, 28, 28) -> float (n, 1, 28, 28) in [0, 1]."""
    return images.float().div(255.0).unsqueeze(1)


class FashionRecipe(Recipe):
    """A small CNN trained on Fashion-MNIST (the Debian package's files)."""

    name = "fmnist-cnn"
    summary = "small CNN on Fashion-MNIST (Debian dataset-fashion-mnist), >= 88% test accuracy"
    _common = dict(batch=128, lr=1e-3, log_every=50, c1=32, c2=64, hidden=128)
    variants = {
        # 6 epochs of 60 000 images; each checkpoint evaluates all 10 000 test images (about as much
        # work as 25 training steps), so the schedule keeps about 25 checkpoints instead of 90
        "": {**_common, "steps": 2800, "eval_every": 400, "checkpoints_log": 16, "checkpoints_linear": 10},
        # a narrower network for a fraction of an epoch: serves the tests (about 80% accuracy)
        "quick": {**_common, "c1": 8, "c2": 16, "hidden": 32, "batch": 64, "steps": 150, "eval_every": 75,
                  "eval_n": 2000},
    }

    def build(self, hp: dict[str, Any]) -> FashionCNN:
        """A freshly initialised FashionCNN with hp's channel and hidden widths."""
        return FashionCNN(hp["c1"], hp["c2"], hp["hidden"])

    def data(self, hp: dict[str, Any], seed: int) -> Split:
        """The Fashion-MNIST train and test splits."""
        tx, ty = fashion_mnist("train")
        vx, vy = fashion_mnist("test")
        return Split(tx, ty, vx, vy)

    def loss(self, model, data: Split, hp, gen) -> Tensor:
        """Cross-entropy on `batch` training images drawn from `gen`."""
        idx = torch.randint(0, len(data.train_y), (hp["batch"],), generator=gen)
        return F.cross_entropy(model(as_input(data.train_x[idx])), data.train_y[idx])

    @torch.no_grad()
    def evaluate(self, model, data: Split, hp) -> dict[str, float]:
        """Test loss and accuracy on the first `eval_n` test images (all of them by default)."""
        n = hp.get("eval_n", len(data.test_y))
        correct, loss = 0, 0.0
        for s in range(0, n, 1000):
            x, y = as_input(data.test_x[s:min(n, s + 1000)]), data.test_y[s:min(n, s + 1000)]
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        return {"test_loss": loss / n, "test_acc": correct / n}


RECIPE = FashionRecipe()
