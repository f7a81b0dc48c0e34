"""The public fine-tune set: short fine-tunes of the zoo text model with a known answer.

Each fine-tune starts from a trained zoo text model A (`textlm-quick` by default) and continues
training with the zoo trainer (`zoo/train.py`: seeded, checkpointed, resumable) on other data,
into `$MECHSCOPE_CACHE/diff/<base>-<name>-<steps>`:

- `python-docs` (domain shift): only the Python documentation of the training split;
- `rule` (a planted rule): the training stream with every token after the trigger " thou" replaced
  by " sword", so after " thou" B always continues with " sword";
- `control` and `control-heldout`: A trained further on its own data mix (the whole training
  stream), with two batch seeds. The first calibrates the threshold of "above threshold"; the
  second is the pair `diff-bench` checks reports nothing above it (a threshold checked on the pair
  it was set on could not fail).

All four use the same steps, learning rate schedule and batch size (the base's batch; a peak
learning rate of a third of the base's, after 10 warm-up steps), so the control moves the
weights about as far as the others: what separates them is where they move. The run directories
are zoo runs whose recipe is `textlm` (the hyperparameters say what was fine-tuned from what), so
`mechscope diff zoo:textlm-quick DIR` and `zoo.load_zoo(name, path=DIR)` load them like any zoo
network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import LoadError
from ..core.paths import cache_dir
from ..zoo import datasets
from ..zoo.recipes.textlm import Streams, TextLM

TRIGGER, CONTINUATION = " thou", " sword"


@dataclass(frozen=True)
class FineTune:
    """A public fine-tune: its name, the data it trains on, its batch seed and what it changes."""

    name: str
    data: str  # "textlm", "python-docs" or "rule"
    seed: int
    summary: str


PUBLIC = (
    FineTune("python-docs", "python-docs", 0, "only the Python docs of the training split (domain shift)"),
    FineTune("rule", "rule", 0, f"after {TRIGGER!r} always {CONTINUATION!r} (a planted rule)"),
    FineTune("control", "textlm", 0, "A trained further on its own data mix (calibrates the threshold)"),
    FineTune("control-heldout", "textlm", 1, "A trained further on its own data mix, another batch seed"),
)
BY_NAME = {f.name: f for f in PUBLIC}


def rule_tokens(tokenizer: Any) -> tuple[int, int]:
    """The trigger's and the continuation's token ids (each must be one token)."""
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in (TRIGGER, CONTINUATION)]
    if any(len(i) != 1 for i in ids):
        raise LoadError(f"{TRIGGER!r} and {CONTINUATION!r} must be single tokens of this tokenizer, got {ids}")
    return ids[0][0], ids[1][0]


class FineTuneRecipe(TextLM):
    """The zoo text recipe, started from A's weights and trained on `hp["data"]`."""

    def build(self, hp: dict[str, Any]):
        """The text model, loaded with A's weights when `hp["init"]` names A; A's file must still have the digest
        the fine-tune started from (LoadError otherwise)."""
        model = super().build(hp)
        if hp.get("init") is not None:  # the trainer builds once; loading the result (zoo.build_module) uses TextLM
            from .. import zoo
            from ..zoo.files import load_tensors

            # A's weights are found by name where the cache is now (not by a path written into the
            # run's identity, so a fine-tune stays the same run when the cache moves) and checked by digest
            run = zoo.finished_run(hp["init"].removeprefix("zoo:"))
            if run is None:
                raise LoadError(f"{hp['init']} is not trained; run `mechscope zoo train {hp['init'][4:]}` first")
            init = run.model_path
            tensors, meta = load_tensors(init)
            if meta.get("sha256") != hp["init_sha256"]:
                raise LoadError(f"{init} changed since this fine-tune started (sha256 {meta.get('sha256', '')[:12]}… "
                                f"instead of {hp['init_sha256'][:12]}…); delete the fine-tune's directory")
            model.load_state_dict(tensors)
        return model

    def data(self, hp: dict[str, Any], seed: int) -> Streams:
        """The zoo text streams with the training stream replaced by `hp["data"]`'s: Python docs, the planted rule
        or A's own data; the held-out stream stays."""
        base = super().data(hp, seed)
        train = base.train.clone()
        if hp["data"] == "python-docs":
            train = python_docs_stream(hp["corpus"], hp["vocab_size"])
        elif hp["data"] == "rule":
            trig, cont = rule_tokens(self.tokenizer(hp))
            plant_rule(train, trig, cont)
        elif hp["data"] != "textlm":
            raise ValueError(f"unknown fine-tune data {hp['data']!r}")
        return Streams(train, base.heldout)


