"""Training checkpoints: one safetensors file holding everything a resumed `train` needs.

The file holds the dictionary's tensors (`dict.NAME`), Adam's per-parameter state (`opt.I.KEY`, I
the parameter's index over the optimiser's groups), the rows since each latent last fired, the
resampling generator's state, and in its metadata (JSON) the step, rows seen, the input and target
scales, the L0 controller's state, the training curve so far and an identity hash of the
dictionary config, the train config and the world size. It is written atomically (a kill leaves
the previous checkpoint or the new one), and read back with its digest checked; a checkpoint of
another training is refused with a clear error. Nothing here unpickles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import Dictionary
from .files import DictionaryFileError, config_hash, read_tensors, write_tensors


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often `train` saves its state; `train` resumes from `path` when it exists."""

    path: Path
    every: int = 100  # steps between checkpoints (and one at the end)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.every < 1:
            raise ValueError(f"Checkpointing.every must be positive, got {self.every}")


def identity(dictionary: Dictionary, train_config: Any, world: int) -> str:
    """The hash that ties a checkpoint to its training: dictionary config, architecture, train config and world
    size."""
    return config_hash({"dictionary": dictionary.config.to_dict(), "architecture": dictionary.architecture,
                        "train": asdict(train_config), "world": world})


def save(path: Path, ident: str, dictionary: Dictionary, moments: dict[int, dict[str, Any]],
         tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Write the checkpoint atomically; `moments` is the "state" of the optimizer's `state_dict()`
    (the whole optimizer's, also when data-parallel ranks each keep a shard of it)."""
    data = {f"dict.{k}": v for k, v in dictionary.state_dict().items()}
    for i, st in moments.items():
        for k, v in st.items():
            data[f"opt.{i}.{k}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    data |= {k: v for k, v in tensors.items()}
    write_tensors(Path(path), {k: v.detach().to("cpu").contiguous().clone() for k, v in data.items()},
                  {"identity": ident, "state": json.dumps(state)})


def load(path: Path, ident: str, dictionary: Dictionary, opt: torch.optim.Optimizer
         ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Restore the dictionary and the optimiser from `path`; returns the other tensors and the state."""
    tensors, meta = read_tensors(Path(path))
    if meta.get("identity") != ident:
        raise DictionaryFileError(f"{path} is a checkpoint of another training (other dictionary, train config or "
                                  "number of processes); use another --checkpoint path or delete it")
    dictionary.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("dict.")})
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, key = k.split(".", 2)
            state.setdefault(int(i), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    for group in opt.param_groups:  # moments in their parameter's memory layout (a parameter may be
        for param in group["params"]:  # stored transposed, and fused Adam walks the raw memory)
            st = opt.state.get(param, {})
            for key, v in st.items():
                if isinstance(v, Tensor) and v.shape == param.shape:
                    st[key] = torch.empty_like(param).copy_(v)
    rest = {k: v for k, v in tensors.items() if not k.startswith(("dict.", "opt."))}
    return rest, json.loads(meta["state"])
