#!/usr/bin/env python
"""core_overhead: what does looking inside a forward pass cost, in time and in memory?

A GPT-2-small-shaped model with random weights (no download) runs one batch of 8 x 128 random
token ids, fp32, eager attention, 2 CPU threads, under torch.inference_mode(). Each variant is a
way of running that forward; each framework wraps its own copy of the model:

    bare_hf          model(input_ids)
    mechscope_none   mechscope.run(adapter, input_ids): no captures, no interventions
    mechscope_resid  capture resid_pre and resid_post of every layer
    mechscope_full   capture the full set (below)
    tl_none          TransformerLens 4.x TransformerBridge forward, no hooks
    tl_resid         bridge.run_with_cache(names_filter=<the same residual names>)
    tl_full          bridge.run_with_cache(names_filter=<the full set>)
    nnsight_none     nnsight trace that saves nothing but the output
    nnsight_resid    nnsight trace saving the same residual tensors
    nnsight_full     nnsight trace saving the full set (module inputs and outputs, and the
                     attention internals through nnsight's `.source`)

The full set: every name of TransformerLens's unfiltered cache that names an activation of its
own (the others are other names for the same tensors, e.g. `blocks.3.hook_out` for
`blocks.3.hook_resid_post`), less the layer norms' scale factors (`*.hook_scale`, which nnsight
cannot read: Hugging Face's layer norm is one fused call). The three full captures hold the same
tensors: equal work. Whether mechscope's capture covers every name of the unfiltered cache (an
equal tensor, the same tensor under another name, the logits, the input ids, or the position
ids 0..n-1 that the model derives from the input's length) is its own check.

Agreement (part of pass): logits of every variant against the bare forward, and every tensor
of the full set captured by mechscope and by nnsight against TransformerLens's.

Time: warmup rounds, then measured rounds; each round runs every variant once, in an order that
rotates from round to round. A ratio to the bare forward is judged per round (the variant's
time over the bare forward's time in the same round; the median over rounds): machine load
then hits both sides of a ratio alike. Unpaired medians are reported too.

Memory: a child process (`--memory`) imports every framework and wraps every copy first, so
imports and wrappers are in place for all variants alike. Then per variant: one run to warm
up (freed), what the framework keeps from that call released (below), the peak-RSS counter
reset (/proc/self/clear_refs), the variant run again while its result is held; extra = peak
RSS - RSS before that run, and "over bare" = extra minus the bare forward's extra (its logits
and transients): what looking inside adds to the peak. glibc's mmap threshold is pinned in the
child, so freed tensors go back to the OS and RSS tracks live memory. "Requested" bytes are
sum(numel * element_size) over the distinct tensors the variant's result holds (its logits not
included); "storage" bytes are the sizes of the distinct storages under them (a broadcast view,
such as TransformerLens's position embedding expanded to the batch, requests more than it
stores; views of one buffer, such as q, k and v out of GPT-2's fused projection, store once).

What a framework keeps between calls: TransformerLens's attention bridges keep the last call's
attention pattern (`_pattern`, batch x head x pos x pos per layer: 72 MiB at this shape) after
the call returns. Measured from an RSS that held the previous call's patterns, the run frees
them as it replaces them, and its extra came out 72 MiB short of what it holds at its peak:
before this was accounted for, full_capture_memory_vs_tl compared mechscope's whole cost with
TransformerLens's cost less its patterns (1.09: 799.3 against 730.1 MB over bare, for the same
801.4 MB of storage). Now the child resets those attributes to their value before any call
(None) before the measured run and reports the RSS that released ("retained" figures), so
every variant's extra counts every byte its call allocates, and a TransformerLens call's extra
includes the patterns it leaves behind. mechscope and nnsight keep nothing between calls.

The last line printed is the result line (benchmarks/README.md).
Usage:  python benchmarks/core_overhead.py [--quick] [--rounds N] [--warmup N] [--skip-memory]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
from _machine import cpu_snapshot, machine, other_cpu_share, progress  # noqa: E402  (benchmarks/_machine.py)
import transformers  # noqa: E402

THREADS = 2
BATCH, SEQ = 8, 128
N_LAYER, D_MODEL, N_HEAD, VOCAB, N_POS = 12, 768, 12, 50257, 1024
TOLERANCE = 1e-4  # max |difference| between frameworks' values (activations are O(1) here)

VARIANTS = ["bare_hf", "mechscope_none", "mechscope_resid", "mechscope_full",
            "tl_none", "tl_resid", "tl_full",
            "nnsight_none", "nnsight_resid", "nnsight_full"]
FRAMEWORK = {v: v.split("_")[0] for v in VARIANTS}
FRAMEWORK["bare_hf"] = "bare"
CAPTURE_VARIANTS = [v for v in VARIANTS if v.endswith(("_resid", "_full"))]


def resid_names(n_layer: int) -> list[str]:
    return ([f"blocks.{layer}.hook_resid_pre" for layer in range(n_layer)]
            + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layer)])


# The full set when TransformerLens cannot be imported (HookedTransformer's GPT-2 names without
# the layer norms' scale factors), so that mechscope and nnsight still have a list to capture.
_FALLBACK_BLOCK = ["hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                   "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                   "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]


def fallback_full_set(n_layer: int) -> list[str]:
    return (["hook_embed", "hook_pos_embed"]
            + [f"blocks.{layer}.{n}" for layer in range(n_layer) for n in _FALLBACK_BLOCK]
            + ["ln_final.hook_normalized"])


MB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# model and inputs
# --------------------------------------------------------------------------------------------
def build_model(n_layer: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=D_MODEL, n_head=N_HEAD,
                                  vocab_size=VOCAB, n_positions=N_POS)
    cfg.use_cache = False  # one forward of a whole prompt: no KV cache for anyone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager",
                                                          dtype=torch.float32)
    model.eval()
    assert model.config._attn_implementation == "eager"
    return model


def make_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def import_mechscope():
    try:
        import mechscope
    except ImportError:
        sys.path.insert(0, str(REPO))
        import mechscope
    return mechscope


def distinct_bytes(ts: list[torch.Tensor]) -> tuple[int, int]:
    """(count, bytes) of the distinct tensors in ts: same storage, offset, shape, stride = same."""
    seen = {}
    for t in ts:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        seen[key] = t.numel() * t.element_size()
    return len(seen), sum(seen.values())


def storage_bytes(ts: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages under ts (what holding them keeps allocated)."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ts}.values())


def _dist_version(name: str) -> str:
    from importlib.metadata import version
    try:
        return version(name)
    except Exception:
        return "?"


# --------------------------------------------------------------------------------------------
# nnsight: where each name of the full set lives in Hugging Face's GPT-2, in execution order
# --------------------------------------------------------------------------------------------
def _nn_block_accessors(block) -> list[tuple[str, Callable[[], Any]]]:
    """(name within the block, getter) in the order GPT2Block's forward produces them.

    nnsight reads values in the order the model computes them: keys and values come out of the
    fused projection before the queries are reshaped, so hook_k and hook_v precede hook_q here.
    """
    src = lambda: block.attn.source  # noqa: E731
    inner = lambda: block.attn.source.attention_interface_1.source  # noqa: E731  (eager_attention_forward)
    return [
        ("hook_resid_pre", lambda: block.inputs[0][0]),
        ("ln1.hook_normalized", lambda: block.ln_1.output),
        ("attn.hook_k", lambda: src().key_states_view_1.output),  # (batch, pos, head, d_head)
        ("attn.hook_v", lambda: src().value_states_view_1.output),
        ("attn.hook_q", lambda: src().query_states_view_0.output),
        ("attn.hook_attn_scores", lambda: inner().attn_weights_1.output),  # scaled, plus the causal mask
        ("attn.hook_pattern", lambda: inner().nn_functional_softmax_0.output),
        ("attn.hook_z", lambda: src().attention_interface_1.output[0]),  # (batch, pos, head, d_head)
        ("hook_attn_out", lambda: block.attn.output[0]),
        ("hook_resid_mid", lambda: block.ln_2.input),
        ("ln2.hook_normalized", lambda: block.ln_2.output),
        ("mlp.hook_pre", lambda: block.mlp.c_fc.output),
        ("mlp.hook_post", lambda: block.mlp.act.output),
        ("hook_mlp_out", lambda: block.mlp.output),
        ("hook_resid_post", lambda: block.output),
    ]


def nn_accessors(nm, n_layer: int) -> list[tuple[str, Callable[[], Any]]]:
    """Every name nnsight can read from the model, in execution order."""
    t = nm.transformer
    out = [("hook_embed", lambda: t.wte.output), ("hook_pos_embed", lambda: t.wpe.output)]
    for layer in range(n_layer):
        out += [(f"blocks.{layer}.{n}", g) for n, g in _nn_block_accessors(t.h[layer])]
    out.append(("ln_final.hook_normalized", lambda: t.ln_f.output))
    return out


# nnsight re-executes the body of a `with model.trace(...)` block from this file's source;
# only values that were .save()d (or objects created outside the block) survive it.
def _nn_none(nm, x):
    with nm.trace(x):
        out = nm.output.save()
    return out


def _nn_capture(nm, x, getters):
    saved = {}
    with nm.trace(x):
        for name, get in getters:
            saved[name] = get().save()
        out = nm.output.save()
    return out, saved


# --------------------------------------------------------------------------------------------
# the frameworks: each returns {variant: callable(input_ids) -> result} or raises
# --------------------------------------------------------------------------------------------
class Frameworks:
    """Wrappers around per-framework copies of the model; `errors` says why one is missing."""

    def __init__(self, base: torch.nn.Module, n_layer: int):
        self.errors: dict[str, str] = {}
        self.calls: dict[str, Callable[[torch.Tensor], Any]] = {}
        self.versions: dict[str, str] = {}
        self.n_layer = n_layer
        self.resid = resid_names(n_layer)
        self.full: list[str] = []
        self.missing: dict[str, list[str]] = {}  # framework -> names of the full set it cannot capture
        self.calls["bare_hf"] = lambda x: base(x)
        for fw, setup in (("mechscope", self._mechscope), ("tl", self._tl), ("nnsight", self._nnsight)):
            try:
                setup(copy.deepcopy(base))
            except Exception as e:  # an anchor that fails to import or wrap is reported, not fatal
                self.errors[fw] = f"{type(e).__name__}: {e}"[:300]
                traceback.print_exc(file=sys.stderr)

    def _mechscope(self, model):
        ms = import_mechscope()
        self.versions["mechscope"] = getattr(ms, "__version__", "?")
        adapter = ms.wrap(model)
        self.ms, self.ms_adapter = ms, adapter
        resid = [ms.Site.parse(n) for n in self.resid]
        self.calls["mechscope_none"] = lambda x: ms.run(adapter, x)
        self.calls["mechscope_resid"] = lambda x: ms.run(adapter, x, capture=resid)

    def _tl(self, model):
        import transformer_lens
        from transformer_lens.model_bridge.sources import build_bridge_from_module
        self.versions["transformer_lens"] = (getattr(transformer_lens, "__version__", None)
                                             or _dist_version("transformer-lens"))
        # Wraps the in-memory HF model (modified in place: bridge components replace its
        # submodules). No tokenizer and no hub access are needed for token-id inputs.
        bridge = build_bridge_from_module(model, "GPT2LMHeadModel", hf_config=model.config,
                                          model_name="random-gpt2-small")
        bridge.eval()
        self.bridge = bridge
        resid = list(self.resid)
        self.calls["tl_none"] = lambda x: bridge(x)
        self.calls["tl_resid"] = lambda x: bridge.run_with_cache(x, names_filter=resid)

    def _nnsight(self, model):
        import nnsight
        self.versions["nnsight"] = getattr(nnsight, "__version__", None) or _dist_version("nnsight")
        nm = nnsight.NNsight(model)
        self.nm = nm
        getters = dict(nn_accessors(nm, self.n_layer))
        resid = [(n, getters[n]) for n in getters if n in set(self.resid)]
        self.nn_getters = getters
        self.calls["nnsight_none"] = lambda x: _nn_none(nm, x)
        self.calls["nnsight_resid"] = lambda x: _nn_capture(nm, x, resid)

    def set_full(self, names: list[str]) -> None:
        """Install the three full-capture variants for `names`; record what a framework cannot capture."""
        self.full = list(names)
        if hasattr(self, "ms"):
            ms, adapter = self.ms, self.ms_adapter
            valid = adapter.sites()
            sites, missing = [], []
            for n in names:
                try:
                    s = ms.Site.parse(n, valid)
                except Exception:
                    missing.append(n)
                    continue
                if s not in sites:
                    sites.append(s)
            self.ms_full_sites, self.missing["mechscope"] = sites, missing
            self.calls["mechscope_full"] = lambda x: ms.run(adapter, x, capture=sites)
        if hasattr(self, "bridge"):
            bridge, full = self.bridge, list(names)
            self.calls["tl_full"] = lambda x: bridge.run_with_cache(x, names_filter=full)
        if hasattr(self, "nm"):
            want = set(names)
            getters = [(n, g) for n, g in self.nn_getters.items() if n in want]  # execution order
            self.missing["nnsight"] = [n for n in names if n not in self.nn_getters]
            nm = self.nm
            self.calls["nnsight_full"] = lambda x: _nn_capture(nm, x, getters)


    def release_retained(self, variant: str) -> int:
        """Drop what `variant`'s framework keeps from its last call; return the distinct storage bytes.

        TransformerLens's attention bridges keep the last attention pattern (and, in some
        components, the scores) in `_pattern` / `_attn_scores`, which they set to None when
        built: they are reset to that. mechscope and nnsight keep nothing between calls.
        """
        if FRAMEWORK[variant] != "tl" or not hasattr(self, "bridge"):
            return 0
        kept: list[torch.Tensor] = []
        for module in self.bridge.modules():
            for attr in ("_pattern", "_attn_scores"):
                if isinstance(getattr(module, attr, None), torch.Tensor):
                    kept.append(getattr(module, attr))
                    setattr(module, attr, None)
        return storage_bytes(kept)


def captured(variant: str, res: Any, fws: Frameworks) -> dict[str, torch.Tensor]:
    """{TransformerLens name: tensor} for the captures a variant's result holds (not its logits)."""
    if variant.startswith("mechscope_"):
        names = fws.resid if variant == "mechscope_resid" else fws.full
        out = {}
        for n in names:
            try:
                out[n] = res.cache[n]
            except Exception:
                pass
        return out
    if variant in ("tl_resid", "tl_full"):
        return dict(res[1].items())
    if variant in ("nnsight_resid", "nnsight_full"):
        return dict(res[1])
    return {}


