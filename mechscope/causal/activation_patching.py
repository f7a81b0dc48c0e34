"""Activation patching as batched forward passes: every (site, head, position) in few runs.

Steps:
1. run the source prompts once and capture every site to patch (one forward pass);
2. list the jobs: each site, split by head (per-head sites, when `each_head`) and by position
   (when `each_position`);
3. pack jobs into chunks; a chunk's batch is the target prompts repeated once per job, and job j
   gets one `Patch` restricted to its own rows, head and position (one forward pass per chunk);
   jobs are grouped by the layer of their site, and a chunk whose sites all lie in layer L or
   later skips blocks 0..L-1, starting from the target run's own resid_pre of layer L (captured
   in the target run of step 1), when the adapter can skip blocks;
4. read the metric per row and fold it back into a (site, head, position) grid, per prompt. When
   the metric reads only the last position (`Metric.last_position_only`), only that position is
   unembedded.

Direction: "denoising" runs the corrupted prompts and writes clean activations in (how much of
the behaviour does this component restore?); "noising" runs the clean prompts and writes
corrupted activations in (how much does breaking it hurt?).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import Kind, Patch, Site
from ..core.metrics import metric_columns
from ..core.run import resolve, run
from ..models import wrap


@dataclass(frozen=True)
class PatchingResult:
    """Metric after each patch. `values` is (site, head, position, prompt).

    The head axis has length 1 for sites not split by head, the position axis length 1 when
    positions are patched together; `sites` names the first axis. `baseline` is the metric of the
    unpatched target run per prompt, `reference` that of the source run. `forward_passes` counts
    every forward pass the sweep cost. Entries are NaN where a site has fewer heads than the widest
    (key/value sites under grouped-query attention).
    """

    sites: tuple[Site, ...]
    values: Tensor  # (site, head, position, prompt)
    baseline: Tensor  # (prompt,)
    reference: Tensor  # (prompt,)
    direction: str
    forward_passes: int
    how: dict[str, Any] = field(default_factory=dict)

    def mean(self) -> Tensor:
        """(site, head, position): the metric averaged over prompts."""
        return self.values.mean(-1)

    def normalised(self) -> Tensor:
        """(site, head, position): (m(patched) - m(target)) / (m(source) - m(target)), prompt-averaged
        metrics first, then normalised (the aggregation order is recorded in `how`)."""
        base, ref = self.baseline.mean(), self.reference.mean()
        return (self.mean() - base) / (ref - base)


def prepare_sweep(model: Any, clean: Tensor, corrupt: Tensor, sites: Sequence[Site | str], direction: str,
                  each_head: bool) -> tuple[Any, list[Site], Tensor, Tensor, dict[Site, int]]:
    """Check a clean/corrupt pair; return the adapter, Sites, source and target prompts, and the
    number of heads each site is split into."""
    if clean.shape != corrupt.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} prompts must "
                         "have the same shape (align the counterfactual token by token)")
    if direction not in ("denoising", "noising"):
        raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    model = wrap(model)
    sites = [resolve(model, s) for s in sites]
    source, target = (clean, corrupt) if direction == "denoising" else (corrupt, clean)
    heads = {s: (model.n_heads_at(s) or 1) if each_head and s.per_head else 1 for s in sites}
    return model, sites, source, target, heads


def activation_patching(
    model: Any,
    clean: Tensor,
    corrupt: Tensor,
    sites: Sequence[Site | str],
    metric: Callable[[Tensor], Tensor],
    *,
    direction: Literal["denoising", "noising"] = "denoising",
    each_head: bool = True,
    each_position: bool = True,
    max_rows: int = 256,
    progress: bool = True,
) -> PatchingResult:
    """Patch every site (per head, per position) from the source run into the target run.

    `clean` and `corrupt` are token ids (prompt, pos) of equal shape; `metric` maps logits
    (rows, pos, vocab) to one value per row. At most `max_rows` rows run in one forward pass.
    """
    model, sites, source, target, heads = prepare_sweep(model, clean, corrupt, sites, direction, each_head)
    n_prompts, n_pos = target.shape
    src = run(model, source, capture=sites)
    starts = _start_layers(model, sites)
    base = run(model, target, capture=sorted({Site(Kind.RESID_PRE, s) for s in starts.values() if s}))
    passes = 2

    jobs = [(i, h, p) for i, s in enumerate(sites) for h in range(heads[s])
            for p in (range(n_pos) if each_position else [None])]
    jobs.sort(key=lambda job: starts[sites[job[0]]])  # stable: same-layer jobs keep their order
    per_chunk = max(1, max_rows // n_prompts)
    chunks = []  # consecutive jobs of one start layer, at most per_chunk of them
    for job in jobs:
        if chunks and len(chunks[-1]) < per_chunk and starts[sites[chunks[-1][0][0]]] == starts[sites[job[0]]]:
            chunks[-1].append(job)
        else:
            chunks.append([job])
    last_only = getattr(metric, "last_position_only", False)
    columns = metric_columns(metric)  # a metric of a few token ids: only their logits are computed
    n_heads_max = max(heads.values())
    values = torch.full((len(sites), n_heads_max, n_pos if each_position else 1, n_prompts), float("nan"))
    bar = tqdm(total=len(jobs), desc="activation patching", disable=not progress, unit="patch")
    for chunk in chunks:
        k = len(chunk)
        batch = target.repeat(k, 1)  # (k * prompt, pos): job j owns rows j*prompt ... (j+1)*prompt - 1
        first = starts[sites[chunk[0][0]]]
        ivs = []
        if first:  # blocks before `first` are the target run's: start from its resid_pre there
            entry = Site(Kind.RESID_PRE, first)
            ivs.append(Patch(entry, value=base.cache[entry].repeat(k, 1, 1)))
        tiled = {}
        for j, (i, h, p) in enumerate(chunk):
            s = sites[i]
            if s not in tiled:  # the source activation repeated like the batch: (k * prompt, ...)
                tiled[s] = src.cache[s].repeat(k, *([1] * (src.cache[s].dim() - 1)))
            rows = range(j * n_prompts, (j + 1) * n_prompts)
            ivs.append(Patch(s, value=tiled[s], rows=rows,
                             heads=[h] if heads[s] > 1 else None,
                             positions=None if p is None else [p]))
        prepared = model.prepare(batch)
        prepared.last_logits_only = last_only
        prepared.logit_columns = columns
        with model.start_at(first) if first else nullcontext():
            out = run(model, prepared, interventions=ivs)
        passes += 1
        m = metric(out.logits).detach().float().reshape(k, n_prompts)
        for j, (i, h, p) in enumerate(chunk):
            values[i, h, 0 if p is None else p] = m[j]
        bar.update(k)
    bar.close()
    how = {"method": "activation patching", "direction": direction,
           "blocks_skipped": sum(len(c) * starts[sites[c[0][0]]] for c in chunks),
           "ablation": "counterfactual patch", "level": "node",
           "positions": "each" if each_position else "all", "heads": "each" if each_head else "all",
           "aggregation": "mean over prompts, then normalise"}
    return PatchingResult(tuple(sites), values, metric(base.logits).detach().float(),
                          metric(src.logits).detach().float(), direction, passes, how)


def _start_layers(model: Any, sites: Sequence[Site]) -> dict[Site, int]:
    """The first block each site's patch run must compute: the site's own layer when the adapter
    can skip blocks and has a resid_pre there, else 0 (embeddings and final sites: 0)."""
    have = set(model.sites())
    out = {}
    for s in sites:
        layer = s.layer or 0
        ok = layer and Site(Kind.RESID_PRE, layer) in have and model.start_at(layer) is not None
        out[s] = layer if ok else 0
    return out
