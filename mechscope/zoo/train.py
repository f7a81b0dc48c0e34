"""The zoo trainer: seeded, checkpointed on a log-spaced schedule, resumable after SIGKILL.

A run directory (`$MECHSCOPE_CACHE/zoo/NAME`, default `~/.cache/mechscope/zoo/NAME`) holds

    config.json                    recipe, variant, seed, hyperparameters, schedule (schema 1)
    metrics.jsonl                  one JSON object per logged step; `step` counts updates done
    checkpoints/step_0000100.safetensors   model weights after that many updates
    state.safetensors              the resume state: weights, optimizer state ("optim.<i>.<key>"),
                                   RNG states ("rng.torch", "rng.batches") and the step
    model.safetensors, done.json   the final weights, and a record that the run finished

Steps of one training update (step s = 0, 1, ...):
1. set the learning rate of update s; compute the recipe's loss on a batch drawn from the run's
   batch generator; backward; optimizer step;
2. append a metrics row for s + 1 when it is due (train loss, plus evaluation metrics on their
   schedule), flushed before anything else is written;
3. write a weights checkpoint when s + 1 is on the schedule, and the resume state at checkpoints
   and every `state_every_s` seconds (always after the metrics row, so the state never runs ahead
   of the log).
Resuming loads the state, cuts the metrics log back to its step and drops later checkpoints; every
later update then replays exactly, so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.files import remove_partial_writes
from ..core.paths import cache_dir
from ..core.progress import progress_bar
from .files import (SCHEMA, CheckpointError, load_tensors, read_json, read_jsonl, save_tensors, write_json,
                    write_jsonl)
from .recipe import Recipe, to_device


def zoo_dir() -> Path:
    """Where zoo runs live: `cache_dir()/zoo`.

    Example::

        from mechscope.zoo import zoo_dir
        zoo_dir()                                # $MECHSCOPE_CACHE/zoo, default ~/.cache/mechscope/zoo
    """
    return cache_dir() / "zoo"


def checkpoint_schedule(steps: int, n_log: int = 40, n_linear: int = 50) -> list[int]:
    """Log-spaced steps from 1 to `steps` (dense early, where features form), plus a linear floor of
    `n_linear` evenly spaced steps so late phase changes are sampled too; always 0 and `steps`.

    Example::

        from mechscope.zoo import checkpoint_schedule
        checkpoint_schedule(3000)                # [0, 1, 2, ..., 3000]: log-spaced plus a linear floor
    """
    out = {0, steps}
    for i in range(n_log):
        out.add(int(round(math.exp(math.log(steps) * i / (n_log - 1)))))
    for i in range(1, n_linear):
        out.add(int(round(steps * i / n_linear)))
    return sorted(s for s in out if 0 <= s <= steps)


@dataclass(frozen=True)
class RunSpec:
    """What to train: a recipe variant, a seed and its hyperparameters.

    Example::

        from mechscope.zoo import spec
        s = spec("induction", quick=True, seed=1)
        s.name, s.hp
    """

    recipe: Recipe
    variant: str
    seed: int
    hp: dict[str, Any]

    @property
    def name(self) -> str:
        """The run's zoo name, `RECIPE[-VARIANT][-seedN]` (no suffix for seed 0)."""
        base = self.recipe.name + (f"-{self.variant}" if self.variant else "")
        return base if self.seed == 0 else f"{base}-seed{self.seed}"

    def config(self) -> dict[str, Any]:
        """The run's config.json: schema, recipe, variant, seed, hyperparameters and the checkpoint steps."""
        return {"schema": SCHEMA, "recipe": self.recipe.name, "variant": self.variant, "seed": self.seed,
                "hparams": self.hp,
                "checkpoints": checkpoint_schedule(self.hp["steps"], self.hp.get("checkpoints_log", 40),
                                                   self.hp.get("checkpoints_linear", 50))}