def result_logits(variant: str, res: Any) -> torch.Tensor:
    if variant.startswith("mechscope"):
        return res.logits
    if variant == "tl_none":
        return res
    if variant.startswith("tl_"):
        return res[0]
    if variant.startswith("nnsight"):
        out = res if variant == "nnsight_none" else res[0]
        return out.logits
    return res.logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over b's shape (a may broadcast, e.g. a position embedding of batch 1)."""
    a = a.expand_as(b) if a.shape != b.shape else a
    return float((a.double() - b.double()).abs().max())


# --------------------------------------------------------------------------------------------
# memory: one child process, every framework imported and wrapped before any variant runs
# --------------------------------------------------------------------------------------------
def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Start the peak-RSS counter (VmHWM) again from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_child(n_layer: int, full_path: str) -> None:
    torch.set_num_threads(THREADS)
    full = json.loads(Path(full_path).read_text())
    recs: dict[str, dict[str, Any]] = {}
    model = build_model(n_layer)
    x = make_inputs()
    fws = Frameworks(model, n_layer)
    fws.set_full(full)
    rss_wrapped = current_rss_bytes()
    for v in VARIANTS:
        rec: dict[str, Any] = {"ok": False}
        recs[v] = rec
        if v not in fws.calls:
            rec["error"] = fws.errors.get(FRAMEWORK[v], "not available")
            continue
        try:
            with torch.inference_mode():
                res = fws.calls[v](x)  # warm-up: one-off allocations are not the variant's cost
                del res
                gc.collect()
                held_before = current_rss_bytes()
                retained = fws.release_retained(v)  # kept from the warm-up: the measured run would free it
                gc.collect()
                before = current_rss_bytes()
                reset_peak_rss()
                res = fws.calls[v](x)
                peak = peak_rss_bytes()
            caps = captured(v, res, fws)
            n, req = distinct_bytes(list(caps.values()))
            rec.update(ok=True, extra_bytes=peak - before, requested_bytes=req, distinct_tensors=n, names=len(caps),
                       storage_bytes=storage_bytes(list(caps.values())), retained_bytes=retained,
                       retained_rss_bytes=held_before - before)
            del res, caps
            gc.collect()
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"[:300]
            traceback.print_exc(file=sys.stderr)
        print(f"memory {v}: " + (f"extra {rec['extra_bytes'] / MB:.1f} MB" if rec["ok"] else rec["error"]),
              file=sys.stderr, flush=True)
    print(json.dumps({"variants": recs, "rss_after_wrapping_mb": round(rss_wrapped / MB, 1)}), flush=True)


