"""Harvesting an activation store on Ray Data: the same store, written by a pool of model-holding actors.

Steps of `ray_harvest`:
1. on the driver: load the model once, take the store's lock and plan the harvest exactly as the
   one-process `harvest` does (identity hash, resume: listed shards kept, written-but-unlisted
   shards adopted, the rest to do);
2. a Ray Dataset of token batches, one row per missing shard (its index, first sequence and token ids);
3. `map_batches` over a pool of `workers` actors; each loads the model itself (`load_model`),
   refuses to run if its weights differ from the driver's (fingerprint), and for each shard
   computes the rows and writes the shard file atomically into the store directory, returning its
   manifest entry;
4. the driver lists each shard in the manifest as its entry arrives (the manifest is kept in shard
   order), then marks it complete; with `timing`, it reports the start-up time apart from the
   pool's steady rate (each entry carries its worker and the times its shard began and ended).
Shards are the one-process harvest's (same sequences, batches and file format), so the stores are
equal; a job killed at any point resumes like a killed one-process harvest. The store directory must
be readable and writable at the same path by the driver and every worker (a shared file system on
a cluster).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.cluster import ray_session
from ..core.progress import progress_bar
from .store import ActivationStore, HarvestConfig, harvest_lock, model_fingerprint, plan_harvest, shard_tensors, \
    write_shard


class _ShardWriter:
    """A Ray actor holding one copy of the model: token batches in, shard files and manifest entries out."""

    def __init__(self, load_model: Callable[..., Any], fingerprint: str, config: HarvestConfig, config_hash: str,
                 out: str, threads: int, device: str | None):
        torch.set_num_threads(threads)
        self.model = load_model() if device is None else load_model(device=device)
        got = model_fingerprint(self.model.module)
        if got != fingerprint:
            raise RuntimeError(f"this worker loaded a model with weights {got}, the driver's are {fingerprint}: "
                               "every node must load the same model files")
        from ..core.run import resolve

        self.sites = [resolve(self.model, s) for s in config.sites]
        self.config, self.config_hash, self.out = config, config_hash, Path(out)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = {"shard": [], "entry": []}
        for i, lo, ids in zip(batch["shard"], batch["lo"], batch["tokens"]):
            began, cpu = time.time(), time.process_time()
            data = shard_tensors(self.model, torch.as_tensor(ids, dtype=torch.long), int(lo), self.sites, self.config)
            entry, widths = write_shard(self.out, int(i), data, self.config_hash)
            rows["shard"].append(int(i))  # the worker, and when (its clock) the shard began and ended
            rows["entry"].append(json.dumps({"entry": entry, "widths": widths, "worker": self.worker,
                                             "began": began, "ended": time.time(),
                                             "cpu": time.process_time() - cpu}))
        return rows


def _pool_rate(spans: dict[str, list[tuple[float, float, int]]]) -> float:
    """Rows per second of the pool while working: all rows over the time from the first shard's start
    to the last shard's end, whichever workers wrote them (a worker that started late, or sat idle,
    counts against the rate). The workers' clocks must agree: one machine's, or a cluster's
    synchronised clocks (a long harvest makes their offsets negligible)."""
    shards = [s for v in spans.values() for s in v]
    if not shards:
        return 0.0
    took = max(e for _, e, _ in shards) - min(b for b, _, _ in shards)
    return sum(r for _, _, r in shards) / took if took > 0 else 0.0


def ray_harvest(load_model: Callable[..., Any], tokens: Tensor, out: str | Path, config: HarvestConfig, *,
                workers: int = 2, threads: int = 1, address: str | None = None, device: str | None = None,
                progress: bool = True, model: Any = None, timing: dict[str, float] | None = None
                ) -> ActivationStore:
    """Harvest like `harvest`, with `workers` Ray actors of `threads` threads each.

    `load_model()` (or `load_model(device=...)` when `device` is given) returns the wrapped model;
    it runs in every actor, and on the driver unless the driver's copy is given as `model`, so it
    must be picklable (a module-level function or a functools.partial of one) and load the same
    weights everywhere. `address` joins a running Ray cluster (host:port); without it a local Ray
    with `workers * threads` CPUs is started (or the one already initialised in this process is used).

    A dict passed as `timing` is filled with where the time went: `seconds` (the whole call),
    `first_shard_seconds` (until the first shard was listed: planning, starting the actors, each
    loading and fingerprinting the model, the first shard), `pool_rows_per_second` (the workers'
    rate while working, see `_pool_rate`), `rows`, `workers` and `worker_cpu_seconds` (the CPU time
    the workers spent on the shards, all their threads). A long harvest runs at the pool's rate; the
    start is paid once.
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be positive, got {workers} and {threads}")
    t0 = time.perf_counter()
    out = Path(out)
    model = load_model() if model is None else model
    spans: dict[str, list[tuple[float, float, int]]] = {}
    first, cpu = float("nan"), 0.0
    with harvest_lock(out):
        plan = plan_harvest(model, tokens, out, config)
        fingerprint = plan.manifest["model_fingerprint"]
        del model
        todo = plan.todo
        bar = progress_bar(total=plan.n_shards, initial=plan.n_shards - len(todo), desc=f"harvest {out.name} (ray)",
                           unit="shard", disable=not progress)
        if todo:
            with ray_session(address, num_cpus=workers * threads) as ray:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = False  # this harvest's own progress bar counts the shards
                ctx.enable_operator_progress_bars = False
                logging.getLogger("ray.data").setLevel(logging.WARNING)
                items = []
                for i in todo:
                    lo, hi = plan.bounds(i)
                    items.append({"shard": i, "lo": lo, "tokens": tokens[lo:hi].to(torch.int64).numpy()})
                ds = ray.data.from_items(items, override_num_blocks=len(items))
                done = ds.map_batches(
                    _ShardWriter, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                    num_cpus=threads,
                    fn_constructor_kwargs=dict(load_model=load_model, fingerprint=fingerprint, config=plan.config,
                                               config_hash=plan.config_hash, out=str(out.resolve()),
                                               threads=threads, device=device))
                for row in done.iter_rows():
                    got = json.loads(row["entry"])
                    plan.record(int(row["shard"]), got["entry"], got["widths"])
                    spans.setdefault(got["worker"], []).append((got["began"], got["ended"], got["entry"]["rows"]))
                    cpu += got["cpu"]
                    if not first == first:  # still NaN: this is the first shard
                        first = time.perf_counter() - t0
                    bar.update(1)
        bar.close()
        plan.finish()
    if timing is not None:
        timing.update(seconds=time.perf_counter() - t0, first_shard_seconds=first, pool_rows_per_second=_pool_rate(spans),
                      rows=sum(r for v in spans.values() for _, _, r in v), workers=len(spans), worker_cpu_seconds=cpu)
    return ActivationStore(out)