class Run:
    """A run directory: its config, metrics, checkpoints and weights.

    Example::

        from mechscope.zoo import network
        run = network("induction-quick")         # a finished Run
        run.done, run.checkpoint_steps()[:3]
        run.weights()                            # {name: tensor} of the final weights
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    state_path = property(lambda self: self.path / "state.safetensors")
    model_path = property(lambda self: self.path / "model.safetensors")
    done_path = property(lambda self: self.path / "done.json")

    def checkpoint_path(self, step: int) -> Path:
        """The weights file of the checkpoint after `step` updates."""
        return self.path / "checkpoints" / f"step_{step:07d}.safetensors"

    @property
    def done(self) -> bool:
        """Whether training finished (done.json exists)."""
        return self.done_path.is_file()

    def config(self) -> dict[str, Any]:
        """The run's config.json (see `RunSpec.config`)."""
        return read_json(self.config_path)

    def metrics(self) -> list[dict[str, Any]]:
        """The training log, one dict per logged step (metrics.jsonl)."""
        return read_jsonl(self.metrics_path)

    def checkpoint_steps(self) -> list[int]:
        """The steps of the checkpoints on disk, sorted."""
        found = []
        for p in (self.path / "checkpoints").glob("step_*.safetensors"):
            m = re.fullmatch(r"step_(\d+)\.safetensors", p.name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def weights(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """The final weights, or those of the checkpoint after `step` updates."""
        path = self.model_path if step is None else self.checkpoint_path(step)
        if step is not None and not path.is_file():
            raise CheckpointError(f"{path} does not exist; checkpoints of this run: {self.checkpoint_steps()}")
        return load_tensors(path)[0]


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            out[f"optim.{idx}.{key}"] = val if isinstance(val, torch.Tensor) else torch.tensor(val)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _save_state(run: Run, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, step: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= _optimizer_tensors(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.batches"] = gen.get_state()
    save_tensors(run.state_path, tensors, {"step": str(step), "kind": "state"})


def _restore(run: Run, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    tensors, meta = load_tensors(run.state_path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer(opt, tensors)
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.batches"])
    step = int(meta["step"])
    # Forget everything logged or checkpointed after the state: it will be replayed exactly.
    write_jsonl(run.metrics_path, [r for r in run.metrics() if r["step"] <= step])
    for s in run.checkpoint_steps():
        if s > step:
            run.checkpoint_path(s).unlink()
    return step


class _Log:
    """Appends metric rows and flushes each one to disk before anything else is written."""

    def __init__(self, path: Path):
        self.f = open(path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def run_training(spec: RunSpec, path: Path | None = None, progress: bool = True,
                 state_every_s: float = 30.0, state_every: int | None = None,
                 device: torch.device | str | None = None) -> Run:
    """Train `spec` into its run directory, resuming from its state if one is there.

    `state_every` (updates) additionally writes the resume state on a fixed step interval. `device`
    (default the CPU) holds the model, its optimiser state and the fixed data; batches are still
    drawn from CPU generators, so every device sees the same batches (files are written from CPU
    copies, and a run may resume on another device).
    """
    run = Run(path or zoo_dir() / spec.name)
    config = spec.config()
    # checked before a finished run is returned: a recipe changed since caching must not reuse it
    if run.config_path.is_file():
        old = run.config()
        if old != json.loads(json.dumps(config)):
            raise CheckpointError(f"{run.config_path} describes a different run than {spec.name} with these "
                                  "settings; delete that directory or train under another name")
        if run.done:
            return run
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.config_path, config)
    # a run killed in the middle of writing a checkpoint or its state left that write's temporary
    # file; this process owns the run now (nothing else writes into it)
    for d in (run.path, run.path / "checkpoints"):
        remove_partial_writes(d)
    hp, recipe, total = spec.hp, spec.recipe, spec.hp["steps"]
    schedule = set(config["checkpoints"])
    eval_every, log_every = hp.get("eval_every", max(1, total // 100)), hp.get("log_every", max(1, total // 1000))

    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    data = recipe.data(hp, spec.seed)
    model = recipe.build(hp)
    if device is not None:
        model, data = model.to(device), to_device(data, device)
    opt = recipe.optimizer(model, hp)
    start = _restore(run, model, opt, gen) if run.state_path.is_file() else 0

    if start == 0:
        write_jsonl(run.metrics_path, [])
    torch.set_flush_denormal(True)  # grokking slows about 4x once losses are tiny without this
    log = _Log(run.metrics_path)
    t0 = last_state = time.monotonic()
    try:
        if start == 0:
            model.eval()
            log.write({"step": 0, **recipe.evaluate(model, data, hp)})
            save_tensors(run.checkpoint_path(0), model.state_dict(), {"step": "0", "kind": "checkpoint"})
        with progress_bar(total=total, initial=start, desc=f"train {spec.name}", unit="step",
                          disable=not progress) as bar:
            shown = start
            for step in range(start, total):
                model.train()
                for group in opt.param_groups:
                    group["lr"] = recipe.lr(step, hp)
                loss = recipe.loss(model, data, hp, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done = step + 1
                row: dict[str, Any] | None = None
                if done % log_every == 0 or done in schedule or done == total:
                    row = {"step": done, "train_loss": float(loss.detach())}
                if done % eval_every == 0 or done in schedule or done == total:
                    model.eval()
                    row = (row or {"step": done}) | recipe.evaluate(model, data, hp)
                if row is not None:
                    log.write(row)
                if done in schedule:
                    save_tensors(run.checkpoint_path(done), model.state_dict(),
                                 {"step": str(done), "kind": "checkpoint"})
                now = time.monotonic()
                if (done in schedule or now - last_state >= state_every_s
                        or (state_every and done % state_every == 0)) and done < total:
                    _save_state(run, model, opt, gen, done)
                    last_state = now
                if row is not None or done % 10 == 0:
                    if row is not None:
                        bar.set_postfix_str("  ".join(f"{k} {v:.3g}" for k, v in row.items() if k != "step"))
                    bar.update(done - shown)
                    shown = done
    finally:
        log.close()
        torch.set_flush_denormal(False)
    model.eval()
    save_tensors(run.model_path, model.state_dict(), {"step": str(total), "kind": "model"})
    write_json(run.done_path, {"steps": total, "seconds_this_session": round(time.monotonic() - t0, 2),
                               "resumed_from": start, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability()})
    run.state_path.unlink(missing_ok=True)
    return run
