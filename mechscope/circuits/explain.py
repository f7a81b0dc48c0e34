"""Score an explanation written as code: substitute it for a component and measure the loss it recovers.

An *explanation* of a component is a Python function that computes the component's output from
the input tokens (and, optionally, activations computed earlier in the same forward pass): e.g.
"this head copies the value of the token after the previous occurrence of the current token".
`score` runs the model four ways on the same inputs:

    clean        the model as it is
    explained    the component at `site` (optionally only `heads` of a per-head site such as
                 attn.z / attn.result) replaced by `fn(activation, context)` (core `Replace`)
    mean         the same entries replaced by their mean over the reference data (per position)
    resample     the same entries replaced by those of a reference prompt drawn with a fixed seed

and reports, against each ablation, the share of the loss the explanation recovers:

    loss recovered = (L_ablated - L_explained) / (L_ablated - L_clean)

1 means the code is as good as the component itself; 0 means it is no better than removing the
component; it can be negative (worse than removing it) or above 1 (better than the component).
L is next-token cross-entropy averaged over the selected targets (all of them, a mask such as
the zoo induction batch's repeated segment, or given labels at the last position). The interval
is a paired percentile bootstrap over prompts of the ratio of token-pooled losses. Each number
is a `Score` carrying the metric, the ablation kind, the reference data, n and the seed.

`fn` receives the activation at `site` (all heads) and a `Context`; it returns a tensor that
broadcasts to the whole activation. With `heads=`, only those heads' entries are written, so `fn`
may return the whole site's tensor. Activations that `fn` reads from `context.cache` must be
captured in the run: list their sites in `needs=` or give `fn` a `needs` attribute (the ready-made
explanations in `mechscope.circuits.explanations` do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.interventions import Context, Intervention, Mean, Replace, Resample
from ..core.run import resolve, run
from ..core.score import Score, loss_recovered
from ..core.site import Site
from ..models import wrap

ExplanationFn = Callable[[Tensor, Context], Tensor]


@dataclass(frozen=True)
class ExplanationScore:
    """Losses of the four runs (token-pooled means over the selected targets) and the two scores.

    Example::

        from mechscope.circuits import explain_score
        s = explain_score(model, tokens, "attn.z.1", strict, heads=[1])
        s.vs_mean, s.vs_resample                 # Scores: loss recovered against each ablation
        s.describe()                             # a JSON-ready record
        s.per_prompt["explained"]                # (prompt,) losses; also "clean", "mean", "resample"
    """

    site: Site
    heads: tuple[int, ...] | None
    loss_clean: float
    loss_explained: float
    loss_mean_ablated: float
    loss_resample_ablated: float
    vs_mean: Score
    vs_resample: Score
    explanation: str = "fn"
    per_prompt: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the scores (per-prompt values left out)."""
        return {"site": self.site.name, "heads": None if self.heads is None else list(self.heads),
                "explanation": self.explanation, "loss_clean": self.loss_clean,
                "loss_explained": self.loss_explained, "loss_mean_ablated": self.loss_mean_ablated,
                "loss_resample_ablated": self.loss_resample_ablated,
                "recovered_vs_mean": self.vs_mean.describe(), "recovered_vs_resample": self.vs_resample.describe()}

    def __str__(self) -> str:
        where = self.site.name + ("" if self.heads is None else f" heads {list(self.heads)}")
        return (f"{self.explanation} at {where}: loss clean {self.loss_clean:.4g}, explained "
                f"{self.loss_explained:.4g}, mean-ablated {self.loss_mean_ablated:.4g}, resample-ablated "
                f"{self.loss_resample_ablated:.4g}\n  vs mean: {self.vs_mean}\n  vs resample: {self.vs_resample}")


def _ids_of(inputs: Any) -> tuple[Tensor, Tensor | None]:
    """Token ids, and the target mask when `inputs` is a zoo induction Batch (ids + repeat)."""
    if hasattr(inputs, "ids") and hasattr(inputs, "repeat"):
        return inputs.ids, inputs.repeat
    if isinstance(inputs, dict):
        return inputs["input_ids"], None
    return torch.as_tensor(inputs), None


def _target_mask(ids: Tensor, positions: Any) -> Tensor:
    """(batch, pos - 1) mask over next-token targets: logits[:, t] predicts ids[:, t + 1]."""
    b, t = ids.shape[0], ids.shape[1] - 1
    if positions is None:
        return torch.ones(b, t, dtype=torch.bool)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.shape == (t,):
            positions = positions.expand(b, t)
        if positions.shape != (b, t):
            raise ValueError(f"a position mask must be (batch, pos - 1) = {(b, t)} over next-token targets "
                             f"(logits[:, t] predicts token t + 1), got {tuple(positions.shape)}")
        return positions
    mask = torch.zeros(t, dtype=torch.bool)
    mask[positions if isinstance(positions, slice) else torch.as_tensor(list(positions), dtype=torch.long)] = True
    return mask.expand(b, t)


