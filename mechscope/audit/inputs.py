"""What an audit reads: the model and reference (loaded and checked to match), the corpus of token
ids, and text for token ids (the tokenizer's, or bytes decoded with errors="replace" for byte-level
models without one).

A model may be a zoo name, a zoo run or Hugging Face directory (config.json + model.safetensors,
with or without a tokenizer), a name `mechscope.load` knows, an adapter or any `nn.Module`.
Without a corpus the audit reads windows of the held-out split of the zoo text corpus: the zoo
text model's own token stream, any other model's tokenizer over the same documents, or their
UTF-8 bytes for a byte-level model (vocabulary of at least 256 ids and no tokenizer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.errors import LoadError
from ..diff.pair import check_same_architecture, load_model


class AuditInputError(LoadError):
    """Input an audit cannot use (the message says what to give instead)."""


def load(spec: Any, role: str = "model", device: str | None = None) -> Any:
    """The model `spec` names (zoo name, Hugging Face directory or nn.Module), on `device` when one is given;
    errors say which inputs an audit reads."""
    try:
        return load_model(spec, role, device)
    except TypeError as e:
        raise AuditInputError(f"{role}: {e}; give a zoo name (zoo:textlm-quick), a Hugging Face directory "
                              "(config.json + model.safetensors) or an nn.Module") from e
    except LoadError as e:
        raise AuditInputError(f"{e} (an audit reads a zoo name such as zoo:textlm-quick, a Hugging Face directory "
                              "with config.json and model.safetensors, or an nn.Module)") from e


def check_reference(model: Any, ref: Any) -> None:
    """Refuse a reference of another architecture, naming what differs and what to give instead."""
    wm, wr = model.weights(), ref.weights()
    dm, dr = int(wm.W_E.shape[1]), int(wr.W_E.shape[1])
    vm, vr = vocab_size(model), vocab_size(ref)
    fix = ("the reference must be the unmodified base model of the same architecture; give that as --reference, "
           "or leave --reference out to audit the model alone")
    if dm != dr:
        raise AuditInputError(f"the model has d_model {dm} and the reference {dr}: {fix}")
    if vm != vr:
        raise AuditInputError(f"the model has a vocabulary of {vm} tokens and the reference {vr}: {fix}")
    try:
        check_same_architecture(model, ref)
    except LoadError as e:
        raise AuditInputError(f"{e}; {fix}") from e


def vocab_size(model: Any) -> int:
    """The size of the model's output vocabulary (its input vocabulary without an unembedding)."""
    w = model.weights()
    return int(w.W_U.shape[1]) if w.W_U is not None else int(w.W_E.shape[0])


def n_ctx(model: Any) -> int:
    """The model's context length: its position embedding's, its config's, or 128."""
    w = model.weights()
    if w.W_pos is not None:
        return int(w.W_pos.shape[0])
    cfg = getattr(model.module, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if cfg is not None and getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return 128


def byte_level(model: Any) -> bool:
    """Whether the model reads bytes: no tokenizer and a vocabulary of at least 256."""
    return getattr(model, "tokenizer", None) is None and vocab_size(model) >= 256


def whole_characters(ids: list[int] | Tensor) -> bool:
    """Whether byte values `ids` decode as whole UTF-8 characters (a lone continuation or lead byte does not)."""
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    if not all(0 <= i < 256 for i in ids):
        return False
    try:
        bytes(ids).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def writable(model: Any, ids: list[int] | Tensor) -> bool:
    """Whether token ids can stand in text on their own: for a byte-level model, bytes that decode as
    whole UTF-8 characters, for a tokenizer's model, any."""
    return not byte_level(model) or whole_characters(ids)


def decode(model: Any, ids: list[int] | Tensor) -> str:
    """Text of token ids: the tokenizer's, or bytes (errors="replace") for a byte-level model."""
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return tok.decode(ids)
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace") + \
        "".join(f"<{i}>" for i in ids if not 0 <= i < 256)


def check_corpus(ids: Any, model: Any) -> Tensor:
    """A corpus tensor checked: 2-D integer ids, at least one window of two tokens, ids in the vocabulary."""
    fix = ("give a LongTensor of token ids shaped (n_sequences, n_tokens) with at least 2 tokens per sequence, "
           "or leave the corpus out to use the held-out zoo text")
    if not isinstance(ids, Tensor):
        raise AuditInputError(f"the corpus is a {type(ids).__name__}: {fix}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise AuditInputError(f"the corpus holds {ids.dtype} values, not token ids: {fix}")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.numel() == 0 or ids.shape[1] < 2:
        raise AuditInputError(f"the corpus has shape {list(ids.shape)} and so no tokens to read: {fix}")
    v = vocab_size(model)
    if int(ids.min()) < 0 or int(ids.max()) >= v:
        raise AuditInputError(f"the corpus has token ids from {int(ids.min())} to {int(ids.max())} and the model a "
                              f"vocabulary of {v}: {fix}")
    return ids.long()[:, : n_ctx(model)]


def default_corpus(model: Any, n: int = 48, seq_len: int = 64, corpus: str = "textlm") -> Tensor:
    """`n` windows of held-out text (see the module docstring)."""
    seq_len = min(seq_len, n_ctx(model))
    if byte_level(model):
        from pathlib import Path

        if corpus not in ("textlm", "python-docs", "shakespeare"):
            path = Path(corpus).expanduser()
            if not path.is_file():
                raise AuditInputError(f"corpus {corpus!r} is neither a corpus name (textlm, python-docs, "
                                      "shakespeare) nor a text file")
            data = path.read_bytes()
        else:
            from ..zoo import datasets

            docs = [t for name, t in datasets.documents("textlm", "test")
                    if corpus == "textlm" or name.startswith(corpus + "/")]
            data = b"\n".join(t.encode("utf-8") for t in docs)
        stream = torch.tensor(list(data), dtype=torch.long)
        k = stream.numel() // seq_len
        if k < 1:
            raise AuditInputError(f"corpus {corpus!r} has {stream.numel()} bytes: fewer than one window of {seq_len}")
        starts = torch.linspace(0, k - 1, min(n, k)).round().long() * seq_len
        return stream[starts[:, None] + torch.arange(seq_len)]
    from ..diff.corpus import held_out

    try:
        return held_out(model, corpus, n=n, seq_len=seq_len).ids.long()
    except ValueError as e:
        raise AuditInputError(f"{e}: give a longer corpus or fewer windows") from e


@torch.no_grad()
def logits(model: Any, ids: Tensor, batch: int = 32, interventions: Any = ()) -> Tensor:
    """Logits (float32) of `ids` in batches of `batch` windows."""
    out = []
    for s in range(0, ids.shape[0], batch):
        out.append(model.run(ids[s:s + batch], interventions=interventions).logits.float())
    return torch.cat(out)


def log_probs(model: Any, ids: Tensor, batch: int = 32, interventions: Any = ()) -> Tensor:
    """(batch, pos, vocab) next-token log-probabilities of `ids` (batch, pos), in batches of `batch` windows."""
    return torch.log_softmax(logits(model, ids, batch, interventions), -1)
