#!/usr/bin/env python
"""llc_kernels: the dynamics' LLC of zoo:induction checkpoints with explicit and with fused attention.

`mechscope dynamics` estimates the LLC of every checkpoint (the whole model with 4 chains and each
component of `landscape.components` with 2, 200 draws, minibatches of 8 held-out sequences: its
`DEFAULT_LLC`) with the zoo transformer's attention run as one fused kernel (`model.fused()`:
`F.scaled_dot_product_attention` where no hook reads the scores or the pattern). This measures what
that buys against the explicit scores, mask, softmax and weighted sum, in one process on the same
checkpoints, seeds and minibatches: `measures._llc_values` both ways per checkpoint, in rounds whose
order alternates, timed in CPU seconds of this process, 1 thread.

Figures per checkpoint and overall: CPU seconds of one checkpoint's estimates each way (median over
rounds), the paired ratio explicit / fused (median of every checkpoint's rounds), and the largest
difference between the two ways' values (whole model and components), over max(|value|, 1): relative
for values above 1, absolute below (a component's LLC can be 0.03, where 1e-5 is 3e-4 of it).

Checks: `fused_faster` (the median paired ratio > 1) and `same_values` (every value within 1e-4 of the
explicit one on that scale: the same function, to float rounding).

Usage:  python benchmarks/llc_kernels.py [--steps 314,900,1800,3000] [--rounds N] [--quick]
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _machine import cpu_snapshot, main, other_cpu_share, progress, result_line  # noqa: E402


def one_checkpoint(model, data, settings, fused: bool) -> tuple[float, dict[str, float]]:
    """CPU seconds of `_llc_values` on `model`, and its values by component, with or without fused attention."""
    from mechscope.dynamics.measures import _llc_values

    if not fused:
        model.fused = nullcontext  # what an adapter without fused kernels gives
    try:
        t0 = time.process_time()
        values, _, _ = _llc_values(model, data, settings)
        return time.process_time() - t0, dict(values)
    finally:
        model.__dict__.pop("fused", None)


def run(a) -> dict:
    from mechscope.dynamics.data import from_zoo_run
    from mechscope.dynamics.measures import DEFAULT_LLC, LLCSettings
    from mechscope.dynamics.series import CheckpointSeries

    torch.set_num_threads(1)
    steps = [int(s) for s in a.steps.split(",")]
    settings = DEFAULT_LLC if a.draws is None else LLCSettings(
        model={**DEFAULT_LLC.model, "draws": a.draws}, components={**DEFAULT_LLC.components, "draws": a.draws})
    series = CheckpointSeries.from_zoo("induction")
    missing = [s for s in steps if s not in series.steps]
    if missing:
        raise SystemExit(f"llc_kernels: no checkpoint at step(s) {missing} of zoo:induction")
    data = from_zoo_run(series.zoo_run)
    start = cpu_snapshot()
    figures: dict = {"rounds": a.rounds, "settings": settings.to_json(), "checkpoints": {}}
    ratios: list[float] = []
    worst = 0.0
    for step in steps:
        model = series.load(series.steps.index(step))
        times: dict[bool, list[float]] = {False: [], True: []}
        values: dict[bool, dict[str, float]] = {}
        for r in range(a.rounds):
            for fused in ((False, True) if r % 2 == 0 else (True, False)):
                seconds, values[fused] = one_checkpoint(model, data, settings, fused)
                times[fused].append(seconds)
            ratios.append(times[False][-1] / times[True][-1])
        rel = max(abs(values[True][k] - v) / max(abs(v), 1.0) for k, v in values[False].items())
        worst = max(worst, rel)
        figures["checkpoints"][str(step)] = {
            "explicit_cpu_s": median(times[False]), "fused_cpu_s": median(times[True]),
            "ratio_explicit_over_fused": median(a / b for a, b in zip(times[False], times[True])),
            "max_value_diff": rel, "llc_model": values[True]["model"]}
        f = figures["checkpoints"][str(step)]
        progress(f"llc_kernels: step {step}: explicit {f['explicit_cpu_s']:.1f} s, fused {f['fused_cpu_s']:.1f} s "
                 f"of CPU (ratio {f['ratio_explicit_over_fused']:.2f}); values differ by {rel:.1e}")
    figures.update(ratio_explicit_over_fused=median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                   max_value_diff=worst, other_cpu_share=other_cpu_share(start))
    checks = {"fused_faster": {"target": "> 1 (explicit / fused CPU time of a checkpoint's LLC, median of rounds)",
                               "got": figures["ratio_explicit_over_fused"],
                               "pass": figures["ratio_explicit_over_fused"] > 1},
              "same_values": {"target": "<= 1e-4 (largest |fused - explicit| / max(|explicit|, 1) of an LLC value)",
                              "got": worst, "pass": worst <= 1e-4}}
    return result_line("llc_kernels", figures, checks, threads=1)


if __name__ == "__main__":
    main(run, __doc__, {"--steps": {"default": "314,900,1800,3000",
                                    "help": "zoo:induction checkpoints (default 314,900,1800,3000)"},
                        "--rounds": {"type": int, "default": 2, "help": "rounds per checkpoint (default 2)"},
                        "--draws": {"type": int, "default": None, "help": "draws per chain (default: DEFAULT_LLC's)"}},
         quick={"steps": "900", "rounds": 1, "draws": 20}, quick_help="one checkpoint, 1 round of 20 draws")
