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

When the metric reads only the last position and the adapter can run a window of positions
against earlier keys and values (`Adapter.window`: causal models with a key/value cache), a
chunk computes less:
- positions where every source prompt equals its target prompt (a shared prefix), and positions
  before every job's patch position, are the same in the patched run as in the target run at
  every layer: the chunk reads their keys and values from the target run (kept in step 1) and
  computes only the later positions; a patch at such a position changes nothing, and its value
  is the target run's metric, without a run;
- the final block's attention output, MLP and unembedding are computed for the last position
  only: the blocks before it run in one pass that stops at the final block's entrance, then the
  final block runs the other positions up to their keys and values, then the last position alone.

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
import torch.nn.functional as F
from torch import Tensor

from ..core import Kind, Patch, Replace, Site, Window
from ..core.metrics import metric_columns
from ..core.progress import progress_bar
from ..core.passes import counting_passes
from ..core.protocol import Prepared
from ..core.run import resolve, run
from ..models import wrap


@dataclass(frozen=True)
class PatchingResult:
    """Metric after each patch. `values` is (site, head, position, prompt).

    The head axis has length 1 for sites not split by head, the position axis length 1 when
    positions are patched together; `sites` names the first axis. `baseline` is the metric of the
    unpatched target run per prompt, `reference` that of the source run. `forward_passes` counts
    every forward pass the sweep cost (each call of the model, also the calls a chunk is split
    into). Entries are NaN where a site has fewer heads than the widest (key/value sites under
    grouped-query attention). `how` records, besides the setting, what was not computed:
    `blocks_skipped`, `shared_prefix` (leading positions where source and target agree, read from
    the target run), `unchanged_patches` (patches there: their value is `baseline`, without a run)
    and `last_position_split` (chunks whose final block ran the last position alone).

    Example::

        from mechscope.causal import activation_patching
        res = activation_patching(model, clean, corrupt, ["attn.z.0", "attn.z.1"], ld)
        res.values                               # (site, head, position, prompt)
        res.normalised()                         # (site, head, position): share of the effect restored
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

    Example::

        from mechscope.causal import activation_patching
        from mechscope.core import metrics
        model = ms.load("smollm2-135m")
        clean = model.to_tokens(["When Mary and John went to the store, John gave a drink to"])["input_ids"]
        corrupt = model.to_tokens(["When John and Mary went to the store, Mary gave a drink to"])["input_ids"]
        ld = metrics.logit_diff(torch.tensor([5099]), torch.tensor([2322]))   # " Mary" - " John"
        res = activation_patching(model, clean, corrupt, [ms.Site(ms.Kind.Z, l) for l in range(2)], ld)
        res.normalised()                         # (site, head, position)
    """
    model, sites, source, target, heads = prepare_sweep(model, clean, corrupt, sites, direction, each_head)
    n_prompts, n_pos = target.shape
    last_only = getattr(metric, "last_position_only", False)
    columns = metric_columns(metric)  # a metric of a few token ids: only their logits are computed
    with counting_passes() as passes:  # every forward pass the sweep runs, as it runs
        src = run(model, _reading(model.prepare(source), last_only, columns), capture=sites)
        starts = _start_layers(model, sites)
        entries = sorted({Site(Kind.RESID_PRE, s) for s in starts.values() if s})
        base_in = _reading(model.prepare(target), last_only, columns)
        # the target run keeps its keys and values when patch runs can read them (see the module doc)
        kept = model.window(base_in, Window(keep=True), entries) if last_only else None
        base = run(model, kept or base_in, capture=entries)
        past = None if kept is None else kept.past
        baseline = metric(base.logits).detach().float()

        n_heads_max = max(heads.values())
        values = torch.full((len(sites), n_heads_max, n_pos if each_position else 1, n_prompts), float("nan"))
        jobs = [(i, h, p) for i, s in enumerate(sites) for h in range(heads[s])
                for p in (range(n_pos) if each_position else [None])]
        # with a past: positions before `shared` hold the same tokens in source and target, so the same
        # activations in a causal model; a patch there changes nothing
        shared = _shared_prefix(source, target) if past is not None else 0
        unchanged = [job for job in jobs if job[2] is not None and job[2] < shared]
        for i, h, p in unchanged:
            values[i, h, p] = baseline
        jobs = [job for job in jobs if job[2] is None or job[2] >= shared]
        jobs.sort(key=lambda job: starts[sites[job[0]]])  # stable: same-layer jobs keep their order
        per_chunk = max(1, max_rows // n_prompts)
        chunks = []  # consecutive jobs of one start layer, at most per_chunk of them
        for job in jobs:
            if chunks and len(chunks[-1]) < per_chunk and starts[sites[chunks[-1][0][0]]] == starts[sites[job[0]]]:
                chunks[-1].append(job)
            else:
                chunks.append([job])
        final = _final_block(model)
        order = {s: i for i, s in enumerate(model.sites())}  # sites in forward order
        bar = progress_bar(total=len(jobs), desc="activation patching", disable=not progress, unit="patch")
        split_chunks = 0
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
            # positions before `start` are the target run's in every row of the chunk
            start = min(n_pos - 1, max(shared, min(p for _, _, p in chunk) if each_position else 0))
            out, split = _patched_run(model, _reading(model.prepare(batch), last_only, columns), ivs,
                                      first, final, past, start, torch.arange(n_prompts).repeat(k), order)
            split_chunks += split
            m = metric(out.logits).detach().float().reshape(k, n_prompts)
            for j, (i, h, p) in enumerate(chunk):
                values[i, h, 0 if p is None else p] = m[j]
            bar.update(k)
        bar.close()
    how = {"method": "activation patching", "direction": direction,
           "blocks_skipped": sum(len(c) * starts[sites[c[0][0]]] for c in chunks),
           "shared_prefix": shared, "unchanged_patches": len(unchanged), "last_position_split": split_chunks,
           "ablation": "counterfactual patch", "level": "node",
           "positions": "each" if each_position else "all", "heads": "each" if each_head else "all",
           "aggregation": "mean over prompts, then normalise"}
    return PatchingResult(tuple(sites), values, baseline, metric(src.logits).detach().float(), direction,
                          passes.forward, how)


def _reading(prepared: Prepared, last_only: bool, columns: Tensor | None) -> Prepared:
    """`prepared`, marked to compute only what a last-position metric reads, when it is one."""
    prepared.last_logits_only = last_only
    prepared.logit_columns = columns
    return prepared


def _shared_prefix(source: Tensor, target: Tensor) -> int:
    """How many leading positions hold the same token in every source prompt and its target."""
    differ = (source != target).any(0).nonzero()
    return int(differ[0]) if len(differ) else source.shape[1]


class _Reached(Exception):
    """Raised at the final block's entrance by a run that computes only the blocks before it."""

    def __init__(self, resid: Tensor):
        super().__init__()
        self.resid = resid


def _reached(x: Tensor, ctx: Any) -> Tensor:
    raise _Reached(x)


def _patched_run(model: Any, prepared: Prepared, ivs: list[Patch], first: int, final: int | None,
                 past: Any, start: int, rows: Tensor, order: dict[Site, int]) -> tuple[Any, bool]:
    """One chunk's patched run from block `first`: its result (logits of the positions the metric
    reads) and whether it ran in windows.

    With the target run's keys and values (`past`) and an adapter that can run windows of
    positions for these sites, positions before `start` are read from `past` (row i of the chunk
    is row rows[i] of the target run), and the final block computes its attention output, MLP
    and unembedding for the last position only: the blocks before it run positions start..n-1
    in one pass that stops at the final block's entrance (when the adapter can start there,
    `final`), then the final block runs positions start..n-2 up to their keys and values, then
    the last position alone. Each run gets its positions' slice of every patch. Otherwise the
    chunk is one forward pass. `order` ranks the model's sites in forward order (computed once
    per sweep).
    """
    enter = lambda layer: model.start_at(layer) if layer else nullcontext()  # noqa: E731
    sites = {iv.site for iv in ivs}
    body = None if past is None else model.window(prepared, Window(start=start, past=past, rows=rows), sites)
    if body is None:
        with enter(first):
            return run(model, prepared, interventions=ivs), False
    n = prepared.input_ids.shape[1]
    if final is not None and first < final:
        # blocks first..final-1 on positions start..n-1 in one pass; then the final block alone,
        # from the residual stream entering it
        entry = Site(Kind.RESID_PRE, final)
        before = [iv for iv in ivs if order[iv.site] < order[entry]]
        try:
            with enter(first):
                run(model, body, interventions=[*_window(before, start, n), Replace(entry, fn=_reached)])
        except _Reached as stop:
            resid = F.pad(stop.resid, (0, 0, start, 0))  # (rows, n, d_model); positions < start never read
        else:
            raise RuntimeError(f"the forward pass never reached {entry.name}")
        ivs = [Patch(entry, value=resid), *(iv for iv in ivs if order[iv.site] >= order[entry])]
        first = final
    with enter(first):
        if start < n - 1:  # positions start..n-2, up to the final block's keys and values
            head = model.window(prepared, Window(start=start, stop=n - 1, past=past, rows=rows, keys_only=True),
                                sites)
            run(model, head, interventions=_window(ivs, start, n - 1))
            past, rows = head.past, None
        last = model.window(prepared, Window(start=n - 1, past=past, rows=rows), sites)
        out = run(model, last, interventions=_window(ivs, n - 1, n))
    return out, True


def _final_block(model: Any) -> int | None:
    """The last block's index when a run can start there (its resid_pre is a site), else None."""
    have = set(model.sites())
    layers = [s.layer for s in have if s.layer is not None]
    last = max(layers, default=0)
    ok = last and Site(Kind.RESID_PRE, last) in have and model.start_at(last) is not None
    return last if ok else None


def _window(ivs: Sequence[Patch], start: int, stop: int) -> list[Patch]:
    """The patches as a run over positions start..stop-1 sees them: values cut to those
    positions, position restrictions shifted into the window, patches outside it dropped."""
    out = []
    for iv in ivs:
        positions = None
        if iv.positions is not None:
            positions = [p - start for p in iv.positions if start <= p < stop]
            if not positions:
                continue
        axis = iv.site.layout.pos
        value = iv.value if iv.value.shape[axis] == 1 else iv.value.narrow(axis, start, stop - start)
        out.append(Patch(iv.site, value=value, rows=iv.rows, heads=iv.heads, positions=positions))
    return out


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
