"""Fixed evaluation data for the loss measures: token ids and the token each position must predict.

`HeldOut(ids, targets)`: ids (batch, pos); targets (batch, pos) holds the id position t must predict,
or -1 where nothing is predicted. A language model's next-token data is `HeldOut.next_token(ids)`;
a task that answers at the last position (modular addition) puts its labels in the last column.

From a zoo run (`from_zoo_run`), with no behaviour of the task named:
- a recipe whose fixed data has `ids` (a batch of sequences the training never draws: the zoo's
  induction runs) gives next-token data over every position;
- a recipe with a train/test split of `train_x`, `test_x` (modular addition) gives the test split as
  held-out data and the training split beside it, both answered at the last position.
Other recipes give no token data (the weight measures still run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import LoadError


@dataclass(frozen=True)
class HeldOut:
    """Held-out token ids (batch, pos) and, per position, the id it should predict (-1 where none).

    Example::

        from mechscope.dynamics import HeldOut
        data = HeldOut.next_token(ids)           # ids (batch, pos): each position predicts the next
        data.mask                                # (batch, pos): where a target exists
    """

    ids: Tensor  # (batch, pos) token ids
    targets: Tensor  # (batch, pos) the id each position predicts, -1 where none

    def __post_init__(self) -> None:
        if self.ids.shape != self.targets.shape or self.ids.dim() != 2:
            raise ValueError(f"ids and targets must both be (batch, pos); got {tuple(self.ids.shape)} and "
                             f"{tuple(self.targets.shape)}")
        if not bool((self.targets >= 0).any()):
            raise ValueError("targets predict nothing (every entry is -1)")

    @staticmethod
    def next_token(ids: Tensor) -> "HeldOut":
        """Every position predicts the next token; the last position predicts nothing."""
        targets = torch.full_like(ids, -1)
        targets[:, :-1] = ids[:, 1:]
        return HeldOut(ids, targets)

    @staticmethod
    def answer_at_last(ids: Tensor, labels: Tensor) -> "HeldOut":
        """Held-out data whose only target is `labels` (batch,) at the last position of `ids` (batch, pos)."""
        targets = torch.full_like(ids, -1)
        targets[:, -1] = labels
        return HeldOut(ids, targets)

    @property
    def mask(self) -> Tensor:
        """(batch, pos) bool: the positions with a target."""
        return self.targets >= 0

    def __len__(self) -> int:
        return int(self.mask.sum())


def from_zoo_run(run: Any) -> dict[str, HeldOut]:
    """Named evaluation sets of a zoo run: "heldout" and, when the recipe has a training split, "train".

    Example::

        from mechscope.dynamics import from_zoo_run
        from mechscope.zoo import network
        data = from_zoo_run(network("modadd-frac05"))   # {"heldout": ..., "train": ...}
    """
    from .. import zoo

    cfg = run.config()
    data = zoo.RECIPES[cfg["recipe"]].data(cfg["hparams"], cfg["seed"])
    ids = getattr(data, "ids", None)
    if isinstance(ids, Tensor) and ids.dtype == torch.long and ids.dim() == 2:
        return {"heldout": HeldOut.next_token(ids)}
    if all(isinstance(getattr(data, k, None), Tensor) for k in ("train_x", "train_y", "test_x", "test_y")):
        return {"heldout": HeldOut.answer_at_last(data.test_x, data.test_y),
                "train": HeldOut.answer_at_last(data.train_x, data.train_y)}
    return {}


def from_file(path: str | Path) -> dict[str, HeldOut]:
    """A safetensors file with `ids` (batch, pos), next-token data; `targets` beside it overrides that.

    Example::

        from mechscope.dynamics import from_file
        data = from_file("heldout.safetensors")  # {"heldout": HeldOut}, ids (batch, pos)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LoadError(f"token file {path} does not exist")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LoadError(f"token file {path} is not readable safetensors ({e})") from e
    if "ids" not in t:
        raise LoadError(f"token file {path} has no `ids` tensor (batch, pos); it has {sorted(t)}")
    ids = t["ids"].long()
    return {"heldout": HeldOut(ids, t["targets"].long()) if "targets" in t else HeldOut.next_token(ids)}
