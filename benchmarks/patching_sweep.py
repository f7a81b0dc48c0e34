#!/usr/bin/env python
"""patching_sweep: mechscope's batched activation patching against TransformerLens's patching helpers.

Same run, same inputs, fp32, eager attention, use_cache=False, 2 CPU threads, seeded random
weights (no download). One clean/corrupted pair of 20 tokens (the corrupted prompt is the clean one
with two tokens changed); metric = logit difference between two fixed token ids at the last
position (TransformerLens's metric returns the batch mean, a scalar; mechscope's one value per row).

    (a) GPT-2-small shape (12 layers, d_model 768, 12 heads, vocab 50257): every head, all
        positions. TransformerLens 4.x `patching.get_act_patch_attn_head_out_all_pos` on a
        TransformerBridge over the same Hugging Face model, vs mechscope
        `activation_patching(..., [Site(Kind.Z, l)], each_head=True, each_position=False)`.
        Context: one plain HF forward of the batch mechscope runs (every patch as a row).
    (b) 2 layers, d_model 256, 8 heads: every head x every position.
        `get_act_patch_attn_head_out_by_pos` (layer, pos, head) vs mechscope `each_position=True`.
    (c) attribution patching on (b): passes it costs, Spearman rank correlation with (b)'s exact values.

Both frameworks run under torch.no_grad() (TransformerLens's hook otherwise clones every activation).
Each framework gets its own deep copy of the model (the bridge replaces the model's submodules).
Timing: one untimed run of each (it also gives the values compared), then interleaved rounds:
round r runs TransformerLens (while r < its repeat count), mechscope, and the bare forward, in a
rotating order. Reported: medians, min and max, and the share of the cores other processes kept busy.

The last line printed is one JSON object (../shared/CHECKS.md).
Usage:  python benchmarks/patching_sweep.py [--quick] [--tl-repeats N] [--ms-repeats N] [--profile]
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
import statistics
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
from _machine import cpu_snapshot, other_cpu_share  # noqa: E402  (benchmarks/_machine.py)
import transformers  # noqa: E402

THREADS = 2
SEQ = 20
VOCAB = 50257
TOK_A, TOK_B = 1000, 2000  # metric: logit[A] - logit[B] at the last position
CORRUPT_POS = (4, 11)  # the corrupted prompt differs from the clean one here

CASES = {
    "a": {"n_layer": 12, "n_embd": 768, "n_head": 12, "each_position": False,
          "tl_fn": "get_act_patch_attn_head_out_all_pos"},
    "b": {"n_layer": 2, "n_embd": 256, "n_head": 8, "each_position": True,
          "tl_fn": "get_act_patch_attn_head_out_by_pos"},
}


# --------------------------------------------------------------------------------------------
# model, inputs, metric
# --------------------------------------------------------------------------------------------
def build_model(n_layer: int, n_embd: int, n_head: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=VOCAB,
                                  n_positions=1024)
    cfg.use_cache = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager",
                                                          dtype=torch.float32)
    model.eval()
    assert model.config._attn_implementation == "eager"
    return model


def make_pair(seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (1, SEQ), generator=g)
    corrupt = clean.clone()
    for p in CORRUPT_POS:
        corrupt[0, p] = (clean[0, p] + 1 + torch.randint(0, VOCAB - 1, (1,), generator=g)) % VOCAB
    assert (corrupt != clean).sum().item() == len(CORRUPT_POS)
    return clean, corrupt


def metric_rows(logits: torch.Tensor) -> torch.Tensor:
    """(rows, pos, vocab) -> (rows,): logit difference at the last position."""
    return logits[:, -1, TOK_A] - logits[:, -1, TOK_B]


def metric_scalar(logits: torch.Tensor) -> torch.Tensor:
    """TransformerLens's patching metric must return a scalar: the batch mean (one prompt here)."""
    return metric_rows(logits).mean()


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


# --------------------------------------------------------------------------------------------
# one case: build both frameworks on copies of one model, check agreement, time
# --------------------------------------------------------------------------------------------
def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two same-shaped tensors (flattened; ties get average ranks)."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.flatten().double()
        order = torch.argsort(x)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        # average the ranks of tied values
        uniq, inv = torch.unique(x, return_inverse=True)
        if len(uniq) < len(x):
            sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, r)
            counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
            r = (sums / counts)[inv]
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


