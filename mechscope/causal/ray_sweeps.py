"""Activation patching and EAP-IG over many prompts, split across Ray tasks.

Steps (`ray_activation_patching`, `ray_eap_ig`):
1. split the prompts into `tasks` contiguous groups (the counterfactual prompts of a patch
   ablation split with them; a mean ablation's reference set goes whole to every task, so every
   task ablates with the same mean);
2. one Ray task per group, `threads` torch threads each: it loads the model (`load_model`, run in
   the task's process) and runs the one-process method on its prompts;
3. put the parts together into the one-process result object: patching values, baselines and
   references concatenated along the prompt axis, EAP-IG scores averaged over prompts (each part
   weighted by its prompts), pass counts summed.
The result equals the one-process result up to the rounding of batched products over fewer rows
(tests compare them). A resample ablation is refused: it draws each prompt's reference row from
the whole set with one seed, which groups would not reproduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..core.cluster import ray_session
from .ablation import AblationKind, AblationSpec
from .activation_patching import PatchingResult, activation_patching
from .edges import EdgeScores
from .eap_ig import eap_ig


def _call(load_model: Callable[[], Any], threads: int, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    torch.set_num_threads(threads)
    return method(load_model(), *args, **kwargs)


def _groups(n: int, tasks: int) -> list[slice]:
    if n < 1:
        raise ValueError("no prompts to split")
    tasks = max(1, min(tasks, n))
    bounds = [round(i * n / tasks) for i in range(tasks + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _run_tasks(calls: list[tuple[tuple, dict]], method: Callable[..., Any], load_model: Callable[[], Any],
               threads: int, address: str | None) -> list[Any]:
    with ray_session(address, num_cpus=len(calls) * threads) as ray:
        remote = ray.remote(num_cpus=threads)(_call)
        return ray.get([remote.remote(load_model, threads, method, args, kwargs) for args, kwargs in calls])


def ray_activation_patching(load_model: Callable[[], Any], clean: Tensor, corrupt: Tensor, sites: Any,
                            metric: Callable[[Tensor], Tensor], *, tasks: int = 2, threads: int = 1,
                            address: str | None = None, **kwargs: Any) -> PatchingResult:
    """`activation_patching` with the prompts split over `tasks` Ray tasks (see the module docstring);
    `kwargs` go to `activation_patching` in every task. `load_model()` runs in each task's process:
    a module-level function or a functools.partial of one (`functools.partial(ms.load, "smollm2-135m")`)."""
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} prompts must have the same shape")
    kwargs = {"progress": False, **kwargs}
    calls = [((clean[g], corrupt[g], sites, metric), kwargs) for g in _groups(clean.shape[0], tasks)]
    parts: list[PatchingResult] = _run_tasks(calls, activation_patching, load_model, threads, address)
    first = parts[0]
    how = dict(first.how)
    for key in ("blocks_skipped", "unchanged_patches", "last_position_split"):
        how[key] = sum(p.how[key] for p in parts)
    how["shared_prefix"] = min(p.how["shared_prefix"] for p in parts)
    how["tasks"] = len(parts)
    return replace(first, values=torch.cat([p.values for p in parts], -1),
                   baseline=torch.cat([p.baseline for p in parts]), reference=torch.cat([p.reference for p in parts]),
                   forward_passes=sum(p.forward_passes for p in parts), how=how)


def ray_eap_ig(load_model: Callable[[], Any], inputs: Tensor, metric: Any, spec: AblationSpec, *, tasks: int = 2,
               threads: int = 1, address: str | None = None, reference_inputs: Tensor | None = None,
               metric_for: Callable[[slice], Any] | None = None, **kwargs: Any) -> EdgeScores:
    """`eap_ig` with the prompts split over `tasks` Ray tasks (see the module docstring); `kwargs` go
    to `eap_ig` in every task. A metric that holds per-prompt data (the answer tokens of
    `metrics.logit_diff`) is given as `metric_for(prompts)`, the metric of a slice of the prompts
    (`metric` is then ignored)."""
    if spec.kind is AblationKind.RESAMPLE:
        raise ValueError("a resample ablation draws reference rows over the whole prompt set; it cannot be split "
                         "across tasks: run eap_ig in one process, or use a mean or patch ablation")
    # the prompts a task runs, and the reference data: per prompt (patch), or the whole set (mean)
    denoising = spec.direction == "denoising"
    run_on = reference_inputs if denoising else inputs
    if run_on is None:
        raise ValueError("denoising needs the counterfactual prompts as reference_inputs")
    calls = []
    for g in _groups(run_on.shape[0], tasks):
        ref_part = None
        if spec.kind is AblationKind.PATCH:
            ref_part = (inputs if denoising else reference_inputs)[g] if reference_inputs is not None else None
        elif spec.kind is AblationKind.MEAN:
            ref_part = inputs if denoising else reference_inputs
        part_inputs, part_ref = (ref_part, run_on[g]) if denoising else (run_on[g], ref_part)
        m = metric if metric_for is None else metric_for(g)
        calls.append(((part_inputs, m, spec), {**kwargs, "reference_inputs": part_ref}))
    parts: list[EdgeScores] = _run_tasks(calls, eap_ig, load_model, threads, address)
    ns = [p.how["n"] for p in parts]
    values = sum(p.values.double() * n for p, n in zip(parts, ns)) / sum(ns)
    how = dict(parts[0].how)
    how["n"] = sum(ns)
    for key in ("forward_passes", "backward_passes"):
        if key in how:
            how[key] = sum(p.how[key] for p in parts)
    how["tasks"] = len(parts)
    return EdgeScores(parts[0].graph, values.float(), how)
