"""A toy model of superposition as code: each instance's geometry, feature by feature.

`tms_hypothesis(module)` takes the zoo's `tms` network laid out batch first
(`zoo.recipes.tms.BatchFirstTMS`, or one group's `BatchFirst`) and states, per group and instance,
which features it represents, in which direction of its hidden space, and how each feature is
read back:

    hidden   h = sum over the represented features f of x_f d_f: each represented feature (its column
             of W longer than `threshold`) has a direction d_f; the others are not stored at all
    out      x'_f = ReLU(d_f . h + b_f) for a represented feature: it reads its own direction back,
             and the bias b_f (negative under superposition) cuts off the interference of features
             that share its directions; a feature that is not represented is the constant ReLU(b_f)

`threshold` is low on purpose: the replication counts a feature as represented above 0.5, but
sparse instances keep features at norms between 0.02 and 0.5 that matter (on the zoo's `tms`, the
100 -> 20 sweep recovers 0.38 of the loss against mean ablation with 0.2, 0.96 with 0.1, 0.99994 with
0.02; the 5 -> 2 group is exact down to 0.2 and recovers 0.35 with 0.5).

The superposition pattern is the table `overlaps` (inst, n, n) = d_f . d_g of the represented
features, which the hidden part's directions determine (reported in `info`, not counted twice).
The numbers are read from the network's weights: the represented directions and the biases.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.hypothesis import Code, Hypothesis
from ..core.interventions import Context
from ..core.site import Site


def _group_parts(name: str, prefix: str, toy: Any, threshold: float) -> tuple[list[Code], dict[str, Any]]:
    W, b = toy.W.detach(), toy.b.detach()
    represented = W.norm(dim=1) > threshold  # (inst, n)
    directions = W * represented[:, None, :]  # (inst, m, n): zero where a feature is not represented
    kept = directions.transpose(1, 2)[represented]  # (represented features, m): the counted numbers
    hidden = Site.module(prefix + "hidden")

    def store_features(x: Tensor, ctx: Context) -> Tensor:
        """h = sum_f x_f d_f over the represented features."""
        x_in = ctx.input_ids[name] if isinstance(ctx.input_ids, dict) else ctx.input_ids
        return torch.einsum("bif,imf->bim", x_in.to(directions.dtype), directions)

    def read_features(x: Tensor, ctx: Context) -> Tensor:
        """x'_f = ReLU(d_f . h + b_f); a feature that is not represented is ReLU(b_f)."""
        return torch.relu(torch.einsum("bim,imf->bif", ctx.cache[hidden], directions) + b)

    parts = [Code(prefix + "hidden", store_features, numbers={"directions": kept}, fitted_on="read from W (no data)",
                  name="store_features", claim=f"{name}: represented features are stored along their own directions"),
             Code(prefix + "out", read_features, needs=(hidden,), numbers={"biases": b},
                  fitted_on="read from b (no data)", name="read_features",
                  claim=f"{name}: each feature reads its direction back; the bias cuts off interference")]
    info = {"instances": int(W.shape[0]), "features": int(W.shape[2]),
            "represented_per_instance": represented.sum(-1).tolist(),
            "overlaps": torch.einsum("imf,img->ifg", directions, directions)}
    return parts, info


@torch.no_grad()
def tms_hypothesis(module: Any, *, threshold: float = 0.02, name: str = "tms as code") -> Hypothesis:
    """`module`: a `BatchFirstTMS` (every group) or a `BatchFirst` (one group), or an adapter wrapping one.

    Example::

        from mechscope.circuits import tms_hypothesis
        model = ms.load("zoo:tms")
        hyp = tms_hypothesis(model, threshold=0.02)          # each group's hidden and output as code
        [part.name for part in hyp.parts]
    """
    module = getattr(module, "module", module)
    groups = dict(module.groups) if hasattr(module, "groups") else {"": module}
    parts: list[Code] = []
    info: dict[str, Any] = {"threshold": threshold}
    for g, bf in groups.items():
        p, i = _group_parts(g or "tms", f"groups.{g}." if g else "", bf.toy, threshold)
        parts += p
        info[g or "tms"] = i
    return Hypothesis(name, tuple(parts), claim="x'_f = ReLU(sum_g x_g (d_f . d_g) + b_f) over the represented features",
                      info=info)
