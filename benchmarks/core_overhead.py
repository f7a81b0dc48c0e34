#!/usr/bin/env python
"""core_overhead: what does looking inside a forward pass cost, in time and in memory?

A GPT-2-small-shaped model with random weights (no download) runs one batch of 8 x 128 random
token ids, fp32, eager attention, 2 CPU threads, under torch.inference_mode(). Each variant is a
way of running that forward:

    bare_hf              model(input_ids)
    mechscope_none       mechscope.run(adapter, input_ids): no captures, no interventions
    mechscope_resid      capture resid_pre and resid_post of every layer (13 distinct tensors)
    mechscope_tl_cache   capture the mechscope sites for every hook name TransformerLens's
                         unfiltered cache holds (names mechscope cannot parse are listed)
    tl_none              TransformerLens 4.x TransformerBridge forward, no hooks
    tl_filtered          bridge.run_with_cache(names_filter=<the same residual names>)
    tl_full              bridge.run_with_cache() unfiltered
    nnsight_none         nnsight trace that saves nothing (context for the two below)
    nnsight_resid        nnsight trace saving the same residual tensors
    nnsight_full         nnsight trace with tracer.cache() of every module

Time: warmup rounds, then measured rounds; each round runs every variant once in a rotating
order, so drift hits every variant alike. Reported: median ms per forward, min and max.

Memory: each variant runs in a fresh child process (`--child VARIANT`). The child builds the
model, runs the bare forward twice, records its peak RSS, builds the framework's wrapper, runs
the variant once while holding its result, and records the peak RSS again; the difference is
the variant's extra peak memory (wrapper construction included). Peak RSS is VmHWM (ru_maxrss
of a child inherits the parent's high-water mark across fork+exec, so it cannot be used here). glibc's mmap threshold is pinned in
the children so freed tensors go back to the OS and the high-water mark tracks live memory.
"Requested" bytes are sum(numel * element_size) over the distinct tensors the variant returns.

The last line printed is one JSON object: figures, checks against the targets, and "pass".
Usage:  python benchmarks/core_overhead.py [--quick] [--rounds N] [--warmup N] [--skip-memory]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
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
from _machine import cpu_snapshot, other_cpu_share  # noqa: E402  (benchmarks/_machine.py)
import transformers  # noqa: E402

THREADS = 2
BATCH, SEQ = 8, 128
N_LAYER, D_MODEL, N_HEAD, VOCAB, N_POS = 12, 768, 12, 50257, 1024

VARIANTS = ["bare_hf", "mechscope_none", "mechscope_resid", "mechscope_tl_cache",
            "tl_none", "tl_filtered", "tl_full",
            "nnsight_none", "nnsight_resid", "nnsight_full"]
FRAMEWORK = {v: v.split("_")[0] for v in VARIANTS}
FRAMEWORK["bare_hf"] = "bare"
CAPTURE_VARIANTS = ["mechscope_resid", "mechscope_tl_cache", "tl_filtered", "tl_full",
                    "nnsight_resid", "nnsight_full"]

RESID_NAMES = ([f"blocks.{layer}.hook_resid_pre" for layer in range(N_LAYER)]
               + [f"blocks.{layer}.hook_resid_post" for layer in range(N_LAYER)])

# The names HookedTransformer's unfiltered cache holds for GPT-2; used only when the
# TransformerLens bridge cannot be imported, so mechscope_tl_cache still has a site list.
_FALLBACK_BLOCK = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q",
                   "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern",
                   "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale",
                   "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
                   "hook_resid_post"]
FALLBACK_TL_NAMES = (["hook_embed", "hook_pos_embed"]
                     + [f"blocks.{layer}.{n}" for layer in range(N_LAYER) for n in _FALLBACK_BLOCK]
                     + ["ln_final.hook_scale", "ln_final.hook_normalized"])

MB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# model and inputs
# --------------------------------------------------------------------------------------------
def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=N_LAYER, n_embd=D_MODEL, n_head=N_HEAD,
                                  vocab_size=VOCAB, n_positions=N_POS)
    # one forward of a whole prompt: no KV cache for anyone
    cfg.use_cache = False
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


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside obj (tensors, tuples, lists, dicts, HF ModelOutputs)."""
    out: list[torch.Tensor] = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, dict) or hasattr(o, "values") and callable(o.values) and not isinstance(o, str):
            try:
                stack.extend(o.values())
            except Exception:
                pass
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return out