def run_memory_child(n_layer: int, full: list[str], timeout: float = 1800) -> dict[str, Any]:
    env = dict(os.environ)
    # a fixed threshold turns off glibc's dynamic one: every large block is mmapped and freed to the OS
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    env["MALLOC_TRIM_THRESHOLD_"] = "131072"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "full.json")
        Path(path).write_text(json.dumps(full))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory", path, "--n-layer", str(n_layer)]
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"memory child timed out after {timeout:.0f}s"}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {"error": f"memory child exited {p.returncode} without a result (its stderr is above)"}


# --------------------------------------------------------------------------------------------
# discovery: TransformerLens's unfiltered cache, the full set, and what mechscope covers
# --------------------------------------------------------------------------------------------
def _agrees(a: torch.Tensor, t: torch.Tensor) -> bool:
    """a holds t's values: the same shape, or one that broadcasts to it (a position embedding of
    batch 1), or the same values with length-one axes dropped or added ((batch, pos, 1) scales)."""
    if a.shape != t.shape and a.shape != (1, *t.shape[1:]):
        if a.numel() != t.numel() or [d for d in a.shape if d != 1] != [d for d in t.shape if d != 1]:
            return False
        a = a.reshape(t.shape)
    return max_diff(a, t) <= TOLERANCE