def _losses(logits: Tensor, ids: Tensor, mask: Tensor | None, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-prompt (sum of losses, number of targets) in float64."""
    if labels is not None:  # one answer per prompt, read at the last position (or (batch, classes) logits)
        ce = F.cross_entropy((logits[:, -1] if logits.dim() == 3 else logits).double(), labels.long(), reduction="none")
        return ce, torch.ones_like(ce)
    pred, target = logits[:, :-1].double(), ids[:, 1:]
    ce = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    m = mask.to(ce.dtype)
    return (ce * m).sum(1), m.sum(1)


def _recovered(abl: tuple[Tensor, Tensor], expl: tuple[Tensor, Tensor], clean: tuple[Tensor, Tensor],
               how: dict[str, Any], dataset: str, seed: int, n_boot: int) -> Score:
    """(L_abl - L_expl) / (L_abl - L_clean), each L pooled over the targets of the chosen prompts;
    paired percentile bootstrap over prompts."""
    return loss_recovered(abl, expl, clean, how=how, dataset=dataset, seed=seed, n_boot=n_boot,
                          aggregation="ratio of token-pooled losses")


def _seeing(fn: ExplanationFn, ids: Tensor) -> ExplanationFn:
    """`fn` given the run's inputs as `context.input_ids` when the model has no tokens of its own (a
    generic module whose inputs are ids, say)."""
    def seeing(x: Tensor, ctx: Context) -> Tensor:
        return fn(x, ctx if ctx.input_ids is not None else dataclasses.replace(ctx, input_ids=ids))
    return seeing


@torch.no_grad()
def score(model: Any, inputs: Any, site: Site | str | None, fn: ExplanationFn, heads: Sequence[int] | None = None,
          reference: Any = None, *, positions: Any = None, labels: Tensor | None = None,
          needs: Sequence[Site | str] = (), n_boot: int = 1000, seed: int = 0, dataset: str = "unnamed",
          reference_name: str | None = None, name: str | None = None) -> ExplanationScore:
    """Loss recovered by `fn` standing in for the component at `site` (see the module docstring).

    inputs     token ids (batch, pos), or a zoo induction `Batch` (its repeated segment is then the
               default `positions`)
    site       where the explanation is substituted; None takes `fn.site`
    heads      a subset of heads of a per-head site (attn.z, attn.result, ...); None: the whole site
    reference  token ids for the mean (per position, over prompts) and resample ablations; default:
               the inputs themselves (a resampled row may then be the prompt's own, with chance 1/n)
    positions  which next-token targets count: None (all), a boolean mask (batch, pos - 1) aligned
               with logits[:, :-1], or target indices (a slice or a list)
    labels     (batch,) answers read at the last position instead of next tokens (e.g. modadd)
    needs      sites `fn` reads from the context's cache (added to `fn.needs`)

    Example::

        from mechscope.circuits import explain_score, strict_induction
        model = ms.load("zoo:induction-quick")
        s = explain_score(model, tokens, "attn.z.1", strict_induction(model, 1), heads=[1, 3])  # tokens (batch, pos)
        print(s.vs_mean)
    """
    model = wrap(model)
    site = getattr(fn, "site", None) if site is None else site
    if site is None:
        raise ValueError("give the site the explanation stands in for (or an fn with a .site)")
    site = resolve(model, site)
    if site.head is not None:
        if heads is not None:
            raise ValueError(f"{site.name}: give the head in the site or in heads=, not both")
        heads, site = [site.head], site.whole
    heads_t = None if heads is None else tuple(int(h) for h in heads)
    if heads_t is not None and not site.per_head:
        raise ValueError(f"heads= needs a per-head site (attn.z, attn.result, attn.pattern, ...); {site.name} has none")
    ids, batch_mask = _ids_of(inputs)
    ref_ids = ids if reference is None else _ids_of(reference)[0]
    if ref_ids.shape[1:] != ids.shape[1:]:
        raise ValueError(f"reference prompts have shape {tuple(ref_ids.shape)}; they need the inputs' length "
                         f"{ids.shape[1]} (the mean ablation is per position)")
    mask = None if labels is not None else _target_mask(ids, batch_mask if positions is None else positions)
    if mask is not None and not bool((mask.sum(1) > 0).any()):
        raise ValueError("no next-token target is selected by `positions`")
    where = {} if heads_t is None else {"heads": list(heads_t)}

    ref = run(model, ref_ids, capture=[site]).cache[site]
    reads = [resolve(model, s) for s in (*getattr(fn, "needs", ()), *needs)]
    runs: dict[str, list[Intervention]] = {
        "clean": [],
        "explained": [Replace(site, fn=_seeing(fn, ids), **where)],
        "mean": [Mean.of(site, ref, **where)],
        "resample": [Resample(site, source=ref, seed=seed, **where)],
    }
    losses = {}
    for key, ivs in runs.items():
        res = run(model, ids, capture=reads if key == "explained" else [], interventions=ivs)
        losses[key] = _losses(res.logits, ids, mask, labels)
    keep = losses["clean"][1] > 0  # prompts with at least one selected target
    losses = {k: (s[keep], c[keep]) for k, (s, c) in losses.items()}
    pooled = {k: float(s.sum() / c.sum()) for k, (s, c) in losses.items()}

    ref_label = reference_name or ("the inputs themselves" if reference is None else "reference prompts")
    target = ("labels at the last position" if labels is not None else
              "all next tokens" if positions is None and batch_mask is None else "selected next tokens")
    label = name or getattr(fn, "name", None) or getattr(fn, "__name__", "fn")
    base = {"explanation": label, "site": site.name, "heads": "all" if heads_t is None else list(heads_t),
            "loss": f"next-token cross-entropy, {target}", "reference": ref_label, "reference_n": int(ref_ids.shape[0])}
    scores = {kind: _recovered(losses[kind], losses["explained"], losses["clean"],
                               {**base, "ablation": kind, **({"ablation_seed": seed} if kind == "resample" else
                                                             {"mean_over": "reference prompts, per position"})},
                               dataset, seed, n_boot)
              for kind in ("mean", "resample")}
    return ExplanationScore(site=site, heads=heads_t, loss_clean=pooled["clean"], loss_explained=pooled["explained"],
                            loss_mean_ablated=pooled["mean"], loss_resample_ablated=pooled["resample"],
                            vs_mean=scores["mean"], vs_resample=scores["resample"], explanation=str(label),
                            per_prompt={k: s / c for k, (s, c) in losses.items()})