def distinct_bytes(ts: list[torch.Tensor]) -> tuple[int, int]:
    """(count, bytes) of the distinct tensors in ts: same storage, offset, shape, stride = same."""
    seen = {}
    for t in ts:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        seen[key] = t.numel() * t.element_size()
    return len(seen), sum(seen.values())


# --------------------------------------------------------------------------------------------
# the frameworks: each returns {variant: callable(input_ids) -> result} or raises
# --------------------------------------------------------------------------------------------
class Frameworks:
    """Wrappers around per-framework copies of the model; `errors` says why one is missing."""

    def __init__(self, base: torch.nn.Module, which: set[str], tl_names: list[str] | None = None):
        self.errors: dict[str, str] = {}
        self.calls: dict[str, Callable[[torch.Tensor], Any]] = {}
        self.versions: dict[str, str] = {}
        self.tl_names = tl_names
        self.ms_tl_sites: list[Any] | None = None
        self.ms_unmatched: list[str] = []
        if "bare" in which:
            bare = base
            self.calls["bare_hf"] = lambda x: bare(x)
        for fw, setup in (("mechscope", self._mechscope), ("tl", self._tl), ("nnsight", self._nnsight)):
            if fw not in which:
                continue
            try:
                setup(copy.deepcopy(base))
            except Exception as e:  # an anchor that fails to import or wrap is reported, not fatal
                self.errors[fw] = f"{type(e).__name__}: {e}"[:300]
                traceback.print_exc(file=sys.stderr)

    # mechscope ---------------------------------------------------------------------------
    def _mechscope(self, model):
        ms = import_mechscope()
        self.versions["mechscope"] = getattr(ms, "__version__", "?")
        adapter = ms.wrap(model)
        self.ms = ms
        self.ms_adapter = adapter
        resid = [ms.Site.parse(n) for n in RESID_NAMES]
        self.calls["mechscope_none"] = lambda x: ms.run(adapter, x)
        self.calls["mechscope_resid"] = lambda x: ms.run(adapter, x, capture=resid)
        if self.tl_names is not None:
            self.set_tl_names(self.tl_names)

    def set_tl_names(self, names: list[str]) -> None:
        """Map TransformerLens cache names to mechscope sites (names it cannot parse are kept aside)."""
        self.tl_names = names
        if not hasattr(self, "ms"):
            return
        ms, adapter = self.ms, self.ms_adapter
        valid = adapter.sites()
        sites, unmatched = [], []
        for n in names:
            try:
                s = ms.Site.parse(n, valid)
            except Exception:
                unmatched.append(n)
                continue
            if s not in sites:
                sites.append(s)
        self.ms_tl_sites, self.ms_unmatched = sites, unmatched
        self.calls["mechscope_tl_cache"] = lambda x: ms.run(adapter, x, capture=sites)

    # TransformerLens ---------------------------------------------------------------------
    def _tl(self, model):
        import transformer_lens
        from transformer_lens.model_bridge.sources import build_bridge_from_module
        self.versions["transformer_lens"] = getattr(transformer_lens, "__version__", None) or _dist_version("transformer-lens")
        # Wraps the in-memory HF model (modified in place: bridge components replace its
        # submodules). No tokenizer and no hub access are needed for token-id inputs.
        bridge = build_bridge_from_module(model, "GPT2LMHeadModel", hf_config=model.config,
                                          model_name="random-gpt2-small")
        bridge.eval()
        self.bridge = bridge
        self.calls["tl_none"] = lambda x: bridge(x)
        self.calls["tl_filtered"] = lambda x: bridge.run_with_cache(x, names_filter=list(RESID_NAMES))
        self.calls["tl_full"] = lambda x: bridge.run_with_cache(x)

    # nnsight -----------------------------------------------------------------------------
    def _nnsight(self, model):
        import nnsight
        self.versions["nnsight"] = getattr(nnsight, "__version__", None) or _dist_version("nnsight")
        nm = nnsight.NNsight(model)
        self.nm = nm
        self.calls["nnsight_none"] = lambda x: _nn_none(nm, x)
        self.calls["nnsight_resid"] = lambda x: _nn_resid(nm, x)
        self.calls["nnsight_full"] = lambda x: _nn_full(nm, x)


