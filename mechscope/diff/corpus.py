"""Held-out text to compare two networks on, with the source (document kind) of every token.

The text is the held-out split of the zoo corpora (`zoo/datasets.py`: every tenth document of the
Shakespeare plays and the Python docs, never seen by the zoo text model or by the public
fine-tunes), optionally only one corpus of it ("shakespeare" or "python-docs"), or a text file.
The documents are joined in name order, each followed by the end-of-text token, and `n` windows of
`seq_len` tokens are cut at evenly spaced offsets over the whole stream, so both kinds of text are
in it (the stream starts with every Python document, then the plays). The zoo text model reads the
cached token stream of its own tokenizer; any other model's tokenizer encodes the documents here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import LoadError

KINDS = ("python-docs", "shakespeare")


@dataclass(frozen=True)
class Corpus:
    """Token windows to diff on: ids and each token's source document index (n, seq_len), and the sources'
    names."""

    name: str
    ids: Tensor  # (n, seq_len) token ids
    source: Tensor  # (n, seq_len) index into `sources` of the document each token is from
    sources: tuple[str, ...]

    @property
    def n_tokens(self) -> int:
        """The number of tokens in all windows."""
        return self.ids.numel()


def _zoo_textlm(model: Any) -> dict | None:
    run = getattr(model, "zoo_run", None)
    if run is None:
        return None
    cfg = run.config()
    return cfg["hparams"] if cfg.get("recipe") == "textlm" else None


def _stream(model: Any, corpus: str) -> tuple[Tensor, Tensor, tuple[str, ...], str]:
    """(tokens, source per token, source names, corpus label) of the held-out text."""
    path = Path(corpus).expanduser()
    if corpus not in ("textlm", *KINDS):
        if not path.is_file():
            raise LoadError(f"--corpus {corpus!r} is neither a corpus name (textlm, python-docs, shakespeare) nor "
                            "a text file")
        tok = _tokenizer(model)
        ids = tok.encode(path.read_text(errors="replace"), add_special_tokens=False)
        return torch.tensor(ids, dtype=torch.long), torch.zeros(len(ids), dtype=torch.long), (path.name,), path.name
    from ..zoo import datasets

    docs = datasets.documents("textlm", "test")
    kinds = [n.split("/", 1)[0] for n, _ in docs]
    keep = [corpus == "textlm" or k == corpus for k in kinds]
    hp = _zoo_textlm(model)
    if hp is not None:  # the zoo text model: its cached held-out stream, split at end-of-text tokens
        stream = datasets.token_stream(hp["corpus"], "test", hp["vocab_size"]).long()
        eot = datasets.tokenizer(hp["corpus"], hp["vocab_size"]).convert_tokens_to_ids(datasets.EOT)
        ends = (stream == eot).nonzero().flatten().tolist()
        if len(ends) != len(docs):
            raise LoadError(f"the cached held-out stream has {len(ends)} documents and the corpus {len(docs)}; "
                            "delete the token cache under $MECHSCOPE_CACHE/data/textlm to rebuild it")
        pieces, srcs, start = [], [], 0
        for end, k, ok in zip(ends, kinds, keep):
            if ok:
                pieces.append(stream[start:end + 1])
                srcs.append(torch.full((end + 1 - start,), KINDS.index(k)))
            start = end + 1
    else:
        tok = _tokenizer(model)
        eos = tok.eos_token_id
        pieces, srcs = [], []
        for (_, text), k, ok in zip(docs, kinds, keep):
            if ok:
                ids = tok.encode(text, add_special_tokens=False) + ([eos] if eos is not None else [])
                pieces.append(torch.tensor(ids, dtype=torch.long))
                srcs.append(torch.full((len(ids),), KINDS.index(k)))
    return torch.cat(pieces), torch.cat(srcs), KINDS, f"{corpus} (held-out split)"


def _tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise LoadError(f"{model.name} has no tokenizer to read text with; give token ids instead")
    return tok


def held_out(model: Any, corpus: str = "textlm", n: int = 64, seq_len: int = 64) -> Corpus:
    """`n` windows of `seq_len` tokens evenly spaced over the held-out text (see the module docstring)."""
    stream, source, names, label = _stream(model, corpus)
    k = stream.numel() // seq_len
    if k < n:
        raise ValueError(f"{label} has {stream.numel():,} tokens: {k} windows of {seq_len}, {n} asked for")
    starts = torch.linspace(0, k - 1, n).round().long() * seq_len
    idx = starts[:, None] + torch.arange(seq_len)
    return Corpus(label, stream[idx], source[idx], names)


def from_ids(ids: Tensor, name: str = "token ids") -> Corpus:
    """A corpus of given token ids (n, seq_len), one source."""
    ids = ids.long()
    return Corpus(name, ids, torch.zeros_like(ids), (name,))
