#!/usr/bin/env python
"""harvest_ray: does harvesting an activation store on Ray scale with workers?

SmolLM2-135M's resid_post.6 over the same token ids (seeded random ids of its vocabulary,
sequences of 128), stored in shards of 8 sequences, two ways beside each other:

    one process   mechscope.dictionaries.harvest in this process, 1 torch thread
    Ray           mechscope.dictionaries.ray_harvest with 2 actors x 1 thread on a local Ray
                  instance with 2 CPUs (started once, before timing: a cluster outlives its jobs)

Each repeat harvests into a fresh directory, the two ways in alternating order (drift in machine
load hits both). The Ray time includes everything a job pays: the actors start and load the model,
the dataset is built, the shards are written and listed in the manifest. Reported: median tokens
per second of each (stored rows / wall seconds), their ratio, the largest difference between the
two stores' tensors (they must be the same store), the load average and the share of the CPUs
other processes used during the run.

Target: Ray with 2 workers >= 1.7 x the one-process tokens/s, with stores equal to 1e-6.
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
    one, two, diffs = [], [], []
    work = Path(tempfile.mkdtemp(prefix="harvest-ray-"))
    try:
        for r in range(args.repeats):
            order = ("one", "ray") if r % 2 == 0 else ("ray", "one")
            for way in order:
                out = work / f"{way}-{r}"
                t0 = time.perf_counter()
                if way == "one":
                    dl.harvest(model, tokens, out, cfg, progress=False)
                    one.append(rows / (time.perf_counter() - t0))
                else:
                    ray_harvest(loader, tokens, out, cfg, workers=2, threads=1, progress=False)
                    two.append(rows / (time.perf_counter() - t0))
                progress(f"harvest_ray: repeat {r + 1}/{args.repeats} {way}: "
                         f"{(one if way == 'one' else two)[-1]:,.0f} tokens/s")
            diffs.append(_max_diff(work / f"one-{r}", work / f"ray-{r}"))
            for way in ("one", "ray"):
                shutil.rmtree(work / f"{way}-{r}")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    others = other_cpu_share(snap)
    fig = {"tokens": rows, "repeats": args.repeats, "one_process_tokens_per_s": statistics.median(one),
           "ray_2x1_tokens_per_s": statistics.median(two), "speedup": statistics.median(two) / statistics.median(one),
           "one_process_all": one, "ray_all": two, "max_store_difference": max(diffs),
           "other_processes_cpu_share": others}
    checks = {"speedup": {"target": f">= {TARGET}x one process (2 Ray workers x 1 thread vs 1 x 1)",
                          "got": fig["speedup"], "pass": fig["speedup"] >= TARGET},
              "same_store": {"target": "<= 1e-6", "got": fig["max_store_difference"],
                             "pass": fig["max_store_difference"] <= 1e-6}}
    return result_line("harvest_ray", fig, checks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=int, default=256, help="sequences of 128 tokens per harvest")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="64 sequences, 1 repeat (a smoke test)")
    a = ap.parse_args()
    if a.quick:
        a.sequences, a.repeats = 64, 1
    print(json.dumps(run(a)))


if __name__ == "__main__":
    main()
