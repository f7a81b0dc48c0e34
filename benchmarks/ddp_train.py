#!/usr/bin/env python
"""ddp_train: does data-parallel dictionary training under torchrun scale with processes?

A store of 16,384 rows of SmolLM2-135M's resid_post.6 (width 576) over seeded random token ids, in
8 shards; a TopK dictionary 576 -> 4608 latents (8x), k 32, at the command's default global batch
of 4096 rows, trained two ways on the same global batches, beside each other:

    1 x 1   python -m mechscope.dictionaries.train --threads 1 --streams 2
            (one process replaying the two ranks' batches: rank 0's and rank 1's slices, concatenated)
    2 x 1   torchrun --standalone --nproc-per-node 2 -m mechscope.dictionaries.train --threads 1
            (gloo: each rank trains on its half of every batch; every step each rank sums its half
            of the gradients through shared memory, both ranks being on this host, updates its half
            of the parameters, the decoder by whole rows (parallel-gradient removal, Adam with the
            moments of that half only, decoder norms), and after a barrier reads the other half
            from the one shared copy of the parameters)

Each repeat runs both, in alternating order. Tokens per second are rank 0's: rows trained / the
seconds of its training loop (train.json), which include every collective operation but not the
start of the processes or the reading of the first shards. Reported: median tokens/s of each,
their ratio, the share of rank 0's loop spent in (or waiting for) exchanges, the ratio of the
loop's CPU seconds (one process / rank 0; the speedup two cores would give if nothing else ran
and no rank waited, a figure load disturbs less than wall time), the largest
difference between the two dictionaries' weights relative to the largest weight (the same global
batches, so the same dictionary up to the order of floating-point sums), the load average and the
share of the CPUs other processes used (all but this script and the training runs it started).

Targets: 2 x 1 >= 1.7 x the tokens/s of 1 x 1; decoder and encoder weights within 1e-4 of the
largest weight of the one-process dictionary (rounding of the gradient mean over two halves,
carried through Adam's steps).
The last line printed is the result line (benchmarks/README.md).
Usage:  .venv/bin/python benchmarks/ddp_train.py [--steps N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _machine import cpu_snapshot, other_cpu_share, progress, result_line  # noqa: E402
from _machine import main as _main  # noqa: E402

TARGET = 1.7
TOLERANCE = 1e-4
BATCH = 4096  # the command's default global batch
D_SAE = 4608  # 8 x SmolLM2-135M's width


def _store(path: Path) -> None:
    import mechscope.dictionaries as dl
    from mechscope.models.load import load

    torch.set_num_threads(1)
    model = load("smollm2-135m")
    tokens = torch.randint(0, model.module.config.vocab_size, (128, 128), generator=torch.Generator().manual_seed(0))
    dl.harvest(model, tokens, path, dl.HarvestConfig(sites=("resid_post.6",), seqs_per_shard=16), progress=False)


def _train(store: Path, out: Path, n: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launch = (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else [])
    cmd = [sys.executable, *launch, "-m", "mechscope.dictionaries.train", "--store", str(store), "--out", str(out),
           "--d-sae", str(D_SAE), "-k", "32", "--tokens", str(steps * BATCH), "--batch", str(BATCH),
           "--buffer-rows", "8192", "--threads", "1", "--checkpoint-every", str(10 * steps),
           *(["--streams", "2"] if n == 1 else [])]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"training with {n} process(es) failed:\n{p.stderr[-3000:]}")
    return json.loads((out / "train.json").read_text())


def run(args: argparse.Namespace) -> dict:
    from mechscope.dictionaries.files import read_tensors

    work = Path(tempfile.mkdtemp(prefix="ddp-train-"))
    one, two, comm, cpu, diffs = [], [], [], {1: [], 2: []}, {"W_dec": [], "W_enc": []}
    exchange = set()
    try:
        _store(work / "store")
        snap = cpu_snapshot()
        for r in range(args.repeats):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                rep = _train(work / "store", work / f"d{n}-{r}", n, args.steps)
                (one if n == 1 else two).append(rep["tokens"] / rep["seconds"])
                cpu[n].append(rep["cpu_seconds"])
                if n == 2:
                    comm.append(rep["collective_seconds"] / rep["seconds"])
                    exchange.add(rep.get("gradient_exchange"))
                progress(f"ddp_train: repeat {r + 1}/{args.repeats}, {n} process(es): "
                         f"{(one if n == 1 else two)[-1]:,.0f} tokens/s")
            a, _ = read_tensors(work / f"d1-{r}" / "sae_weights.safetensors")
            b, _ = read_tensors(work / f"d2-{r}" / "sae_weights.safetensors")
            for k in diffs:
                diffs[k].append(float((a[k] - b[k]).abs().max() / a[k].abs().max()))
        others = other_cpu_share(snap)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    worst = max(max(v) for v in diffs.values())
    fig = {"steps": args.steps, "batch": BATCH, "d_in": 576, "d_sae": D_SAE, "k": 32, "repeats": args.repeats,
           "one_process_tokens_per_s": statistics.median(one), "two_processes_tokens_per_s": statistics.median(two),
           "speedup": statistics.median(two) / statistics.median(one), "one_all": one, "two_all": two,
           "collective_share_of_rank0_loop": statistics.median(comm), "gradient_exchange": sorted(map(str, exchange)),
           "cpu_seconds_ratio": statistics.median(cpu[1]) / statistics.median(cpu[2]),
           "w_dec_relative_difference": max(diffs["W_dec"]), "w_enc_relative_difference": max(diffs["W_enc"]),
           "other_processes_cpu_share": others}
    checks = {"speedup": {"target": f">= {TARGET}x one process (torchrun 2 x 1 thread vs 1 x 1)",
                          "got": fig["speedup"], "pass": fig["speedup"] >= TARGET},
              "same_dictionary": {"target": f"W_dec, W_enc within {TOLERANCE} of the largest weight after the same "
                                            "global batches", "got": worst, "pass": worst <= TOLERANCE}}
    return result_line("ddp_train", fig, checks)


def main() -> None:
    """Parse the options and print the result line."""
    _main(run, __doc__, {"--steps": dict(type=int, default=30, help="training steps of the global batch"),
                         "--repeats": dict(type=int, default=3)},
          quick={"steps": 8, "repeats": 1}, quick_help="8 steps, 1 repeat (a smoke test)")


if __name__ == "__main__":
    main()
