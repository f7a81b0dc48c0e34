"""Attribution patching: the first-order estimate of every activation patch from three passes.

Steps:
1. run the target prompts with gradients: capture every site and the gradient of the summed
   metric at each site (one forward and one backward pass);
2. run the source prompts and capture the same sites (one forward pass);
3. estimate patching component c as  m(target) + (a_source - a_target)[c] . dm/da[c],
   summing the product over the component's own axes (d_head or d_model, key positions).

The estimate is exact where the metric is linear in the activation (e.g. at the logits) and a
first-order approximation elsewhere; `activation_patching` gives the exact values to compare.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..core import Site
from ..core.passes import counting_passes
from ..core.run import run
from .activation_patching import PatchingResult, prepare_sweep


def attribution_patching(
    model: Any,
    clean: Tensor,
    corrupt: Tensor,
    sites: Sequence[Site | str],
    metric: Callable[[Tensor], Tensor],
    *,
    direction: Literal["denoising", "noising"] = "denoising",
    each_head: bool = True,
    each_position: bool = True,
) -> PatchingResult:
    """Estimated metric after each patch, shaped like `activation_patching`'s result.

    Example::

        from mechscope.causal import attribution_patching
        model = ms.load("smollm2-135m")          # clean, corrupt: its token ids (prompt, pos)
        est = attribution_patching(model, clean, corrupt, ["attn.z.0", "attn.z.1"], ld, each_position=False)
        est.values                               # (site, head, 1, prompt): a linear estimate
    """
    model, sites, source, target, heads = prepare_sweep(model, clean, corrupt, sites, direction, each_head)
    with counting_passes() as passes:
        tgt = run(model, target, capture=sites, grad=lambda out: metric(model.logits(out)).sum())
        src = run(model, source, capture=sites)
    base = metric(tgt.logits).detach().float()
    n_prompts, n_pos = target.shape
    values = torch.full((len(sites), max(heads.values()), n_pos if each_position else 1, n_prompts),
                        float("nan"))
    for i, s in enumerate(sites):
        delta = (src.cache[s] - tgt.cache[s]) * tgt.grads[s]  # site layout, batch first
        lay = s.layout
        pos_ax = lay.pos if each_position and lay.pos is not None else None
        head_ax = lay.head if heads[s] > 1 else None
        front = [0] + [ax for ax in (pos_ax, head_ax) if ax is not None]
        rest = [ax for ax in range(delta.dim()) if ax not in front]
        # (prompt, [pos], [head], everything else) -> sum over everything else
        d = delta.permute(*front, *rest).reshape(*[delta.shape[ax] for ax in front], -1).sum(-1)
        if pos_ax is None:
            d = d.unsqueeze(1)
        if head_ax is None:
            d = d.unsqueeze(2)
        # (prompt, pos, head) -> (head, pos, prompt)
        values[i, : heads[s], : d.shape[1]] = base + d.permute(2, 1, 0).float()
    how = {"method": "attribution patching (first order)", "direction": direction,
           "ablation": "counterfactual patch", "level": "node",
           "positions": "each" if each_position else "all", "heads": "each" if each_head else "all",
           "aggregation": "mean over prompts, then normalise"}
    return PatchingResult(tuple(sites), values, base, metric(src.logits).detach().float(), direction,
                          forward_passes=passes.forward, how=how | {"backward_passes": passes.backward})