class Case:
    def __init__(self, key: str, spec: dict[str, Any], clean: torch.Tensor, corrupt: torch.Tensor):
        self.key, self.spec = key, spec
        self.clean, self.corrupt = clean, corrupt
        self.errors: dict[str, str] = {}
        self.calls: dict[str, Callable[[], Any]] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.first_ms: dict[str, float] = {}
        self.info: dict[str, Any] = {}
        base = build_model(spec["n_layer"], spec["n_embd"], spec["n_head"])
        self.n_layer, self.n_head = spec["n_layer"], spec["n_head"]
        for fw, setup in (("mechscope", self._mechscope), ("tl", self._tl), ("bare", self._bare)):
            try:
                setup(copy.deepcopy(base) if fw != "bare" else base)
            except Exception as e:  # an anchor that fails to import or wrap is reported, not fatal
                self.errors[fw] = f"{type(e).__name__}: {e}"[:300]
                traceback.print_exc(file=sys.stderr)

    # mechscope -----------------------------------------------------------------------------
    def _mechscope(self, model):
        ms = import_mechscope()
        from mechscope.causal.activation_patching import activation_patching
        from mechscope.causal.attribution_patching import attribution_patching
        self.ms = ms
        adapter = ms.wrap(model)
        sites = [ms.Site(ms.Kind.Z, layer) for layer in range(self.n_layer)]
        each_pos = self.spec["each_position"]

        # the same function, declared as `metrics.logit_diff` declares itself: it reads only the last
        # position and two token ids (mechscope then unembeds only those two logits of one position)
        declared = ms.core.Metric("logit_diff", metric_rows, last_position_only=True, logit_columns=(TOK_A, TOK_B))

        def sweep():
            return activation_patching(adapter, self.clean, self.corrupt, sites, declared,
                                       direction="denoising", each_head=True, each_position=each_pos,
                                       progress=False)

        def attribution():
            return attribution_patching(adapter, self.clean, self.corrupt, sites, metric_rows,
                                        direction="denoising", each_head=True, each_position=each_pos)

        self.calls["mechscope"] = sweep
        self.ms_attribution = attribution
        # context: one plain forward of the batch mechscope runs, every patch as a row
        n_rows = self.n_layer * self.n_head * (SEQ if each_pos else 1)
        self.info["patched_rows"] = n_rows

    # TransformerLens -----------------------------------------------------------------------
    def _tl(self, model):
        import transformer_lens
        import transformer_lens.patching as tlp
        from transformer_lens.model_bridge.sources import build_bridge_from_module
        self.tl_version = getattr(transformer_lens, "__version__", None) or _dist_version("transformer-lens")
        bridge = build_bridge_from_module(model, "GPT2LMHeadModel", hf_config=model.config,
                                          model_name=f"random-gpt2-{self.key}")
        bridge.eval()
        fn = getattr(tlp, self.spec["tl_fn"])
        self.bridge = bridge

        def sweep():
            # the clean cache is part of the sweep's cost (mechscope's sweep runs the clean prompt too)
            _, clean_cache = bridge.run_with_cache(self.clean)
            return fn(bridge, self.corrupt, clean_cache, metric_scalar)

        self.calls["tl"] = sweep

    # bare HF forward of the patched batch (context, not a competitor) -----------------------
    def _bare(self, model):
        n_rows = self.n_layer * self.n_head * (SEQ if self.spec["each_position"] else 1)
        batch = self.corrupt.repeat(min(n_rows, 256), 1)
        chunks = -(-n_rows // 256)
        self.info["bare_rows"], self.info["bare_chunks"] = n_rows, chunks

        def fwd():
            out = None
            for c in range(chunks):
                rows = min(256, n_rows - c * 256)
                out = model(batch[:rows]).logits[:, -1]
            return out

        self.calls["bare_batched"] = fwd

    # --------------------------------------------------------------------------------------
    def first_runs(self) -> None:
        """One untimed-for-the-median run of each: warms up and gives the values compared."""
        for name in ("tl", "mechscope", "bare_batched"):
            if name not in self.calls:
                continue
            gc.collect()
            try:
                with torch.no_grad():
                    t0 = time.perf_counter()
                    res = self.calls[name]()
                    self.first_ms[name] = (time.perf_counter() - t0) * 1000
            except Exception as e:
                self.errors[name] = f"{type(e).__name__}: {e}"[:300]
                traceback.print_exc(file=sys.stderr)
                del self.calls[name]
                continue
            if name == "tl":
                v = res.values if hasattr(res, "values") and not isinstance(res, torch.Tensor) else res
                self.values["tl"] = v.detach().float()
            elif name == "mechscope":
                self.ms_result = res
                vals = res.values[..., 0]  # (site=layer, head, pos)
                if self.spec["each_position"]:
                    vals = vals.permute(0, 2, 1)  # -> (layer, pos, head) as TransformerLens
                else:
                    vals = vals[:, :, 0]  # -> (layer, head)
                self.values["mechscope"] = vals.detach().float()
            print(f"[{self.key}] first run {name}: {self.first_ms[name] / 1000:.2f} s", file=sys.stderr, flush=True)

    def time(self, repeats: dict[str, int]) -> tuple[dict[str, list[float]], float | None]:
        order = [n for n in ("tl", "mechscope", "bare_batched") if n in self.calls]
        times: dict[str, list[float]] = {n: [] for n in order}
        busy0 = cpu_snapshot()
        for r in range(max(repeats.get(n, 0) for n in order) if order else 0):
            rot = order[r % len(order):] + order[:r % len(order)]
            for n in rot:
                if r >= repeats.get(n, 0):
                    continue
                gc.collect()
                with torch.no_grad():
                    t0 = time.perf_counter()
                    res = self.calls[n]()
                    dt = (time.perf_counter() - t0) * 1000
                del res
                times[n].append(dt)
            print(f"[{self.key}] round {r + 1}: " + ", ".join(
                f"{n} {times[n][-1] / 1000:.2f} s" for n in order if len(times[n]) == r + 1),
                file=sys.stderr, flush=True)
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


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 TransformerLens repeat, 2 mechscope repeats")
    ap.add_argument("--tl-repeats", type=int, default=None, help="timed TransformerLens sweeps (default 3, quick 1)")
    ap.add_argument("--ms-repeats", type=int, default=None, help="timed mechscope sweeps (default 5, quick 2)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one mechscope sweep per case")
    args = ap.parse_args()
    tl_rep = args.tl_repeats if args.tl_repeats is not None else (1 if args.quick else 3)
    ms_rep = args.ms_repeats if args.ms_repeats is not None else (2 if args.quick else 5)
    repeats = {"tl": tl_rep, "mechscope": ms_rep, "bare_batched": ms_rep}

    torch.set_num_threads(THREADS)
    from rich.console import Console
    from rich.table import Table
    console = Console(width=150, highlight=False)
    t_start = time.time()

    clean, corrupt = make_pair()
    figures: dict[str, Any] = {"seq": SEQ, "prompts": 1, "corrupted_positions": list(CORRUPT_POS),
                               "metric": f"logit[{TOK_A}] - logit[{TOK_B}] at the last position",
                               "tl_repeats": tl_rep, "mechscope_repeats": ms_rep,
                               "bare_batched_repeats": ms_rep, "untimed_first_runs": 1, "grad": "torch.no_grad()"}
    checks: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    versions: dict[str, str] = {}
    rows_out: list[tuple] = []
    busy: list[float] = []
    timing_s = 0.0

    for key in ("a", "b"):
        spec = CASES[key]
        case = Case(key, spec, clean, corrupt)
        if hasattr(case, "tl_version"):
            versions["transformer_lens"] = case.tl_version
        figures[f"{key}_model"] = f"{spec['n_layer']}L d{spec['n_embd']} {spec['n_head']}h vocab {VOCAB}"
        case.first_runs()
        for n, ms_ in case.first_ms.items():
            figures[f"{key}_{n}_first_s"] = round(ms_ / 1000, 3)
        t0 = time.monotonic()
        times, share = case.time(repeats)
        if share is not None:
            busy.append(share * (time.monotonic() - t0))
        timing_s += time.monotonic() - t0
        med = {n: statistics.median(ts) for n, ts in times.items() if ts}
        for n, ts in times.items():
            if ts:
                figures[f"{key}_{n}_s"] = round(statistics.median(ts) / 1000, 3)
                figures[f"{key}_{n}_s_min"] = round(min(ts) / 1000, 3)
                figures[f"{key}_{n}_s_max"] = round(max(ts) / 1000, 3)
        if share is not None:
            figures[f"{key}_other_processes_cpu_share_during_timing"] = round(share, 3)
        if hasattr(case, "ms_result"):
            figures[f"{key}_mechscope_forward_passes"] = case.ms_result.forward_passes
        figures[f"{key}_patches"] = case.info.get("patched_rows")

        # speed
        name = "heads_all_pos_speedup" if key == "a" else "heads_by_pos_speedup"
        target = ">= 8" if key == "a" else ">= 20"
        limit = 8.0 if key == "a" else 20.0
        if "tl" in med and "mechscope" in med:
            got = round(med["tl"] / med["mechscope"], 2)
            checks[name] = {"target": target, "got": got, "pass": got >= limit}
            if "bare_batched" in med:
                figures[f"{key}_tl_over_bare_batched"] = round(med["tl"] / med["bare_batched"], 2)
                figures[f"{key}_mechscope_over_bare_batched"] = round(med["mechscope"] / med["bare_batched"], 3)
        else:
            why = "; ".join(f"{k}: {v}" for k, v in case.errors.items()) or "not timed"
            checks[name] = {"target": target, "got": f"not run: {why}", "pass": False}

        # agreement
        cname = f"results_identical_{key}"
        if "tl" in case.values and "mechscope" in case.values:
            a, b = case.values["tl"], case.values["mechscope"]
            if a.shape != b.shape:
                checks[cname] = {"target": "<= 1e-4", "got": f"shape mismatch: TL {tuple(a.shape)} vs "
                                 f"mechscope {tuple(b.shape)}", "pass": False}
            else:
                d = float((a - b).abs().max())
                checks[cname] = {"target": "<= 1e-4", "got": d, "pass": d <= 1e-4}
                figures[f"{key}_values_shape"] = list(a.shape)
                figures[f"{key}_values_range"] = [round(float(a.min()), 6), round(float(a.max()), 6)]
                figures[f"{key}_values_spread_over_max_abs_diff"] = (
                    round(float(a.max() - a.min()) / d, 1) if d > 0 else None)
                r = case.ms_result
                figures[f"{key}_baseline"] = round(float(r.baseline[0]), 6)
                figures[f"{key}_reference"] = round(float(r.reference[0]), 6)
        else:
            why = "; ".join(f"{k}: {v}" for k, v in case.errors.items()) or "values missing"
            checks[cname] = {"target": "<= 1e-4", "got": f"not run: {why}", "pass": False}

        rows_out.append((key, figures[f"{key}_model"], case.info.get("patched_rows"), med, times,
                         checks[name], checks[cname]))

        # (c) attribution patching on (b)
        if key == "b":
            try:
                gc.collect()
                t0 = time.perf_counter()
                att = case.ms_attribution()
                figures["c_attribution_s"] = round(time.perf_counter() - t0, 3)
                passes = att.forward_passes + int(att.how.get("backward_passes", 0))
                figures["c_attribution_forward_passes"] = att.forward_passes
                figures["c_attribution_backward_passes"] = att.how.get("backward_passes")
                checks["attribution_passes"] = {"target": "<= 3", "got": passes, "pass": passes <= 3}
                if "mechscope" in case.values:
                    est = att.values[..., 0].permute(0, 2, 1)  # (layer, pos, head)
                    exact = case.values["mechscope"]
                    figures["c_attribution_spearman_vs_exact"] = round(spearman(est, exact), 4)
                    eff_e, eff_x = est - att.baseline[0], exact - case.ms_result.baseline[0]
                    figures["c_attribution_pearson_effect_vs_exact"] = round(float(
                        torch.corrcoef(torch.stack([eff_e.flatten(), eff_x.flatten()]))[0, 1]), 4)
                    figures["c_attribution_max_abs_diff_vs_exact"] = float((est - exact).abs().max())
                    # positions before the first corrupted token: clean == corrupt, both must be exact
                    figures["c_attribution_max_abs_diff_before_first_corruption"] = float(
                        (est[:, :min(CORRUPT_POS)] - exact[:, :min(CORRUPT_POS)]).abs().max())
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                checks["attribution_passes"] = {"target": "<= 3", "got": f"not run: {type(e).__name__}: {e}"[:300],
                                                "pass": False}

        if args.profile and "mechscope" in case.calls:
            console.print(f"[bold]cProfile of one mechscope sweep, case ({key})[/bold]")
            console.print(profile_mechscope(case))
        del case
        gc.collect()

    if timing_s > 0 and busy:
        share = sum(busy) / timing_s
        figures["other_processes_cpu_share_during_timing"] = round(share, 3)
        if share > 0.1:
            notes.append(f"other processes kept {share:.0%} of the cores busy during timing: timings are noisy")

    # --- report ---------------------------------------------------------------------------
    table = Table(title=f"patching_sweep: 1 pair x {SEQ} tokens, fp32, {THREADS} threads, no_grad; "
                        f"medians of {tl_rep} TL / {ms_rep} mechscope / {ms_rep} bare runs (after 1 untimed)")
    for col in ("case", "model", "patches", "TL s", "mechscope s", "bare batched fwd s", "speedup",
                "target", "max |diff|"):
        table.add_column(col, justify="left" if col in ("case", "model") else "right")
    for key, model_s, n, med, times, sp, ag in rows_out:
        def fmt(n_):
            if n_ not in med:
                return "failed"
            return f"{med[n_] / 1000:.2f} [{min(times[n_]) / 1000:.2f}-{max(times[n_]) / 1000:.2f}]"
        table.add_row(key, model_s, str(n), fmt("tl"), fmt("mechscope"), fmt("bare_batched"),
                      str(sp["got"]) if not isinstance(sp["got"], str) else "n/a", sp["target"],
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
    for n in notes:
        console.print(f"note: {n}")

    ms = import_mechscope()
    versions = {"transformers": transformers.__version__, "mechscope": getattr(ms, "__version__", "?"), **versions}
    figures["versions"] = versions
    figures["elapsed_s"] = round(time.time() - t_start, 1)
    report = {
        "name": "patching_sweep",
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


if __name__ == "__main__":
    sys.exit(main())