def _is_positions(t: torch.Tensor, x: torch.Tensor) -> bool:
    """t is the position ids 0..n-1 of the input x (batch, n), for one row or every row."""
    n = x.shape[-1]
    if t.dtype.is_floating_point or t.shape not in ((n,), (1, n), tuple(x.shape)):
        return False
    return torch.equal(t.reshape(-1, n), torch.arange(n, device=t.device).expand(t.numel() // n, n))


def discover(fws: Frameworks, x: torch.Tensor, figures: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """The full set, and (when TransformerLens runs) its unfiltered cache's names classified
    against mechscope's capture: {"covered": {name: how}, "uncovered": [...]}.

    Every name that parses to a mechscope site is captured and compared; the full set leaves out
    the layer norms' scale factors (`*.hook_scale`), which nnsight cannot read (Hugging Face's
    layer norm is one fused call), and names that are other names for a tensor already in it.
    """
    ms = getattr(fws, "ms", None)
    if "tl_none" not in fws.calls or ms is None:
        full = fallback_full_set(fws.n_layer)
        figures["full_set_source"] = "fallback (TransformerLens or mechscope unavailable)"
        return full, None
    with torch.inference_mode():
        _, cache = fws.bridge.run_with_cache(x)
    names = list(cache.keys())
    valid = fws.ms_adapter.sites()
    own = []  # names that parse to a mechscope site: captured below
    for n in names:
        try:
            ms.Site.parse(n, valid)
            own.append(n)
        except Exception:
            pass
    with torch.inference_mode():
        res = ms.run(fws.ms_adapter, x, capture=list(dict.fromkeys(ms.Site.parse(n, valid) for n in own)))
    held: dict[str, torch.Tensor] = {}
    for n in own:
        held[n] = res.cache[n]
    # the full set: TL's own activations (not another name for one of them); aliases found below
    key = lambda t: (t.data_ptr(), tuple(t.shape), tuple(t.stride()))  # noqa: E731
    by_ptr: dict[tuple, str] = {}
    for n in own:
        by_ptr.setdefault(key(cache[n]), n)
    full = [n for n in own if by_ptr[key(cache[n])] == n and not n.endswith("hook_scale")]
    covered: dict[str, str] = {}
    uncovered: list[str] = []
    for n in names:
        t = cache[n]
        if n in held and _agrees(held[n], t):
            covered[n] = "captured"
            continue
        same = by_ptr.get(key(t))
        if same is None:  # an equal tensor under another name (a copy, or a view of the same values)
            same = next((m for m in own if cache[m].shape == t.shape and cache[m].dtype == t.dtype
                         and torch.equal(cache[m], t)), None)
        if same is not None and same in held and _agrees(held[same], t):
            covered[n] = f"= {same}"
        elif t.shape == res.logits.shape and max_diff(res.logits, t) <= TOLERANCE:
            covered[n] = "= logits"
        elif t.shape == x.shape and t.dtype == x.dtype and torch.equal(t, x):
            covered[n] = "= the input ids (RunResult.prepared.input_ids)"
        elif _is_positions(t, x):
            covered[n] = ("= the position ids 0..n-1 (n = RunResult.prepared.input_ids.shape[1]; "
                          "the model derives them from the input's length)")
        else:
            uncovered.append(n)
    figures["tl_unfiltered_cache_names"] = len(names)
    figures["tl_unfiltered_distinct_tensors"] = distinct_bytes(list(cache.values()))[0]
    figures["full_set_names"] = len(full)
    figures["full_set_source"] = "TransformerLens's unfiltered cache"
    return full, {"covered": covered, "uncovered": uncovered}


def _generic(name: str) -> str:
    """blocks.7.attn.hook_q -> blocks.L.attn.hook_q (for a short printout)."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        parts[1] = "L"
    return ".".join(parts)


def _compress(names: list[str]) -> list[str]:
    return list(dict.fromkeys(_generic(n) for n in names))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 warmup round, 3 measured rounds (smoke test)")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds (default 9, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warmup rounds (default 1)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the memory child process")
    ap.add_argument("--n-layer", type=int, default=N_LAYER, help=f"layers (default {N_LAYER}; fewer for a smoke test)")
    ap.add_argument("--memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory:
        memory_child(args.n_layer, args.memory)
        return 0

    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 9)
    warm = args.warmup if args.warmup is not None else 1
    torch.set_num_threads(THREADS)
    t_start = time.time()
    n_layer = args.n_layer

    base = build_model(n_layer)
    x = make_inputs()
    progress("core_overhead: wrapping the model in every framework")
    fws = Frameworks(base, n_layer)
    errors, versions = dict(fws.errors), dict(fws.versions)
    figures: dict[str, Any] = {"batch": BATCH, "seq": SEQ, "n_layer": n_layer, "rounds": rounds,
                               "warmup_rounds": warm, "threads": THREADS, "grad": "torch.inference_mode()"}
    notes: list[str] = []
    checks: dict[str, dict[str, Any]] = {}

    def why_missing(*variants: str) -> str:
        for v in variants:
            if FRAMEWORK[v] in errors:
                return f"not run: {FRAMEWORK[v]} failed: {errors[FRAMEWORK[v]]}"
        return "not run: " + ", ".join(v for v in variants if v not in fws.calls) + " missing"

    # --- discovery and agreement (these runs also warm every framework up) -----------------
    progress("core_overhead: TransformerLens's unfiltered cache against mechscope's capture")
    full, coverage = discover(fws, x, figures)
    fws.set_full(full)
    for fw, miss in fws.missing.items():
        figures[f"{fw}_full_set_missing"] = len(miss)
    target = "every name of TransformerLens's unfiltered cache: mechscope's capture holds an equal tensor"
    if coverage is None:
        checks["tl_cache_names_covered"] = {"target": target, "got": why_missing("tl_none", "mechscope_none"),
                                            "pass": False}
    else:
        unc = coverage["uncovered"]
        n_all = len(coverage["covered"]) + len(unc)
        got = f"{len(coverage['covered'])} of {n_all}" + (f"; not held: {', '.join(_compress(unc))}" if unc else "")
        checks["tl_cache_names_covered"] = {"target": target, "got": got, "pass": not unc}
        figures["tl_names_covered_as_captured"] = sum(1 for h in coverage["covered"].values() if h == "captured")
        figures["tl_names_covered_as_other_names"] = sum(1 for h in coverage["covered"].values() if h != "captured")
        figures["tl_names_not_covered"] = len(unc)

    progress("core_overhead: agreement of values")
    with torch.inference_mode():
        ref_logits = fws.calls["bare_hf"](x).logits
        logit_diffs: dict[str, float] = {}
        value_diffs: dict[str, float] = {}
        held: dict[str, dict[str, torch.Tensor]] = {}
        names_held: dict[str, int] = {}
        for v in VARIANTS[1:]:
            if v not in fws.calls:
                continue
            try:
                res = fws.calls[v](x)
            except Exception as e:
                errors[v] = f"{type(e).__name__}: {e}"[:300]
                traceback.print_exc(file=sys.stderr)
                del fws.calls[v]
                continue
            logit_diffs[v] = max_diff(result_logits(v, res), ref_logits)
            if v.endswith("_full"):
                held[v] = captured(v, res, fws)
                names_held[v] = sum(1 for n in full if n in held[v])
            del res
        if "tl_full" in held:
            ref = held["tl_full"]
            for v in ("mechscope_full", "nnsight_full"):
                if v in held:
                    diffs = [max_diff(held[v][n], ref[n]) for n in full if n in held[v] and n in ref]
                    value_diffs[v] = max(diffs) if diffs else float("inf")
        del held
    for v, d in logit_diffs.items():
        figures[f"max_abs_diff_logits_{v}"] = d
    for v, d in value_diffs.items():
        figures[f"max_abs_diff_full_set_{v}_vs_tl"] = d
    for v, n in names_held.items():
        figures[f"{v}_names"] = n
    want = [v for v in VARIANTS[1:]]
    missing = [v for v in want if v not in logit_diffs]
    worst = max(logit_diffs.values(), default=float("inf"))
    checks["values_agree_logits"] = {
        "target": f"every variant's logits within {TOLERANCE:g} of the bare forward's",
        "got": worst if not missing else f"{worst:.3g}; not run: {', '.join(missing)}",
        "pass": not missing and worst <= TOLERANCE}
    missing = [v for v in ("mechscope_full", "nnsight_full") if v not in value_diffs]
    worst = max(value_diffs.values(), default=float("inf"))
    checks["values_agree_full_set"] = {
        "target": f"every tensor of the full set, mechscope's and nnsight's, within {TOLERANCE:g} of TransformerLens's",
        "got": worst if not missing else f"{worst:.3g}; not compared: {', '.join(missing)}"
        + ("" if "tl_full" in fws.calls else " (tl_full missing)"),
        "pass": not missing and worst <= TOLERANCE}
    short = {v: len(full) - names_held.get(v, 0) for v in ("mechscope_full", "tl_full", "nnsight_full")}
    checks["full_capture_equal_work"] = {
        "target": f"mechscope_full, tl_full and nnsight_full each hold all {len(full)} names of the full set",
        "got": "all" if not any(short.values()) else "; ".join(f"{v} lacks {k}" for v, k in short.items() if k),
        "pass": not any(short.values())}
    gc.collect()

    # --- timing: rotating round-robin ---------------------------------------------------
    order = [v for v in VARIANTS if v in fws.calls]
    times: dict[str, list[float]] = {v: [] for v in order}
    per_round: list[dict[str, float]] = []
    total = warm + rounds
    busy0 = cpu_snapshot()
    for r in range(total):
        rot = order[r % len(order):] + order[:r % len(order)]
        this_round = {}
        for v in rot:
            gc.collect()
            with torch.inference_mode():
                t0 = time.perf_counter()
                res = fws.calls[v](x)
                dt = (time.perf_counter() - t0) * 1000.0
            del res
            this_round[v] = dt
        if r >= warm:
            per_round.append(this_round)
            for v, dt in this_round.items():
                times[v].append(dt)
        tag = "warmup" if r < warm else "round"
        progress(f"core_overhead: {tag} {r + 1}/{total}: "
                 + ", ".join(f"{v} {this_round[v]:.0f}" for v in order) + " ms")
    busy_other = other_cpu_share(busy0)
    if busy_other is not None:
        figures["other_processes_cpu_share_during_timing"] = round(busy_other, 3)
        if busy_other > 0.1:
            notes.append(f"other processes kept {busy_other:.0%} of the cores busy during timing: "
                         "timings are noisy, rerun on an idle machine")
    med = {v: statistics.median(ts) for v, ts in times.items() if ts}
    for v in VARIANTS:
        if v in med:
            figures[f"{v}_ms"] = round(med[v], 2)
            figures[f"{v}_ms_min"] = round(min(times[v]), 2)
            figures[f"{v}_ms_max"] = round(max(times[v]), 2)

    def paired(num: str, den: str) -> float | None:
        if num not in med or den not in med:
            return None
        return round(statistics.median(rd[num] / rd[den] for rd in per_round), 4)

    for v in VARIANTS[1:]:
        if v in med and "bare_hf" in med:
            figures[f"{v}_vs_bare_paired"] = paired(v, "bare_hf")
            figures[f"{v}_vs_bare_unpaired"] = round(med[v] / med["bare_hf"], 4)
    for num, den in (("mechscope_full", "tl_full"), ("mechscope_full", "nnsight_full"),
                     ("mechscope_resid", "tl_resid"), ("mechscope_resid", "nnsight_resid")):
        if num in med and den in med:
            figures[f"{num}_vs_{den}_paired"] = paired(num, den)

    def time_check(name: str, num: str, den: str, limit: float, strict: bool = False) -> None:
        target = f"{'<' if strict else '<='} {limit} (median over rounds of {num} / {den} in the same round)"
        got = paired(num, den)
        if got is None:
            checks[name] = {"target": target, "got": why_missing(num, den), "pass": False}
        else:
            checks[name] = {"target": target, "got": got, "pass": got < limit if strict else got <= limit}

    time_check("no_intervention_overhead", "mechscope_none", "bare_hf", 1.02)
    time_check("resid_capture_overhead", "mechscope_resid", "bare_hf", 1.05)
    time_check("full_capture_time_vs_tl", "mechscope_full", "tl_full", 1.0, strict=True)
    time_check("full_capture_time_vs_nnsight", "mechscope_full", "nnsight_full", 1.0, strict=True)

    # --- memory --------------------------------------------------------------------------
    mem: dict[str, dict[str, Any]] = {}
    if not args.skip_memory:
        del fws, base
        gc.collect()
        progress("core_overhead: memory (one child process, every framework wrapped first)")
        out = run_memory_child(n_layer, full)
        mem = out.get("variants", {})
        if "error" in out:
            notes.append(f"memory: {out['error']}")
        if "rss_after_wrapping_mb" in out:
            figures["memory_rss_after_wrapping_mb"] = out["rss_after_wrapping_mb"]
        bare = mem.get("bare_hf", {})
        for v, rec in mem.items():
            if rec.get("ok"):
                figures[f"{v}_extra_mb"] = round(rec["extra_bytes"] / MB, 1)
                if bare.get("ok"):  # beyond a bare forward's own peak (its logits and transients)
                    rec["over_bare_bytes"] = rec["extra_bytes"] - bare["extra_bytes"]
                    figures[f"{v}_over_bare_mb"] = round(rec["over_bare_bytes"] / MB, 1)
                if rec.get("retained_bytes"):
                    figures[f"{v}_retained_between_calls_mb"] = round(rec["retained_bytes"] / MB, 1)
                    figures[f"{v}_retained_released_rss_mb"] = round(rec["retained_rss_bytes"] / MB, 1)
                if v in CAPTURE_VARIANTS:
                    figures[f"{v}_requested_mb"] = round(rec["requested_bytes"] / MB, 1)
                    figures[f"{v}_storage_mb"] = round(rec["storage_bytes"] / MB, 1)
                    figures[f"{v}_distinct_tensors"] = rec["distinct_tensors"]
    else:
        notes.append("memory not measured (--skip-memory)")

    def mem_error(v: str) -> str:
        rec = mem.get(v, {})
        if rec.get("ok") and "over_bare_bytes" not in rec:
            return f"bare_hf: {mem_error('bare_hf')}"
        return rec.get("error", "not measured")

    def mem_ok(v: str) -> bool:
        return bool(mem.get(v, {}).get("ok")) and "over_bare_bytes" in mem[v]

    for v, name in (("mechscope_resid", "resid_capture_memory"), ("mechscope_full", "full_capture_memory")):
        target = "<= 1.1 (peak beyond a bare forward's / requested bytes)"
        if mem_ok(v) and mem[v]["requested_bytes"] > 0:
            got = round(mem[v]["over_bare_bytes"] / mem[v]["requested_bytes"], 4)
            checks[name] = {"target": target, "got": got, "pass": got <= 1.1}
        else:
            checks[name] = {"target": target, "got": f"not run: {mem_error(v)}", "pass": False}
    for other in ("tl_full", "nnsight_full"):
        name = f"full_capture_memory_vs_{other.split('_')[0]}"
        target = (f"<= 1.05 (peak beyond a bare forward's, mechscope_full / {other}; the same tensors held; "
                  "measured after what the framework kept from its previous call was released"
                  + ("; before 2026-12-06 the patterns TransformerLens keeps between calls were in its RSS "
                     "before the run and so left out of its extra)" if other == "tl_full" else ")"))
        if mem_ok("mechscope_full") and mem_ok(other) and mem[other]["over_bare_bytes"] > 0:
            got = round(mem["mechscope_full"]["over_bare_bytes"] / mem[other]["over_bare_bytes"], 4)
            checks[name] = {"target": target, "got": got, "pass": got <= 1.05}
        else:
            bad = [v for v in ("mechscope_full", other) if not mem_ok(v)]
            reason = "; ".join(f"{v}: {mem_error(v)}" for v in bad) or "zero baseline"
            checks[name] = {"target": target, "got": f"not run: {reason}", "pass": False}

    # --- report ---------------------------------------------------------------------------
    from rich.console import Console
    from rich.table import Table
    console = Console(width=150, highlight=False, stderr=True)
    table = Table(title=f"core_overhead: GPT-2-small shape ({n_layer} layers), random weights, batch {BATCH}x{SEQ}, "
                        f"fp32, {THREADS} threads, {rounds} rounds (+{warm} warmup)")
    for col in ("variant", "median ms", "min", "max", "x bare (paired)", "MB over bare", "requested MB", "storage MB",
                "tensors"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in VARIANTS:
        if v not in med:
            table.add_row(v, f"failed: {errors.get(FRAMEWORK[v], errors.get(v, '?'))[:60]}", *[""] * 7)
            continue
        rec = mem.get(v, {})
        extra = f"{rec['over_bare_bytes'] / MB:.1f}" if "over_bare_bytes" in rec else ("-" if not rec else "err")
        caps = rec.get("ok") and v in CAPTURE_VARIANTS
        req = f"{rec['requested_bytes'] / MB:.1f}" if caps else ""
        sto = f"{rec['storage_bytes'] / MB:.1f}" if caps else ""
        nt = str(rec["distinct_tensors"]) if caps else ""
        xb = f"{figures.get(f'{v}_vs_bare_paired', 1.0):.3f}"
        table.add_row(v, f"{med[v]:.1f}", f"{min(times[v]):.1f}", f"{max(times[v]):.1f}", xb, extra, req, sto, nt)
    console.print(table)
    ct = Table(title="checks")
    for col in ("check", "target", "got", "pass"):
        ct.add_column(col)
    for k, c in checks.items():
        ct.add_row(k, c["target"], str(c["got"]), "[green]yes[/green]" if c["pass"] else "[red]NO[/red]")
    console.print(ct)
    for n in notes:
        console.print(f"note: {n}")
    figures["elapsed_s"] = round(time.time() - t_start, 1)
    figures["versions"] = {"transformers": transformers.__version__, **versions}
    report = {"name": "core_overhead", "kind": "benchmark", "machine": machine(THREADS), "figures": figures,
              "checks": checks, "pass": bool(checks) and all(c["pass"] for c in checks.values())}
    sys.stderr.flush()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
