"""bytegpt2: a small GPT-2 (Hugging Face `GPT2LMHeadModel`) that reads bytes, trained here on real text.

Its vocabulary is the 256 byte values, so it needs no tokenizer file: the token ids of a text are
its UTF-8 bytes. Documents are joined by byte 0 (NUL, which no document contains). The corpus is
the zoo's textlm corpus (`mechscope.zoo.datasets`: Shakespeare's plays and poems and the Python 3.11
documentation sources) with the same split: every tenth document is held out for evaluation.

The network is built from a `transformers.GPT2Config` (2 blocks, d_model 96, 4 heads of 24,
d_mlp 384, GELU, pre-LN, untied unembedding, no dropout) and trained with AdamW, linear warm-up and
cosine decay on random windows of 64 bytes, about 0.9M bytes in all: under three minutes on one
thread. The quick variant (100 steps) serves the tests.
`mechscope.load("zoo:bytegpt2")` gives it in the GPT-2 adapter; `export_hf` writes it as a Hugging
Face directory (config.json + model.safetensors) that `mechscope.load(path)` reads.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import datasets
from .textlm import Streams, TextLM, next_token_loss

SEPARATOR = 0  # the byte that joins documents
VOCAB = 256


@lru_cache(maxsize=2)
def byte_stream(split: str = "train", corpus: str = "textlm") -> Tensor:
    """The UTF-8 bytes of every document of `split`, each followed by byte 0: (n_bytes,) uint8."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = b"".join(text.encode("utf-8") + bytes([SEPARATOR]) for _, text in datasets.documents(corpus, split))
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def byte_windows(n: int, seq_len: int, split: str = "test", offset: int = 0, corpus: str = "textlm") -> Tensor:
    """`n` consecutive, non-overlapping windows of `seq_len` bytes of `split` from window `offset`:
    (n, seq_len) int64 token ids. Deterministic; held-out text by default."""
    return datasets.stream_windows(byte_stream(split, corpus), n, seq_len, offset, f"the {split} bytes of {corpus!r}")


class ByteGPT2(TextLM):
    """The text recipe as a 2-layer Hugging Face GPT-2 over bytes (256 ids, no tokenizer)."""

    name = "bytegpt2"
    summary = "2-layer Hugging Face GPT-2 over bytes (256 ids, no tokenizer) on Shakespeare and the Python docs"
    _COMMON = dict(corpus="textlm", vocab_size=VOCAB, n_layers=2, d_model=96, n_heads=4, d_mlp=384,
                   n_ctx=64, batch=16, weight_decay=0.1, betas=[0.9, 0.95], min_lr_fraction=0.1,
                   eval_windows=64, checkpoints_log=12, checkpoints_linear=8, eval_every=100, log_every=10)
    variants = {
        "": {**_COMMON, "lr": 3e-3, "steps": 900, "warmup": 50},
        "quick": {**_COMMON, "lr": 3e-3, "steps": 100, "warmup": 10},
    }

    def build(self, hp: dict[str, Any]) -> nn.Module:
        """A freshly initialised GPT2LMHeadModel of hp's shape (no dropout, untied embeddings)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=hp["vocab_size"], n_positions=hp["n_ctx"], n_embd=hp["d_model"],
                            n_layer=hp["n_layers"], n_head=hp["n_heads"], n_inner=hp["d_mlp"],
                            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=SEPARATOR, eos_token_id=SEPARATOR, tie_word_embeddings=False)
        return GPT2LMHeadModel(config)

    def tokenizer(self, hp: dict[str, Any]) -> Any:
        """None: the network reads byte ids."""
        return None

    def data(self, hp: dict[str, Any], seed: int) -> Streams:
        """The training byte stream and the held-out windows (eval_windows, n_ctx) of the test split."""
        return Streams(byte_stream("train", hp["corpus"]), byte_windows(hp["eval_windows"], hp["n_ctx"], "test",
                                                                          corpus=hp["corpus"]))

    def loss(self, model, data: Streams, hp, gen) -> Tensor:
        """Next-byte loss on `batch` random windows (batch, n_ctx) of the training stream, drawn from `gen`."""
        T = hp["n_ctx"]
        starts = torch.randint(0, data.train.numel() - T, (hp["batch"],), generator=gen)
        ids = data.train[starts[:, None] + torch.arange(T)].long()  # (batch, n_ctx)
        return next_token_loss(model(ids).logits, ids)

    @torch.no_grad()
    def evaluate(self, model, data: Streams, hp) -> dict[str, float]:
        """Next-byte loss and accuracy on the held-out windows."""
        ids = data.heldout.long()
        logits = model(ids).logits
        return {"test_loss": float(next_token_loss(logits, ids)),
                "test_acc": float((logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean())}


def export_hf(module: nn.Module, path: Path) -> Path:
    """Write a bytegpt2 network as a Hugging Face directory (config.json + model.safetensors)."""
    from transformers.utils import logging as hf_logging

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its one-shard bar is noise in a log
    try:
        module.save_pretrained(path, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return path


RECIPE = ByteGPT2()
