#!/usr/bin/env python
"""harvest_ray: does harvesting an activation store on Ray scale with workers?

SmolLM2-135M's resid_post.6 over the same token ids (seeded random ids of its vocabulary,
sequences of 128), stored in shards of 8 sequences, two ways beside each other:

    one process   mechscope.dictionaries.harvest in this process, 1 torch thread
    Ray           mechscope.dictionaries.ray_harvest with 2 actors x 1 thread on a local Ray
                  instance with 2 CPUs (started once, before timing: a cluster outlives its jobs)

Both start from the model this process loaded (the one-process harvest runs on it; the Ray driver
plans with it). Each repeat harvests into a fresh directory, the two ways in alternating order
(drift in machine load hits both). The Ray job pays a start-up that a long harvest pays once: Ray
Data starts the actors, each imports mechscope and torch, loads the model and fingerprints its
weights. So two Ray figures are reported: the whole job (rows / wall seconds of the call) and the
pool's steady rate (all rows over the time from the first shard's start to the last shard's end,
`ray_harvest(timing=...)`; a worker that starts late counts against it), with the start-up cost apart
(whole seconds minus rows / steady rate) and the harvest size at which the whole job reaches the
target. Also: the ratio of CPU seconds the one-process harvest and the actors spent on the same
shards (1 when a worker does a shard's work at one process's cost; load disturbs it less than wall
time; the one-process figure includes fingerprinting the model once), the largest difference
between the two stores' tensors (they must be the same store), the load average and the share of
the CPUs other processes used during the run.

Targets: the pool's steady rate with 2 workers >= 1.7 x the one-process tokens/s (a harvest of
billions of tokens runs at that rate), with stores equal to 1e-6. The whole job's ratio at this
size (131,072 tokens by default) is reported beside it, not checked.
The last line printed is the result line (benchmarks/README.md).
Usage:  .venv/bin/python benchmarks/harvest_ray.py [--sequences N] [--repeats R] [--quick]
        (needs the `distributed` extra: pip install -e '.[distributed]')
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _machine import cpu_snapshot, other_cpu_share, progress, result_line  # noqa: E402
from _machine import main as _main  # noqa: E402

TARGET = 1.7


def _max_diff(a: Path, b: Path) -> float:
    from mechscope.dictionaries.files import read_tensors

    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    if list(ma["shards"]) != list(mb["shards"]) or ma["widths"] != mb["widths"]:
        return float("inf")
    worst = 0.0
    for entry in ma["shards"].values():
        ta, _ = read_tensors(a / entry["file"])
        tb, _ = read_tensors(b / entry["file"])
        for k in ta:
            worst = max(worst, float((ta[k].double() - tb[k].double()).abs().max()))
    return worst


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    import mechscope.dictionaries as dl
    from mechscope.models.load import load

    try:
        import ray

        from mechscope.dictionaries.ray_harvest import ray_harvest
    except ImportError as e:
        return result_line("harvest_ray", {}, {"speedup": {"target": f">= {TARGET}x", "got": f"could not run: {e}",
                                                           "pass": False}})
    loader = functools.partial(load, "smollm2-135m")
    model = loader()
    tokens = torch.randint(0, model.module.config.vocab_size, (args.sequences, 128),
                           generator=torch.Generator().manual_seed(0))
    cfg = dl.HarvestConfig(sites=("resid_post.6",), batch_size=4, seqs_per_shard=8)
    rows = args.sequences * 128
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    snap = cpu_snapshot()
    one, two, steady, start, first, diffs = [], [], [], [], [], []
    one_cpu, ray_cpu = [], []
    work = Path(tempfile.mkdtemp(prefix="harvest-ray-"))
    try:
        for r in range(args.repeats):
            order = ("one", "ray") if r % 2 == 0 else ("ray", "one")
            for way in order:
                out = work / f"{way}-{r}"
                t0, c0 = time.perf_counter(), time.process_time()
                if way == "one":
                    dl.harvest(model, tokens, out, cfg, progress=False)
                    one.append(rows / (time.perf_counter() - t0))
                    one_cpu.append(time.process_time() - c0)
                    progress(f"harvest_ray: repeat {r + 1}/{args.repeats} one process: {one[-1]:,.0f} tokens/s")
                else:
                    timing: dict = {}
                    ray_harvest(loader, tokens, out, cfg, workers=2, threads=1, progress=False, model=model,
                                timing=timing)
                    two.append(rows / (time.perf_counter() - t0))
                    steady.append(timing["pool_rows_per_second"])
                    start.append(timing["seconds"] - rows / timing["pool_rows_per_second"])
                    first.append(timing["first_shard_seconds"])
                    ray_cpu.append(timing["worker_cpu_seconds"])
                    progress(f"harvest_ray: repeat {r + 1}/{args.repeats} Ray 2x1: {two[-1]:,.0f} tokens/s whole job, "
                             f"{steady[-1]:,.0f} steady, start-up {start[-1]:.1f} s "
                             f"(first shard listed after {timing['first_shard_seconds']:.1f} s)")
            diffs.append(_max_diff(work / f"one-{r}", work / f"ray-{r}"))
            for way in ("one", "ray"):
                shutil.rmtree(work / f"{way}-{r}")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    others = other_cpu_share(snap)
    r1, r2, fixed = statistics.median(one), statistics.median(steady), statistics.median(start)
    # whole-job ratio at n tokens: (n / r1) / (fixed + n / r2); it reaches TARGET from n = TARGET*fixed / (1/r1 - TARGET/r2)
    gap = 1 / r1 - TARGET / r2
    fig = {"tokens": rows, "repeats": args.repeats, "one_process_tokens_per_s": r1,
           "ray_2x1_steady_tokens_per_s": r2, "steady_speedup": r2 / r1,
           "ray_2x1_whole_job_tokens_per_s": statistics.median(two),
           "whole_job_speedup": statistics.median(two) / r1, "ray_start_up_seconds": fixed,
           "ray_first_shard_listed_seconds": statistics.median(first),
           "cpu_seconds_ratio": statistics.median(one_cpu) / statistics.median(ray_cpu),
           "tokens_for_whole_job_target": TARGET * fixed / gap if gap > 0 else None,
           "one_process_all": one, "ray_whole_job_all": two, "ray_steady_all": steady,
           "max_store_difference": max(diffs), "other_processes_cpu_share": others}
    checks = {"speedup": {"target": f">= {TARGET}x one process (steady rate of 2 Ray workers x 1 thread vs 1 x 1)",
                          "got": fig["steady_speedup"], "pass": fig["steady_speedup"] >= TARGET},
              "same_store": {"target": "<= 1e-6", "got": fig["max_store_difference"],
                             "pass": fig["max_store_difference"] <= 1e-6}}
    return result_line("harvest_ray", fig, checks)


def main() -> None:
    """Parse the options and print the result line."""
    _main(run, __doc__, {"--sequences": dict(type=int, default=1024, help="sequences of 128 tokens per harvest"),
                         "--repeats": dict(type=int, default=3)},
          quick={"sequences": 64, "repeats": 1}, quick_help="64 sequences, 1 repeat (a smoke test)")


if __name__ == "__main__":
    main()