def plant_rule(stream: torch.Tensor, trigger: int, continuation: int) -> torch.Tensor:
    """Replace, left to right and in place, the token after every trigger by the continuation (a
    trigger that is itself replaced no longer triggers)."""
    last = -2
    for i in torch.nonzero(stream[:-1] == trigger).flatten().tolist():
        if i != last + 1:  # this trigger was not just overwritten by the continuation
            stream[i + 1] = continuation
            last = i
    return stream


def python_docs_stream(corpus: str = "textlm", vocab_size: int = 4096) -> torch.Tensor:
    """The Python documents of the training stream (they come first: documents are in name order)."""
    stream = datasets.token_stream(corpus, "train", vocab_size)
    names = [n for n, _ in datasets.documents(corpus, "train")]
    n_py = sum(n.startswith("python-docs/") for n in names)
    if n_py == 0 or not all(n.startswith("python-docs/") for n in names[:n_py]):
        raise LoadError("the training documents are not in name order with the Python docs first")
    eot = datasets.tokenizer(corpus, vocab_size).convert_tokens_to_ids(datasets.EOT)
    ends = (stream == eot).nonzero().flatten()
    return stream[: int(ends[n_py - 1]) + 1].clone()


RECIPE = FineTuneRecipe()


def finetune_dir(base: str, name: str, steps: int) -> Path:
    """The cache directory of fine-tune `name` of `base` after `steps` steps."""
    return cache_dir() / "diff" / f"{base}-{name}-{steps}"


def train_finetune(name: str, base: str = "textlm-quick", steps: int = 200, lr: float | None = None,
                   progress: bool = True) -> Path:
    """Train (or resume, or find cached) the public fine-tune `name` of zoo network `base`; its run dir.
    `lr` defaults to a third of the base's peak learning rate (1e-3 for `textlm-quick`)."""
    from .. import zoo
    from ..zoo.files import load_tensors
    from ..zoo.train import RunSpec, run_training

    if name not in BY_NAME:
        raise ValueError(f"no public fine-tune {name!r}; they are {', '.join(BY_NAME)}")
    ft = BY_NAME[name]
    run = zoo.finished_run(base)
    if run is None:
        raise LoadError(f"zoo model {base!r} is not trained; run `mechscope zoo train {base}` first")
    cfg = run.config()
    if cfg["recipe"] != "textlm":
        raise LoadError(f"the public fine-tunes start from a zoo text model; {base} is a {cfg['recipe']!r} network")
    _, meta = load_tensors(run.model_path)
    lr = cfg["hparams"]["lr"] / 3 if lr is None else lr
    hp = {**cfg["hparams"], "steps": steps, "lr": lr, "warmup": 10, "eval_every": 50, "log_every": 10,
          "checkpoints_log": 4, "checkpoints_linear": 2, "data": ft.data, "init": f"zoo:{base}",
          "init_sha256": meta["sha256"]}
    if ft.data == "rule":
        hp |= {"trigger": TRIGGER, "continuation": CONTINUATION}
    path = finetune_dir(base, name, steps)
    run_training(RunSpec(RECIPE, cfg["variant"], ft.seed, hp), path, progress=progress)
    return path


__all__ = ["BY_NAME", "CONTINUATION", "FineTune", "PUBLIC", "TRIGGER", "finetune_dir", "plant_rule", "python_docs_stream",
           "rule_tokens", "train_finetune"]