# nnsight re-executes the body of a `with model.trace(...)` block from this file's source;
# only values that were .save()d (or objects created outside the block) survive it.
def _nn_none(nm, x):
    with nm.trace(x):
        out = nm.output.save()
    return out


def _nn_resid(nm, x):
    saved = []
    with nm.trace(x):
        saved.append(nm.transformer.h[0].input.save())  # resid_pre of block 0
        for layer in range(N_LAYER):
            saved.append(nm.transformer.h[layer].output.save())  # resid_post (= next resid_pre)
        out = nm.output.save()
    return out, saved


def _nn_full(nm, x):
    with nm.trace(x) as tracer:
        cache = tracer.cache()
        out = nm.output.save()
    return out, cache


def nn_cache_tensors(cache) -> list[torch.Tensor]:
    ts = []
    for k in cache.keys():
        ts += tensors_in(cache[k].output)
    return ts


def _dist_version(name: str) -> str:
    from importlib.metadata import version
    try:
        return version(name)
    except Exception:
        return "?"


def result_tensors(variant: str, res: Any) -> list[torch.Tensor]:
    """The captured tensors a variant's result holds (not its logits)."""
    if variant.startswith("mechscope"):
        return list(res.cache.values())
    if variant in ("tl_filtered", "tl_full"):
        return list(res[1].values())
    if variant == "nnsight_resid":
        return list(res[1])
    if variant == "nnsight_full":
        return nn_cache_tensors(res[1])
    return []


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


# --------------------------------------------------------------------------------------------
# child: one variant's extra peak memory
# --------------------------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM, else ru_maxrss.

    ru_maxrss is not usable in a child: Linux carries the parent's high-water mark across
    fork+exec into it, so a child started by a big parent reports the parent's peak. VmHWM
    belongs to the child's own address space and starts fresh at exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, tl_names_path: str | None) -> None:
    torch.set_num_threads(THREADS)
    rec: dict[str, Any] = {"variant": variant, "ok": False}
    try:
        tl_names = json.loads(Path(tl_names_path).read_text()) if tl_names_path else None
        model = build_model()
        x = make_inputs()
        with torch.inference_mode():
            for _ in range(2):
                out = model(x)
                del out
                gc.collect()
        rss_before_wrap = current_rss_bytes()
        base_peak = peak_rss_bytes()
        fw = FRAMEWORK[variant]
        if fw == "bare":
            call = lambda x: model(x)  # noqa: E731
        else:
            # the child's model is wrapped directly (no copy): bare forwards already ran on it
            frameworks = Frameworks.__new__(Frameworks)
            frameworks.errors, frameworks.calls, frameworks.versions = {}, {}, {}
            frameworks.tl_names, frameworks.ms_tl_sites, frameworks.ms_unmatched = tl_names, None, []
            {"mechscope": frameworks._mechscope, "tl": frameworks._tl, "nnsight": frameworks._nnsight}[fw](model)
            call = frameworks.calls[variant]
        gc.collect()
        rec["wrap_bytes"] = current_rss_bytes() - rss_before_wrap
        with torch.inference_mode():
            res = call(x)
        peak = peak_rss_bytes()
        ts = result_tensors(variant, res)
        n, req = distinct_bytes(ts)
        rec.update(ok=True, ru_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   base_peak_bytes=base_peak, peak_bytes=peak, extra_bytes=peak - base_peak,
                   requested_bytes=req, distinct_tensors=n, captured_entries=len(ts))
        del res
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
        traceback.print_exc(file=sys.stderr)
    print(json.dumps(rec), flush=True)


