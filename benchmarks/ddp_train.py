#!/usr/bin/env python
"""ddp_train: does data-parallel dictionary training under torchrun scale with processes?

A store of 16,384 rows of width 512 (resid_post.1 of a randomly initialised 2-layer GPT-2 of
width 512 built from its config, over seeded random token ids, in 8 shards); a TopK dictionary
512 -> 2048 latents, k 32, global batch 1024, trained two ways on the same store with the same
global batch and number of rows, beside each other:

    1 x 1   torchrun --standalone --nproc-per-node 1 -m mechscope.dictionaries.train --threads 1
    2 x 1   torchrun --standalone --nproc-per-node 2 -m mechscope.dictionaries.train --threads 1
            (gloo: each rank trains on its half of every batch, gradients averaged every step)

Each repeat runs both, in alternating order. Tokens per second are rank 0's: rows trained / the
seconds of its training loop (train.json), which include every collective operation but not the
start of the processes or the reading of the first shards. Reported: median tokens/s of each,
their ratio, the largest difference between the two dictionaries' weights relative to the
largest weight (both see the same rows in the same global batches, but not in the same order,
so this is a plausibility figure, not an equality check: the tests check equality), the load
average and the share of the CPUs other processes used.

Target: 2 x 1 >= 1.7 x the tokens/s of 1 x 1.
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

TARGET = 1.7
BATCH = 1024


def _store(path: Path) -> None:
    import transformers as tf

    import mechscope as ms
    import mechscope.dictionaries as dl

    torch.manual_seed(0)
    hf = tf.GPT2LMHeadModel._from_config(tf.GPT2Config(n_layer=2, n_embd=512, n_head=8, vocab_size=1000,
                                                       n_positions=128), attn_implementation="eager").eval()
    tokens = torch.randint(0, 1000, (128, 128), generator=torch.Generator().manual_seed(0))
    dl.harvest(ms.wrap(hf), tokens, path, dl.HarvestConfig(sites=("resid_post.1",), seqs_per_shard=16), progress=False)


def _train(store: Path, out: Path, n: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "mechscope.dictionaries.train", "--store", str(store), "--out", str(out), "--d-sae", "2048",
           "-k", "32", "--tokens", str(steps * BATCH), "--batch", str(BATCH), "--buffer-rows", "4096",
           "--threads", "1", "--checkpoint-every", str(10 * steps)]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"torchrun with {n} process(es) failed:\n{p.stderr[-3000:]}")
    return json.loads((out / "train.json").read_text())


def run(args: argparse.Namespace) -> dict:
    from mechscope.dictionaries.files import read_tensors

    work = Path(tempfile.mkdtemp(prefix="ddp-train-"))
    one, two, diffs = [], [], []
    try:
        _store(work / "store")
        snap = cpu_snapshot()
        for r in range(args.repeats):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                rep = _train(work / "store", work / f"d{n}-{r}", n, args.steps)
                (one if n == 1 else two).append(rep["tokens"] / rep["seconds"])
                progress(f"ddp_train: repeat {r + 1}/{args.repeats}, {n} process(es): "
                         f"{(one if n == 1 else two)[-1]:,.0f} tokens/s")
            a, _ = read_tensors(work / f"d1-{r}" / "sae_weights.safetensors")
            b, _ = read_tensors(work / f"d2-{r}" / "sae_weights.safetensors")
            diffs.append(float((a["W_dec"] - b["W_dec"]).abs().max() / a["W_dec"].abs().max()))
        others = other_cpu_share(snap)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fig = {"steps": args.steps, "batch": BATCH, "repeats": args.repeats,
           "one_process_tokens_per_s": statistics.median(one), "two_processes_tokens_per_s": statistics.median(two),
           "speedup": statistics.median(two) / statistics.median(one), "one_all": one, "two_all": two,
           "w_dec_relative_difference": max(diffs), "other_processes_cpu_share": others}
    checks = {"speedup": {"target": f">= {TARGET}x one process (torchrun 2 x 1 thread vs 1 x 1)",
                          "got": fig["speedup"], "pass": fig["speedup"] >= TARGET}}
    return result_line("ddp_train", fig, checks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps of the global batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="30 steps, 1 repeat (a smoke test)")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.repeats = 30, 1
    print(json.dumps(run(a)))


if __name__ == "__main__":
    main()
