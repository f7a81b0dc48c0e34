"""textlm: a small language model trained here on real text, the realistic target for dictionaries.

The corpus (`mechscope.zoo.datasets`, corpus "textlm") is Shakespeare's plays and poems in modern
spelling plus the reStructuredText sources of the Python 3.11 documentation: verse and prose next
to code, markup and quotes, so the model has to learn distinct kinds of features. The tokenizer is
a byte-level BPE with 4096 tokens trained here on the training documents; every tenth document is
held out and only used for evaluation.

Training draws windows of `n_ctx` tokens at random offsets of the training stream (documents are
joined with `<|endoftext|>`), with AdamW, linear warm-up and cosine decay to a tenth of the peak
learning rate. The full recipe (4 layers, d_model 192, 6 heads of 32, d_mlp 768, GELU, pre-LN)
sees about 8M tokens; the quick variant (2 layers, d_model 64) serves the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...models.tiny import TinyConfig, TinyTransformer
from .. import datasets
from ..recipe import Recipe

_COMMON = dict(corpus="textlm", vocab_size=4096, act="gelu", weight_decay=0.1, betas=[0.9, 0.95], warmup=100,
               min_lr_fraction=0.1, eval_windows=64, checkpoints_log=12, checkpoints_linear=8)


@dataclass(frozen=True)
class Streams:
    """The training stream (n_tokens,) and fixed held-out windows (eval_windows, n_ctx)."""

    train: Tensor
    heldout: Tensor


class TextLM(Recipe):
    """A small language model on Shakespeare and the Python docs, with its own BPE tokenizer."""

    name = "textlm"
    summary = "4-layer language model on Shakespeare and the Python docs, with its own BPE tokenizer"
    variants = {
        "": {**_COMMON, "n_layers": 4, "d_model": 192, "n_heads": 6, "d_head": 32, "d_mlp": 768, "n_ctx": 128,
             "batch": 32, "lr": 1e-3, "steps": 2000, "eval_every": 100, "log_every": 10},
        "quick": {**_COMMON, "n_layers": 2, "d_model": 64, "n_heads": 4, "d_head": 16, "d_mlp": 256, "n_ctx": 64,
                  "batch": 16, "lr": 3e-3, "steps": 200, "warmup": 20, "eval_every": 50, "log_every": 10},
    }

    def build(self, hp: dict[str, Any]) -> TinyTransformer:
        """A freshly initialised TinyTransformer of hp's shape, with layer norms."""
        return TinyTransformer(TinyConfig(n_layers=hp["n_layers"], d_model=hp["d_model"], n_heads=hp["n_heads"],
                                          d_head=hp["d_head"], d_mlp=hp["d_mlp"], n_ctx=hp["n_ctx"],
                                          d_vocab=hp["vocab_size"], act=hp["act"], layer_norm=True))

    def tokenizer(self, hp: dict[str, Any]) -> Any:
        """The corpus' BPE tokenizer of hp's vocabulary size."""
        return datasets.tokenizer(hp["corpus"], hp["vocab_size"])

    def data(self, hp: dict[str, Any], seed: int) -> Streams:
        """The training token stream and the held-out windows (eval_windows, n_ctx) of the test split."""
        train = datasets.token_stream(hp["corpus"], "train", hp["vocab_size"])
        heldout = datasets.textlm_tokens(hp["eval_windows"], hp["n_ctx"], "test", hp["corpus"], hp["vocab_size"])
        return Streams(train, heldout)

    def loss(self, model, data: Streams, hp, gen) -> Tensor:
        """Next-token loss on `batch` random windows (batch, n_ctx) of the training stream, drawn from `gen`."""
        T = hp["n_ctx"]
        starts = torch.randint(0, data.train.numel() - T, (hp["batch"],), generator=gen)
        ids = data.train[starts[:, None] + torch.arange(T)].long()  # (batch, n_ctx)
        return next_token_loss(model(ids), ids)

    @torch.no_grad()
    def evaluate(self, model, data: Streams, hp) -> dict[str, float]:
        """Next-token loss and accuracy on the held-out windows."""
        ids = data.heldout.long()
        logits = model(ids)
        return {"test_loss": float(next_token_loss(logits, ids)),
                "test_acc": float((logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean())}

    def lr(self, step: int, hp: dict[str, Any]) -> float:
        """Linear warm-up, then cosine decay from hp["lr"] to hp["min_lr_fraction"] of it."""
        warm, total = hp["warmup"], hp["steps"]
        if step < warm:
            return hp["lr"] * (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        floor = hp["min_lr_fraction"]
        return hp["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def next_token_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Mean cross-entropy of position t predicting token t + 1."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


RECIPE = TextLM()