def run_child(variant: str, tl_names_path: str | None, timeout: float = 900) -> dict[str, Any]:
    env = dict(os.environ)
    # a fixed threshold turns off glibc's dynamic one: every large block is mmapped and freed to the OS
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    env["MALLOC_TRIM_THRESHOLD_"] = "131072"
    env.setdefault("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env["PYTHONPATH"]] if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
    if tl_names_path:
        cmd += ["--tl-names", tl_names_path]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "ok": False, "error": f"child timed out after {timeout:.0f}s"}
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (p.stderr or "").strip().splitlines()[-3:]
    return {"variant": variant, "ok": False, "error": f"child exited {p.returncode}: {' | '.join(tail)}"[:300]}


# --------------------------------------------------------------------------------------------
# discovery: which names TransformerLens's full cache holds, and which mechscope covers
# --------------------------------------------------------------------------------------------
def classify_unmatched(tl_cache: dict[str, torch.Tensor], matched: list[str], unmatched: list[str],
                       logits: torch.Tensor) -> dict[str, str | None]:
    """For each TL name mechscope could not parse: the matched name (or 'logits') holding the same
    tensor, or None when the tensor is one mechscope's capture does not hold."""
    def block(name: str) -> str | None:
        return name.split(".")[1] if name.startswith("blocks.") else None

    by_ptr: dict[tuple, list[str]] = {}
    for n in matched:
        t = tl_cache[n]
        by_ptr.setdefault((t.data_ptr(), tuple(t.shape)), []).append(n)
    out: dict[str, str | None] = {}
    for n in unmatched:
        t = tl_cache[n]
        same = by_ptr.get((t.data_ptr(), tuple(t.shape)), [])
        hit = next((m for m in same if block(m) == block(n)), same[0] if same else None)
        if hit is None:
            for m in matched:
                mt = tl_cache[m]
                if block(m) == block(n) and mt.shape == t.shape and mt.dtype == t.dtype and torch.equal(mt, t):
                    hit = m
                    break
        if hit is None and t.shape == logits.shape and torch.equal(t, logits):
            hit = "logits"
        out[n] = hit
    return out


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 warmup round, 2 measured rounds (smoke test)")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds (default 21, quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warmup rounds (default 3, quick 1)")
    ap.add_argument("--skip-memory", action="store_true", help="skip the memory child processes")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tl-names", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.tl_names)
        return 0

    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 21)
    warm = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    torch.set_num_threads(THREADS)
    from rich.console import Console
    from rich.table import Table
    console = Console(width=150, highlight=False)
    t_start = time.time()

    base = build_model()
    x = make_inputs()
    fws = Frameworks(base, {"bare", "mechscope", "tl", "nnsight"})
    errors, versions = dict(fws.errors), dict(fws.versions)
    figures: dict[str, Any] = {"batch": BATCH, "seq": SEQ, "n_layer": N_LAYER, "rounds": rounds,
                               "warmup_rounds": warm}
    notes: list[str] = []

    # --- discovery and agreement (these runs also warm every framework up) -----------------
    agreement: dict[str, float] = {}
    with torch.inference_mode():
        ref_logits = fws.calls["bare_hf"](x).logits
        ref_resid = {}
        if "tl_full" in fws.calls:
            out, cache = fws.calls["tl_full"](x)
            tl_names = list(cache.keys())
            figures["tl_cache_names"] = len(tl_names)
            figures["tl_full_distinct_tensors"] = distinct_bytes(list(cache.values()))[0]
            agreement["tl_logits"] = (out - ref_logits).abs().max().item()
            ref_resid = {n: cache[n] for n in RESID_NAMES}
            fws.set_tl_names(tl_names)
            tl_cache_dict = {n: cache[n] for n in tl_names}
            tl_logits = out
            del out, cache
        else:
            tl_names, tl_cache_dict = FALLBACK_TL_NAMES, None
            fws.set_tl_names(tl_names)
            notes.append(f"TransformerLens unavailable ({fws.errors.get('tl')}); mechscope_tl_cache uses "
                         "HookedTransformer's standard GPT-2 cache names")
        figures["tl_names_source"] = "bridge" if tl_cache_dict is not None else "fallback"
        if fws.ms_tl_sites is not None:
            matched = [n for n in tl_names if n not in set(fws.ms_unmatched)]
            figures["tl_names_matched"] = len(matched)
            figures["tl_names_unmatched"] = len(fws.ms_unmatched)
            figures["mechscope_tl_cache_sites"] = len(fws.ms_tl_sites)
            if tl_cache_dict is not None:
                aliases = classify_unmatched(tl_cache_dict, matched, fws.ms_unmatched, tl_logits)
                uncovered = [n for n, a in aliases.items() if a is None]
                figures["tl_names_unmatched_same_tensor_as_matched"] = len(aliases) - len(uncovered)
                figures["tl_names_unmatched_uncovered"] = len(uncovered)
            else:
                aliases, uncovered = {n: None for n in fws.ms_unmatched}, list(fws.ms_unmatched)
        if "mechscope_resid" in fws.calls:
            res = fws.calls["mechscope_resid"](x)
            agreement["mechscope_logits"] = (res.logits - ref_logits).abs().max().item()
            if ref_resid:
                agreement["mechscope_vs_tl_resid"] = max((res.cache[n] - ref_resid[n]).abs().max().item()
                                                         for n in RESID_NAMES)
            del res
        if "nnsight_resid" in fws.calls:
            out, saved = fws.calls["nnsight_resid"](x)
            agreement["nnsight_logits"] = (out.logits - ref_logits).abs().max().item()
            if ref_resid:
                want = [ref_resid["blocks.0.hook_resid_pre"]] + [ref_resid[f"blocks.{i}.hook_resid_post"]
                                                                  for i in range(N_LAYER)]
                agreement["nnsight_vs_tl_resid"] = max((a - b).abs().max().item() for a, b in zip(saved, want))
            del out, saved
        del ref_resid, tl_cache_dict
        tl_logits = None
    for k, v in agreement.items():
        figures[f"max_abs_diff_{k}"] = v
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
        print(f"{tag} {r + 1}/{total}: " + ", ".join(f"{v} {this_round[v]:.0f}" for v in order) + " ms",
              file=sys.stderr, flush=True)

    busy_other = other_cpu_share(busy0)
    if busy_other is not None and busy_other > 0.1:
        notes.append(f"other processes kept {busy_other:.0%} of the cores busy during timing: "
                     "timings are noisy, rerun on an idle machine")
    med = {v: statistics.median(ts) for v, ts in times.items() if ts}
    for v in VARIANTS:
        if v in med:
            figures[f"{v}_ms"] = round(med[v], 2)
            figures[f"{v}_ms_min"] = round(min(times[v]), 2)
            figures[f"{v}_ms_max"] = round(max(times[v]), 2)
    if "bare_hf" in med:
        for v in VARIANTS:
            if v in med and v != "bare_hf":
                figures[f"{v}_vs_bare"] = round(med[v] / med["bare_hf"], 4)
                figures[f"{v}_vs_bare_paired"] = round(statistics.median(
                    rd[v] / rd["bare_hf"] for rd in per_round), 4)

    # --- memory: one child process per variant -------------------------------------------
    mem: dict[str, dict[str, Any]] = {}
    if not args.skip_memory:
        del fws
        gc.collect()
        with tempfile.TemporaryDirectory() as td:
            path = os.path.join(td, "tl_names.json")
            Path(path).write_text(json.dumps(tl_names))
            for v in VARIANTS:
                rec = run_child(v, path)
                mem[v] = rec
                if rec.get("ok"):
                    console.print(f"[dim]memory {v}: extra {rec['extra_bytes'] / MB:.1f} MB, "
                                  f"requested {rec['requested_bytes'] / MB:.1f} MB[/dim]")
                else:
                    console.print(f"[dim]memory {v}: failed: {rec.get('error')}[/dim]")
        for v, rec in mem.items():
            if rec.get("ok"):
                figures[f"{v}_extra_mb"] = round(rec["extra_bytes"] / MB, 1)
                figures[f"{v}_wrap_mb"] = round(rec["wrap_bytes"] / MB, 1)
                if v in CAPTURE_VARIANTS:
                    figures[f"{v}_requested_mb"] = round(rec["requested_bytes"] / MB, 1)
                    figures[f"{v}_distinct_tensors"] = rec["distinct_tensors"]
                if v.startswith("mechscope") and v in CAPTURE_VARIANTS and rec["requested_bytes"]:
                    figures[f"{v}_extra_over_requested"] = round(rec["extra_bytes"] / rec["requested_bytes"], 4)
    else:
        notes.append("memory not measured (--skip-memory)")

    # --- checks ---------------------------------------------------------------------------
    checks: dict[str, dict[str, Any]] = {}

    def why_missing(*variants: str) -> str:
        for v in variants:
            fw = FRAMEWORK[v]
            if fw in errors:
                return f"not run: {fw} failed: {errors[fw]}"
        return "not run: " + ", ".join(variants) + " missing"

    time_ratio_check(checks, "no_intervention_overhead", med, "mechscope_none", "bare_hf", "<= 1.02", 1.02, why_missing)
    time_ratio_check(checks, "resid_capture_overhead", med, "mechscope_resid", "bare_hf", "<= 1.05", 1.05, why_missing)
    time_ratio_check(checks, "tl_cache_faster_than_tl_full", med, "mechscope_tl_cache", "tl_full", "< 1.0", None,
                     why_missing)
    time_ratio_check(checks, "tl_cache_faster_than_nnsight_full", med, "mechscope_tl_cache", "nnsight_full",
                     "< 1.0", None, why_missing)
    for other in ("tl_full", "nnsight_full"):
        name = f"tl_cache_memory_below_{other}"
        a, b = mem.get("mechscope_tl_cache", {}), mem.get(other, {})
        if a.get("ok") and b.get("ok") and b["extra_bytes"] > 0:
            got = round(a["extra_bytes"] / b["extra_bytes"], 4)
            checks[name] = {"target": "< 1.0 (extra bytes, mechscope / anchor)", "got": got, "pass": got < 1.0}
        else:
            bad = [v for v, r in (("mechscope_tl_cache", a), (other, b)) if not r.get("ok")]
            reason = "; ".join(f"{v}: {mem.get(v, {}).get('error', 'not measured')}" for v in bad) or "zero baseline"
            checks[name] = {"target": "< 1.0 (extra bytes, mechscope / anchor)", "got": f"not run: {reason}",
                            "pass": False}
    for v in ("mechscope_resid", "mechscope_tl_cache"):
        name = f"{v.split('_', 1)[1]}_capture_memory"
        rec = mem.get(v, {})
        if rec.get("ok") and rec["requested_bytes"] > 0:
            got = round(rec["extra_bytes"] / rec["requested_bytes"], 4)
            checks[name] = {"target": "<= 1.1 (extra peak / requested bytes)", "got": got, "pass": got <= 1.1}
        else:
            checks[name] = {"target": "<= 1.1 (extra peak / requested bytes)",
                            "got": f"not run: {rec.get('error', 'not measured')}", "pass": False}

    # --- report ---------------------------------------------------------------------------
    table = Table(title=f"core_overhead: GPT-2-small shape, random weights, batch {BATCH}x{SEQ}, fp32, "
                        f"{THREADS} threads, {rounds} rounds (+{warm} warmup)")
    for col in ("variant", "median ms", "min", "max", "x bare", "extra MB", "requested MB", "extra/req"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in VARIANTS:
        fw = FRAMEWORK[v]
        if v not in med:
            table.add_row(v, f"failed: {errors.get(fw, '?')[:60]}", "", "", "", "", "", "")
            continue
        rec = mem.get(v, {})
        extra = f"{rec['extra_bytes'] / MB:.1f}" if rec.get("ok") else ("-" if not rec else "err")
        req = f"{rec['requested_bytes'] / MB:.1f}" if rec.get("ok") and v in CAPTURE_VARIANTS else ""
        ratio = (f"{rec['extra_bytes'] / rec['requested_bytes']:.3f}"
                 if rec.get("ok") and v in CAPTURE_VARIANTS and rec["requested_bytes"] else "")
        xb = f"{med[v] / med['bare_hf']:.3f}" if "bare_hf" in med else ""
        table.add_row(v, f"{med[v]:.1f}", f"{min(times[v]):.1f}", f"{max(times[v]):.1f}", xb, extra, req, ratio)
    console.print(table)
    ct = Table(title="checks")
    for col in ("check", "target", "got", "pass"):
        ct.add_column(col)
    for k, c in checks.items():
        ct.add_row(k, c["target"], str(c["got"]), "[green]yes[/green]" if c["pass"] else "[red]NO[/red]")
    console.print(ct)
    if figures.get("tl_names_unmatched"):
        console.print(f"TransformerLens cache names with no mechscope counterpart: {len(uncovered)} hold tensors "
                      f"mechscope's capture does not; {len(aliases) - len(uncovered)} are other names for "
                      "tensors it does capture.")
        console.print("  no counterpart: " + ", ".join(_compress(uncovered)))
        same = sorted({_generic(n) + " = " + _generic(a) for n, a in aliases.items() if a is not None})
        console.print("  aliases: " + ", ".join(same))
    for k, v in agreement.items():
        console.print(f"agreement {k}: max |diff| = {v:.3g}")
    for n in notes:
        console.print(f"note: {n}")
    figures["elapsed_s"] = round(time.time() - t_start, 1)
    # other processes on the same cores make every timing noisy: record how busy they kept it
    if busy_other is not None:
        figures["other_processes_cpu_share_during_timing"] = round(busy_other, 3)
    figures["versions"] = {"transformers": transformers.__version__, **versions}
    report = {
        "name": "core_overhead",
        "kind": "benchmark",
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": None},
        "figures": figures,
        "checks": checks,
        "pass": bool(checks) and all(c["pass"] for c in checks.values()),
    }
    sys.stderr.flush()
    sys.stdout.flush()
    print(json.dumps(report), flush=True)
    return 0


def time_ratio_check(checks, name, med, num, den, target, limit, why_missing):
    if num in med and den in med:
        got = round(med[num] / med[den], 4)
        ok = got <= limit if limit is not None else got < 1.0
        checks[name] = {"target": target, "got": got, "pass": ok}
    else:
        checks[name] = {"target": target, "got": why_missing(num, den), "pass": False}


def _generic(name: str) -> str:
    """blocks.7.attn.hook_q -> blocks.L.attn.hook_q (for a short printout)."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        parts[1] = "L"
    return ".".join(parts)


def _compress(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        g = _generic(n)
        if g not in out:
            out.append(g)
    return out


if __name__ == "__main__":
    sys.exit(main())
