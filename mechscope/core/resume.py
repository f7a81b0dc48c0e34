"""Resuming a forward pass partway: run only the blocks from some layer on, from a given residual stream.

Many runs that change one site of the same inputs (a sweep of substitutions, of ablations) compute
the same blocks before that site every time. `resume_point` names where such runs can start
instead: the residual stream entering a block, `resid_pre.L`, for a site in block L, or the
next block's entrance for `resid_post.L` (the same tensor). `run_from` then runs from there:
the adapter skips blocks 0..L-1 (`Adapter.start_at`), and the residual stream entering block L is
the given one (the clean run's, captured once): everything the run computes from block L on is
what the whole run would compute. Adapters that cannot skip blocks have no resume point (the
caller runs the whole model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from .interventions import Intervention, Patch
from .protocol import Adapter
from .run import RunResult, resolve, run
from .site import Kind, Site


def resume_point(adapter: Adapter, site: Site | str) -> Site | None:
    """The residual stream where a run that changes `site` (and reads nothing before it) can start:
    `resid_pre.(L+1)` for `resid_post.L` when the model has it, else `resid_pre.L` for a site of
    block L >= 1; None when starting there saves nothing (block 0, embeddings, final sites) or the
    adapter cannot skip blocks.

    Example::

        from mechscope.core import resume_point
        resume_point(model, "resid_post.16")     # Site(resid_pre.17)
        resume_point(model, "mlp_out.3")         # Site(resid_pre.3)
    """
    site = resolve(adapter, site).whole
    if site.layer is None:
        return None
    have = set(adapter.sites())
    after = Site(Kind.RESID_PRE, site.layer + 1)
    if site.kind is Kind.RESID_POST and after in have:
        entry = after
    else:
        entry = Site(Kind.RESID_PRE, site.layer)
    if entry.layer == 0 or entry not in have or adapter.start_at(entry.layer) is None:
        return None  # (start_at only builds its context here; nothing is skipped until it is entered)
    return entry


def run_from(adapter: Adapter, inputs: Any, entry: Site | str, value: Tensor,
             interventions: Sequence[Intervention] | Intervention = (),
             capture: Iterable[Site | str] | Site | str = ()) -> RunResult:
    """`run(adapter, inputs, capture, interventions)` computed from block L on, where `entry` is
    `resid_pre.L` and `value` (batch, pos, d_model) is the residual stream entering block L (the
    whole run's, e.g. captured once from a clean run of the same inputs). Blocks 0..L-1 are
    skipped: interventions and captures must be at `entry` or after it (applied after the entry's
    value is written, in order), otherwise a ValueError names them.

    Example::

        from mechscope.core import resume_point, run_from
        entry = resume_point(model, "resid_post.16")                      # resid_pre.17
        clean = run(model, ids, capture=[entry]).cache[entry]             # (batch, pos, d_model)
        out = run_from(model, ids, entry, clean, interventions=[ms.Zero(entry, units=[3])])
        out.logits                               # (batch, pos, vocab): as the whole run's with the Zero
    """
    entry = resolve(adapter, entry)
    if entry.kind is not Kind.RESID_PRE or entry.head is not None:
        raise ValueError(f"a run resumes at a block's entrance, resid_pre.L; got {entry.name}")
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    if isinstance(capture, (Site, str)):
        capture = [capture]
    order = {s: k for k, s in enumerate(adapter.sites())}
    early = [s.name for s in [*(iv.site for iv in interventions), *capture]
             if order.get(resolve(adapter, s).whole, len(order)) < order[entry]]
    if early:
        raise ValueError(f"a run resumed at {entry.name} never computes {', '.join(early)}: they come before it")
    ivs = [Patch(entry, value=value), *interventions]
    if entry.layer == 0:
        return run(adapter, inputs, capture=capture, interventions=ivs)
    skip = adapter.start_at(entry.layer)
    if skip is None:
        raise ValueError(f"{getattr(adapter, 'name', type(adapter).__name__)} cannot skip blocks: run it whole")
    with skip:
        return run(adapter, inputs, capture=capture, interventions=ivs)
