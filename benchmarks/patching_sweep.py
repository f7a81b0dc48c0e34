#!/usr/bin/env python
"""patching_sweep: mechscope's batched activation patching against TransformerLens's patching helpers.

Same run, same inputs, fp32, eager attention, use_cache=False, 2 CPU threads, seeded random
weights (no download), torch.no_grad() for both (TransformerLens's hooks otherwise clone every
activation). Each framework gets its own deep copy of a model (the bridge replaces the model's
submodules). Direction: denoising (the corrupted prompt runs, clean activations are written in).

With a metric that declares it reads only the last position and a few token ids
(`Metric(last_position_only=True, logit_columns=...)`), mechscope takes shortcuts that
TransformerLens does not: a patched run starts at the patched layer (the blocks before it are the
target run's), positions where the two prompts agree are read from the target run's keys and
values, and only the last position's logits of the metric's columns are computed.
TransformerLens runs the whole model and unembeds every position for every patch. Cases (a), (b)
and (e) measure that path, labelled "shortcuts"; case (d) measures the general path.

    (a) shortcuts, GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257), one pair of
        20 tokens (two tokens differ), every head, all positions: TransformerLens 4.x
        `patching.get_act_patch_attn_head_out_all_pos` on a TransformerBridge over the same Hugging
        Face model, vs mechscope `activation_patching(..., [Site(Kind.Z, l)], each_position=False)`.
        Metric: logit[1000] - logit[2000] at the last position, declared.
    (d) general path, the model and prompts of (a): a metric over every position and the whole
        vocabulary (the mean log-probability of each next token of the corrupted prompt), a plain
        function that declares nothing. mechscope still starts each patched run at the patched
        layer (valid for any metric); everything else is computed in full.
    (b) shortcuts, 2 layers, d_model 256, 8 heads: every head x every position;
        `get_act_patch_attn_head_out_by_pos` (layer, pos, head) vs mechscope `each_position=True`.
    (c) attribution patching on (b): the passes it ran (counted as they run), and the Spearman
        rank correlation of its estimates with (b)'s exact values.
    (e) shortcuts, many prompts: 64 IOI prompts from 5 templates ("When A and B went to the
        store, B gave a drink to", ...; names, places, objects drawn with a seed; the corrupted
        prompt names A in place of the second B), tokenised by SmolLM2-135M's tokenizer, on a
        Llama model of SmolLM2-135M's shape cut to 2 layers (d_model 576, 9 heads, 3 key/value
        heads, vocab 49152) with random weights; every head, all positions. Metric: logit(IO) -
        logit(S) at the last position per prompt, declared (TransformerLens: the mean over prompts).

Agreement: TransformerLens's values against mechscope's (prompt-averaged), max |difference|.
Timing: after one warm-up forward per framework and model, rounds; round r runs TransformerLens,
mechscope and (for (a), (b)) the bare forward of the batch mechscope runs, in an order that
rotates from round to round. Speed-up = median over rounds of TransformerLens's time over
mechscope's time in the same round. The first timed round also gives the values compared.
The CPU time of each call is recorded too (figures `*_cpu_s`, `*_speedup_cpu_time`): on a
machine shared with other work, mechscope's many small operations lose more wall-clock time to
contended cores than TransformerLens's large ones, and the CPU-time ratio shows by how much.

The last line printed is the result line (benchmarks/README.md).
Usage:  python benchmarks/patching_sweep.py [--quick] [--rounds N] [--only a,d,b,e] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import json
import os
import pstats
import re
import statistics
import string
import sys
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
os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's sweep draws a tqdm bar per call

REPO = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
from _machine import cpu_snapshot, machine, other_cpu_share, progress  # noqa: E402  (benchmarks/_machine.py)
import transformers  # noqa: E402

THREADS = 2
SEQ = 20
GPT2_VOCAB = 50257
TOK_A, TOK_B = 1000, 2000  # (a), (b): logit[A] - logit[B] at the last position
CORRUPT_POS = (4, 11)  # (a), (b), (d): the corrupted prompt differs from the clean one here
IOI_PROMPTS = 64
IOI_TEMPLATES = ("When{first} and{second} went to the {place},{s2} gave a {obj} to",  # 14 tokens each
                 "After{first} and{second} went to the {place},{s2} gave a {obj} to",
                 "While{first} and{second} were at the {place},{s2} passed a {obj} to",
                 "When{first} and{second} arrived at the {place},{s2} brought a {obj} to",
                 "Friends{first} and{second} walked to the {place}.{s2} offered a {obj} to")
TOLERANCE = 1e-4  # max |TransformerLens - mechscope| (metric values are O(1) to O(10))


# --------------------------------------------------------------------------------------------
# models, prompts, metrics
# --------------------------------------------------------------------------------------------
def gpt2(n_layer: int, n_embd: int, n_head: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=GPT2_VOCAB,
                                  n_positions=1024)
    cfg.use_cache = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def smollm2_shape(n_layer: int, config: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = n_layer
    cfg.use_cache = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def random_pair(seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, GPT2_VOCAB, (1, SEQ), generator=g)
    corrupt = clean.clone()
    for p in CORRUPT_POS:
        corrupt[0, p] = (clean[0, p] + 1 + torch.randint(0, GPT2_VOCAB - 1, (1,), generator=g)) % GPT2_VOCAB
    assert (corrupt != clean).sum().item() == len(CORRUPT_POS)
    return clean, corrupt


def _template_pattern(template: str) -> str:
    """A regular expression matching the texts a template makes (each field any text)."""
    return "".join(re.escape(literal) + (".+?" if field is not None else "")
                   for literal, field, _, _ in string.Formatter().parse(template))


def pair_logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """(rows, pos, vocab) -> (rows,): logit[A] - logit[B] at the last position."""
    return logits[:, -1, TOK_A] - logits[:, -1, TOK_B]


def next_token_logprob(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """(rows, pos, vocab) -> (rows,): mean over positions of log p(the target prompt's next token),
    a function of every position and the whole vocabulary (declares nothing)."""
    nxt = target[0, 1:]

    def fn(logits: torch.Tensor) -> torch.Tensor:
        lp = logits[:, :-1].float().log_softmax(-1)
        return lp.gather(-1, nxt.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(-1)

    return fn


def ioi_logit_diff(io_: torch.Tensor, s_: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """logit(IO) - logit(S) at the last position, for rows that repeat the prompts in order."""
    def fn(logits: torch.Tensor) -> torch.Tensor:
        k = logits.shape[0] // io_.shape[0]
        last = logits[:, -1]
        rows = torch.arange(last.shape[0])
        return last[rows, io_.repeat(k)] - last[rows, s_.repeat(k)]

    return fn


def import_mechscope():
    try:
        import mechscope
    except ImportError:
        sys.path.insert(0, str(REPO))
        import mechscope
    return mechscope


def _dist_version(name: str) -> str:
    from importlib.metadata import version
    try:
        return version(name)
    except Exception:
        return "?"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two same-shaped tensors (flattened; ties get average ranks)."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten().double()
        order = torch.argsort(x)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        uniq, inv = torch.unique(x, return_inverse=True)
        if len(uniq) < len(x):  # average the ranks of tied values
            sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, r)
            counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
            r = (sums / counts)[inv]
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


# --------------------------------------------------------------------------------------------
# one network, wrapped by each framework on its own copy
# --------------------------------------------------------------------------------------------
class Wrapped:
    def __init__(self, name: str, base: torch.nn.Module, hf_class: str):
        self.name, self.base = name, base
        self.errors: dict[str, str] = {}
        self.n_layer = base.config.num_hidden_layers
        self.n_head = base.config.num_attention_heads
        try:
            ms = import_mechscope()
            self.adapter = ms.wrap(copy.deepcopy(base))
        except Exception as e:
            self.errors["mechscope"] = f"{type(e).__name__}: {e}"[:300]
            traceback.print_exc(file=sys.stderr)
        try:
            import transformer_lens
            from transformer_lens.model_bridge.sources import build_bridge_from_module
            self.tl_version = getattr(transformer_lens, "__version__", None) or _dist_version("transformer-lens")
            model = copy.deepcopy(base)
            self.bridge = build_bridge_from_module(model, hf_class, hf_config=model.config, model_name=f"random-{name}")
            self.bridge.eval()
        except Exception as e:  # an anchor that fails to import or wrap is reported, not fatal
            self.errors["tl"] = f"{type(e).__name__}: {e}"[:300]
            traceback.print_exc(file=sys.stderr)

    def warm_up(self, x: torch.Tensor) -> None:
        ms = import_mechscope()
        with torch.no_grad():
            self.base(x)
            if hasattr(self, "adapter"):
                ms.run(self.adapter, x)
            if hasattr(self, "bridge"):
                self.bridge.run_with_cache(x)


# --------------------------------------------------------------------------------------------
# one case: the calls compared, their values, timing
# --------------------------------------------------------------------------------------------
class Case:
    def __init__(self, key: str, label: str, net: Wrapped, clean: torch.Tensor, corrupt: torch.Tensor,
                 ms_metric: Any, tl_metric: Callable[[torch.Tensor], torch.Tensor], each_position: bool,
                 tl_fn: str, bare: bool):
        self.key, self.label, self.net = key, label, net
        self.clean, self.corrupt = clean, corrupt
        self.each_position = each_position
        self.errors = dict(net.errors)
        self.calls: dict[str, Callable[[], Any]] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.cpu: dict[str, list[float]] = {}  # CPU seconds of this process per call (all its threads)
        self.n_patches = net.n_layer * net.n_head * (clean.shape[1] if each_position else 1)
        if hasattr(net, "adapter"):
            from mechscope.causal.activation_patching import activation_patching
            ms = import_mechscope()
            sites = [ms.Site(ms.Kind.Z, layer) for layer in range(net.n_layer)]
            self.calls["mechscope"] = lambda: activation_patching(
                net.adapter, clean, corrupt, sites, ms_metric, direction="denoising", each_head=True,
                each_position=each_position, progress=False)
        if hasattr(net, "bridge"):
            import transformer_lens.patching as tlp
            fn = getattr(tlp, tl_fn)

            def tl_sweep():
                # the clean cache is part of the sweep's cost (mechscope's sweep runs the clean prompt too)
                _, clean_cache = net.bridge.run_with_cache(clean)
                return fn(net.bridge, corrupt, clean_cache, tl_metric)

            self.calls["tl"] = tl_sweep
        if bare:  # context: one plain forward of the rows mechscope runs (every patch a row), 256 at a time
            rows = self.n_patches * clean.shape[0]
            batch = corrupt.repeat(min(rows, 256) // corrupt.shape[0] + 1, 1)[:min(rows, 256)]

            def fwd():
                out = None
                for start in range(0, rows, 256):
                    out = net.base(batch[:min(256, rows - start)]).logits[:, -1]
                return out

            self.calls["bare_batched"] = fwd

    def keep_values(self, name: str, res: Any) -> None:
        if name == "tl":
            self.values["tl"] = res.detach().float()
        elif name == "mechscope":
            self.ms_result = res
            vals = res.values.mean(-1)  # (site = layer, head, pos), averaged over prompts
            self.values["mechscope"] = vals.permute(0, 2, 1) if self.each_position else vals[:, :, 0]

    def time(self, rounds: int) -> tuple[dict[str, list[float]], float | None]:
        order = [n for n in ("tl", "mechscope", "bare_batched") if n in self.calls]
        times: dict[str, list[float]] = {n: [] for n in order}
        busy0 = cpu_snapshot()
        for r in range(rounds):
            rot = order[r % len(order):] + order[:r % len(order)]
            for n in rot:
                if n not in self.calls:
                    continue
                gc.collect()
                try:
                    with torch.no_grad():
                        t0, c0 = time.perf_counter(), time.process_time()
                        res = self.calls[n]()
                        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                except Exception as e:
                    self.errors[n] = f"{type(e).__name__}: {e}"[:300]
                    traceback.print_exc(file=sys.stderr)
                    del self.calls[n]
                    continue
                if r == 0:
                    self.keep_values(n, res)
                del res
                times[n].append(dt)
                self.cpu.setdefault(n, []).append(cpu)
            progress(f"patching_sweep ({self.key}): round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {times[n][-1]:.2f} s" for n in order if len(times[n]) == r + 1))
        return times, other_cpu_share(busy0)


def profile_mechscope(case: Case, top: int = 14) -> str:
    pr = cProfile.Profile()
    with torch.no_grad():
        pr.enable()
        case.calls["mechscope"]()
        pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def why(case: Case, what: str) -> str:
    return "not run: " + ("; ".join(f"{k}: {v}" for k, v in case.errors.items()) or what)


def report_case(case: Case, times: dict[str, list[float]], share: float | None, figures: dict[str, Any],
                checks: dict[str, dict[str, Any]], speed_name: str, limit: float) -> None:
    k = case.key
    figures[f"{k}_case"] = case.label
    figures[f"{k}_patches"] = case.n_patches
    figures[f"{k}_prompts"] = int(case.clean.shape[0])
    figures[f"{k}_tokens"] = int(case.clean.shape[1])
    for n, ts in times.items():
        if ts:
            figures[f"{k}_{n}_s"] = round(statistics.median(ts), 3)
            figures[f"{k}_{n}_s_min"] = round(min(ts), 3)
            figures[f"{k}_{n}_s_max"] = round(max(ts), 3)
    if share is not None:
        figures[f"{k}_other_processes_cpu_share_during_timing"] = round(share, 3)
    # CPU seconds per call, and their ratio: on a loaded machine the wall-clock ratio also measures
    # how each side copes with contended cores (many small operations suffer more than a few large)
    for n, ts in case.cpu.items():
        figures[f"{k}_{n}_cpu_s"] = round(statistics.median(ts), 3)
    if case.cpu.get("tl") and case.cpu.get("mechscope"):
        pairs = list(zip(case.cpu["tl"], case.cpu["mechscope"]))
        figures[f"{k}_speedup_cpu_time"] = round(statistics.median(a / b for a, b in pairs), 2)
    if hasattr(case, "ms_result"):
        r = case.ms_result
        figures[f"{k}_mechscope_forward_passes"] = r.forward_passes
        figures[f"{k}_mechscope_blocks_skipped"] = r.how.get("blocks_skipped")
        figures[f"{k}_mechscope_shared_prefix"] = r.how.get("shared_prefix")
        figures[f"{k}_mechscope_last_position_split_chunks"] = r.how.get("last_position_split")
    target = f">= {limit:g} (median over rounds of TransformerLens's time / mechscope's in the same round)"
    tl, ms_ = times.get("tl", []), times.get("mechscope", [])
    n = min(len(tl), len(ms_))
    if n:
        got = round(statistics.median(tl[i] / ms_[i] for i in range(n)), 2)
        checks[speed_name] = {"target": target, "got": got, "pass": got >= limit}
        figures[f"{k}_speedup_unpaired"] = round(statistics.median(tl) / statistics.median(ms_), 2)
        if times.get("bare_batched"):
            figures[f"{k}_mechscope_over_bare_batched"] = round(statistics.median(ms_) / statistics.median(
                times["bare_batched"]), 3)
    else:
        checks[speed_name] = {"target": target, "got": why(case, "not timed"), "pass": False}
    name = f"values_agree_{k}"
    target = f"<= {TOLERANCE:g} (max |TransformerLens - mechscope|)"
    if "tl" in case.values and "mechscope" in case.values:
        a, b = case.values["tl"], case.values["mechscope"]
        if a.shape != b.shape:
            checks[name] = {"target": target, "got": f"shape mismatch: TransformerLens {tuple(a.shape)} vs "
                            f"mechscope {tuple(b.shape)}", "pass": False}
        else:
            d = float((a - b).abs().max())
            checks[name] = {"target": target, "got": d, "pass": d <= TOLERANCE}
            figures[f"{k}_values_shape"] = list(a.shape)
            figures[f"{k}_values_range"] = [round(float(a.min()), 6), round(float(a.max()), 6)]
    else:
        checks[name] = {"target": target, "got": why(case, "values missing"), "pass": False}


def attribution(case: Case, figures: dict[str, Any], checks: dict[str, dict[str, Any]]) -> None:
    """(c): attribution patching on (b)'s model and prompts, against (b)'s exact values."""
    from mechscope.causal.attribution_patching import attribution_patching
    ms = import_mechscope()
    net = case.net
    target = "<= 3 forward + backward passes (counted as they run)"
    if not hasattr(net, "adapter"):
        checks["attribution_passes"] = {"target": target, "got": why(case, "mechscope missing"), "pass": False}
        return
    try:
        sites = [ms.Site(ms.Kind.Z, layer) for layer in range(net.n_layer)]
        t0 = time.perf_counter()
        att = attribution_patching(net.adapter, case.clean, case.corrupt, sites, pair_logit_diff,
                                   direction="denoising", each_head=True, each_position=True)
        figures["c_attribution_s"] = round(time.perf_counter() - t0, 3)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        checks["attribution_passes"] = {"target": target, "got": f"not run: {type(e).__name__}: {e}"[:300],
                                        "pass": False}
        return
    passes = att.forward_passes + att.how["backward_passes"]
    figures["c_attribution_forward_passes"] = att.forward_passes
    figures["c_attribution_backward_passes"] = att.how["backward_passes"]
    checks["attribution_passes"] = {"target": target, "got": passes, "pass": passes <= 3}
    if "mechscope" in case.values:
        est = att.values[..., 0].permute(0, 2, 1)  # (layer, pos, head)
        exact = case.values["mechscope"]
        figures["c_attribution_spearman_vs_exact"] = round(spearman(est, exact), 4)
        eff_e, eff_x = est - att.baseline[0], exact - case.ms_result.baseline[0]
        figures["c_attribution_pearson_effect_vs_exact"] = round(float(
            torch.corrcoef(torch.stack([eff_e.flatten(), eff_x.flatten()]))[0, 1]), 4)
        # positions before the first corrupted token: clean == corrupt, both must be exact
        figures["c_attribution_max_abs_diff_before_first_corruption"] = float(
            (est[:, :min(CORRUPT_POS)] - exact[:, :min(CORRUPT_POS)]).abs().max())


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
SPEED = {  # case -> (check name, target)
    "a": ("shortcuts_heads_all_pos_speedup", 8.0),
    "d": ("general_heads_all_pos_speedup", 1.5),
    "b": ("shortcuts_heads_by_pos_speedup", 20.0),
    "e": ("shortcuts_many_prompts_speedup", 8.0),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round per case (a smoke test)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 3, quick 1)")
    ap.add_argument("--only", default="a,d,b,e", help="cases to run, comma-separated (default a,d,b,e; c runs with b)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one mechscope sweep per case")
    args = ap.parse_args()
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    bad = [c for c in only if c not in SPEED]
    if bad:
        ap.error(f"unknown case(s) {bad}: choose from {sorted(SPEED)}")
    torch.set_num_threads(THREADS)
    t_start = time.time()
    ms = import_mechscope()
    figures: dict[str, Any] = {"rounds": rounds, "threads": THREADS, "grad": "torch.no_grad()",
                               "direction": "denoising", "sites": "attention head outputs (hook_z) of every layer"}
    checks: dict[str, dict[str, Any]] = {}
    versions: dict[str, str] = {"transformers": transformers.__version__, "mechscope": getattr(ms, "__version__", "?")}
    busy: list[tuple[float, float]] = []
    from rich.console import Console
    from rich.table import Table
    console = Console(width=150, highlight=False, stderr=True)
    rows_out: list[tuple] = []

    def run_case(case: Case) -> None:
        if hasattr(case.net, "tl_version"):
            versions["transformer_lens"] = case.net.tl_version
        progress(f"patching_sweep ({case.key}): {case.label}, {case.n_patches} patches")
        t0 = time.monotonic()
        times, share = case.time(rounds)
        if share is not None:
            busy.append((share, time.monotonic() - t0))
        name, limit = SPEED[case.key]
        report_case(case, times, share, figures, checks, name, limit)
        rows_out.append((case, times, checks[name], checks[f"values_agree_{case.key}"]))
        if args.profile and "mechscope" in case.calls:
            console.print(f"cProfile of one mechscope sweep, case ({case.key})")
            console.print(profile_mechscope(case))

    clean, corrupt = random_pair()
    if "a" in only or "d" in only:
        progress("patching_sweep: GPT-2-small shape (12 layers, d_model 768), wrapped by each framework")
        net = Wrapped("gpt2-small", gpt2(12, 768, 12), "GPT2LMHeadModel")
        net.warm_up(clean)
        figures["a_d_model"] = f"GPT-2 shape: 12 layers, d_model 768, 12 heads, vocab {GPT2_VOCAB}"
        if "a" in only:
            declared = ms.core.Metric("logit_diff", pair_logit_diff, last_position_only=True,
                                      logit_columns=(TOK_A, TOK_B))
            run_case(Case("a", "shortcuts: a declared last-position metric of two token ids", net, clean, corrupt,
                          declared, lambda logits: pair_logit_diff(logits).mean(), False,
                          "get_act_patch_attn_head_out_all_pos", bare=True))
        if "d" in only:
            general = next_token_logprob(corrupt)
            run_case(Case("d", "general: a metric of every position and the whole vocabulary", net, clean,
                          corrupt, general, lambda logits: general(logits).mean(), False,
                          "get_act_patch_attn_head_out_all_pos", bare=False))
        del net
        gc.collect()
    if "b" in only:
        progress("patching_sweep: 2 layers, d_model 256, wrapped by each framework")
        net = Wrapped("gpt2-2l", gpt2(2, 256, 8), "GPT2LMHeadModel")
        net.warm_up(clean)
        figures["b_model"] = f"GPT-2 shape: 2 layers, d_model 256, 8 heads, vocab {GPT2_VOCAB}"
        declared = ms.core.Metric("logit_diff", pair_logit_diff, last_position_only=True, logit_columns=(TOK_A, TOK_B))
        case = Case("b", "shortcuts: every head x every position", net, clean, corrupt, declared,
                    lambda logits: pair_logit_diff(logits).mean(), True, "get_act_patch_attn_head_out_by_pos",
                    bare=True)
        run_case(case)
        progress("patching_sweep (c): attribution patching on (b)")
        attribution(case, figures, checks)
        del net, case
        gc.collect()
    if "e" in only:
        progress(f"patching_sweep: {IOI_PROMPTS} IOI prompts on SmolLM2-135M's shape cut to 2 layers")
        try:
            real = ms.load("smollm2-135m")
            tokenizer, config = real.tokenizer, real.module.config
            del real
            from mechscope.studies.ioi import make_prompts
            data = make_prompts(tokenizer, IOI_PROMPTS, seed=0, templates=IOI_TEMPLATES)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            why_not = f"not run: SmolLM2-135M's tokenizer and config: {type(e).__name__}: {e}"[:300]
            checks[SPEED["e"][0]] = {"target": f">= {SPEED['e'][1]:g} (median over rounds of TransformerLens's "
                                     "time / mechscope's in the same round)", "got": why_not, "pass": False}
            checks["values_agree_e"] = {"target": f"<= {TOLERANCE:g} (max |TransformerLens - mechscope|)",
                                        "got": why_not, "pass": False}
        else:
            net = Wrapped("smollm2-2l", smollm2_shape(2, config), "LlamaForCausalLM")
            net.warm_up(data.clean[:2])
            figures["e_model"] = (f"Llama, SmolLM2-135M's shape cut to 2 layers: d_model {config.hidden_size}, "
                                  f"{config.num_attention_heads} heads, {config.num_key_value_heads} key/value heads, "
                                  f"vocab {config.vocab_size}, random weights")
            figures["e_templates"] = sum(any(re.fullmatch(_template_pattern(tpl), t) for t in data.texts)
                                         for tpl in IOI_TEMPLATES)
            fn = ioi_logit_diff(data.io, data.s)
            cols = tuple(sorted(set(data.io.tolist()) | set(data.s.tolist())))
            declared = ms.core.Metric("logit_diff", fn, last_position_only=True, logit_columns=cols)
            run_case(Case("e", f"shortcuts: {IOI_PROMPTS} IOI prompts, logit(IO) - logit(S)", net, data.clean,
                          data.corrupt, declared, lambda logits: fn(logits).mean(), False,
                          "get_act_patch_attn_head_out_all_pos", bare=False))
            del net
            gc.collect()

    if busy:
        total = sum(t for _, t in busy)
        share = sum(s * t for s, t in busy) / total if total else 0.0
        figures["other_processes_cpu_share_during_timing"] = round(share, 3)

    # --- report ---------------------------------------------------------------------------
    table = Table(title=f"patching_sweep: fp32, {THREADS} threads, no_grad, {rounds} rounds per case")
    for col in ("case", "patches", "TL s", "mechscope s", "bare batched fwd s", "speed-up", "target", "max |diff|"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for case, times, sp, ag in rows_out:
        def fmt(n_):
            ts = times.get(n_)
            if not ts:
                return "-" if n_ == "bare_batched" else "failed"
            return f"{statistics.median(ts):.2f} [{min(ts):.2f}-{max(ts):.2f}]"
        table.add_row(f"({case.key}) {case.label}", str(case.n_patches), fmt("tl"), fmt("mechscope"),
                      fmt("bare_batched"), str(sp["got"]) if not isinstance(sp["got"], str) else "n/a",
                      sp["target"].split(" (")[0],
                      f"{ag['got']:.2e}" if isinstance(ag["got"], float) else str(ag["got"])[:40])
    console.print(table)
    if "c_attribution_spearman_vs_exact" in figures:
        console.print(f"(c) attribution patching on (b): {figures['c_attribution_forward_passes']} forward + "
                      f"{figures['c_attribution_backward_passes']} backward passes, {figures['c_attribution_s']:.2f} s; "
                      f"Spearman vs exact {figures['c_attribution_spearman_vs_exact']:.3f}, "
                      f"Pearson of effects {figures['c_attribution_pearson_effect_vs_exact']:.3f}")
    ct = Table(title="checks")
    for col in ("check", "target", "got", "pass"):
        ct.add_column(col)
    for k, c in checks.items():
        ct.add_row(k, c["target"], str(c["got"]), "[green]yes[/green]" if c["pass"] else "[red]NO[/red]")
    console.print(ct)
    figures["versions"] = versions
    figures["elapsed_s"] = round(time.time() - t_start, 1)
    report = {"name": "patching_sweep", "kind": "benchmark", "machine": machine(THREADS), "figures": figures,
              "checks": checks, "pass": bool(checks) and all(c["pass"] for c in checks.values())}
    sys.stderr.flush()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
