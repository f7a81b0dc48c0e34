"""Causal scoring of a feature explanation: put its prediction in place of the feature, read the loss.

The feature's value v at each token is replaced by a new value v' by moving the site's activation
along the feature's write direction: x' = x + (v' - v) * u, with u the direction (a unit vector for
neurons and projections, the decoder row for dictionary latents). Three substitutions:
    explained:  v' = the explanation's prediction
    zero:       v' = 0
    mean:       v' = the feature's mean value over the reference documents
and loss recovered = (L_ablated - L_explained) / (L_ablated - L_clean) against each ablation,
with the next-token loss averaged over every predicted token of the documents first, then the
ratio (a paired bootstrap over documents gives the interval). 1 means the explanation does all
the feature does for the loss; 0 means no better than removing it.

Every substitution changes the same site of the same documents, so the blocks before it compute
the same thing in every run: given the clean residual stream where the runs can resume
(`clean_runs`, from `mechscope.core.resume_point`), each substitution runs only the blocks from
the site on (`mechscope.core.run_from`); the losses are those of whole runs (tests compare them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import Kind, Replace, Score, Site, bootstrap_ci, resume_point, run, run_from
from ..core.metrics import next_token_loss
from ..models import wrap
from .feature import FeatureSet
from .rules import Explanation, TokenTable


def write_direction(features: FeatureSet, i: int, d_site: int) -> Tensor:
    """The direction feature i writes along at its site (d_site,)."""
    if features.kind == "neuron":
        u = torch.zeros(d_site)
        u[features.units[i]] = 1.0
        return u
    if features.directions is None:
        raise ValueError(f"{features.name}: feature {i} has no write direction; substitution needs one")
    return features.directions[i].float()


@torch.no_grad()
def substitution_scores(model: Any, features: FeatureSet, i: int, explanation: Explanation, docs: Tensor,
                        table: TokenTable, *, mean_value: float, reference: str, dataset: str,
                        batch_size: int = 16, seed: int = 0, clean_losses: Tensor | None = None,
                        values: Tensor | None = None, resume: Tensor | None = None) -> dict[str, Score]:
    """Loss recovered by `explanation` for feature i on `docs` (doc, pos), against zero and mean
    ablation of the feature; `mean_value` is its mean over the documents named `reference`.
    `clean_losses` (doc,), from `document_losses` on the same docs, saves the clean runs when many
    features are scored on one set of documents; with it, `values` (doc, pos), the feature's values
    on the docs, saves the runs of documents that a substitution leaves unchanged (see
    `substitution_scores_many`; `resume` too)."""
    return substitution_scores_many(model, features, i, [explanation], docs, table, mean_value=mean_value,
                                    reference=reference, dataset=dataset, batch_size=batch_size, seed=seed,
                                    clean_losses=clean_losses, values=values, resume=resume)[0]


@torch.no_grad()
def substitution_scores_many(model: Any, features: FeatureSet, i: int, explanations: Sequence[Explanation],
                             docs: Tensor, table: TokenTable, *, mean_value: float, reference: str, dataset: str,
                             batch_size: int = 16, seed: int = 0, clean_losses: Tensor | None = None,
                             values: Tensor | None = None, resume: Tensor | None = None) -> list[dict[str, Score]]:
    """`substitution_scores` for several explanations of feature i, sharing the clean, zero and mean
    runs: one dict of scores per explanation, in order.

    With `clean_losses` and `values` (doc, pos: the feature's values on `docs`), a document where
    the feature is 0 at every position and a substitution writes 0 at every position is left
    unchanged by it, and its loss is its clean loss: it is not run again (the mean ablation, which
    writes the mean everywhere, runs on every document).

    With `resume` (doc, pos, d_model), the clean residual stream of `docs` at
    `resume_point(model, features.site)` (the second value of `clean_runs`), every run starts there
    and computes only the blocks from the site on."""
    preds = [e.predict(table).float() for e in explanations]  # (doc, pos) each
    zero = torch.zeros(docs.shape, dtype=torch.float32)
    clean, got = substitution_losses(model, features, i, [zero, torch.full_like(zero, mean_value), *preds], docs,
                                     batch_size=batch_size, clean_losses=clean_losses, values=values, resume=resume)
    losses = {"clean": clean, "zero": got[0], "mean": got[1], **{f"explained{k}": x for k, x in enumerate(got[2:])}}
    L = {k: v.double() for k, v in losses.items()}  # (doc,) each
    n = len(L["clean"])
    results = []
    for k, explanation in enumerate(explanations):
        out = {}
        for ablation in ("zero", "mean"):
            def recovered(idx: Tensor, a=ablation, e=f"explained{k}") -> Tensor:
                idx = idx.long()
                abl, exp, clean = L[a][idx].mean(), L[e][idx].mean(), L["clean"][idx].mean()
                return (abl - exp) / (abl - clean)
            value = float(recovered(torch.arange(n)))
            ci = bootstrap_ci(torch.arange(n, dtype=torch.float64), recovered, seed=seed, n_boot=500)
            how = {"substitution": "feature value replaced along its write direction",
                   "ablation": ablation, "reference": reference if ablation == "mean" else None,
                   "feature": f"{features.name}[{i}]", "explanation": explanation.describe(),
                   "loss_clean": float(L["clean"].mean()), "loss_ablated": float(L[ablation].mean()),
                   "loss_explained": float(L[f"explained{k}"].mean())}
            out[ablation] = Score(value, "loss_recovered", ci, "mean loss over documents, then the ratio", dataset,
                                  n, seed, how)
        results.append(out)
    return results


@torch.no_grad()
def substitution_losses(model: Any, features: FeatureSet, i: int, targets: Sequence[Tensor], docs: Tensor, *,
                        batch_size: int = 16, clean_losses: Tensor | None = None, values: Tensor | None = None,
                        resume: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """Each document's clean next-token loss (doc,), and its loss (doc,) when feature i's value is
    replaced by each of `targets` (doc, pos) along its write direction; `clean_losses`, `values`
    and `resume` as in `substitution_scores_many` (a document where the feature and the target
    are 0 everywhere keeps its clean loss without a run)."""
    model = wrap(model)
    site = model.check(features.site)
    if site.kind in (Kind.Q, Kind.K, Kind.V, Kind.Z, Kind.PATTERN, Kind.SCORES, Kind.RESULT):
        raise ValueError(f"substitution works on (batch, pos, d) sites; {site.name} is per head")
    if clean_losses is not None and clean_losses.shape != (docs.shape[0],):
        raise ValueError(f"clean_losses must have one loss per document, {docs.shape[0]}; got "
                         f"{tuple(clean_losses.shape)}")
    if values is not None and (clean_losses is None or values.shape != docs.shape):
        raise ValueError(f"values must be the feature's values (doc, pos) = {tuple(docs.shape)} on the docs, given "
                         "with clean_losses; got " + ("no clean_losses" if clean_losses is None
                                                      else f"{tuple(values.shape)}"))
    entry = None
    if resume is not None:
        entry = resume_point(model, site)
        if entry is None:
            raise ValueError(f"{getattr(model, 'name', 'the model')} has no resume point for {site.name}; "
                             "pass resume=None")
        if resume.shape[:2] != docs.shape:
            raise ValueError(f"resume must be the residual stream at {entry.name} (doc, pos, d) = "
                             f"{tuple(docs.shape)} + (d,) on the docs; got {tuple(resume.shape)}")
    # resid_post.L resumed at resid_pre.(L+1), the same tensor: the substitution is written there
    at = site if entry is None or entry.layer <= (site.layer or 0) else entry

    def substituted(rows: Tensor | slice, d0: int, target: Tensor) -> Tensor:
        ids = docs[d0:d0 + batch_size][rows]
        iv = Replace(at, fn=_substitute(features, i, target))
        if entry is None:
            return run(model, ids, interventions=[iv]).logits
        return run_from(model, ids, entry, resume[d0:d0 + batch_size][rows], interventions=[iv]).logits

    clean_out: list[Tensor] = []
    losses: list[list[Tensor]] = [[] for _ in targets]
    for d0 in range(0, docs.shape[0], batch_size):
        ids = docs[d0:d0 + batch_size]
        metric = next_token_loss(ids)
        clean = metric(run(model, ids).logits) if clean_losses is None else clean_losses[d0:d0 + batch_size]
        clean_out.append(clean)
        silent = None if values is None else (values[d0:d0 + batch_size] == 0).all(dim=1)  # (batch,)
        for k, whole in enumerate(targets):
            target = whole[d0:d0 + batch_size].float()
            if silent is None:
                losses[k].append(metric(substituted(slice(None), d0, target)))
                continue
            moved = ~(silent & (target == 0).all(dim=1))
            out = clean.detach().clone().float()
            if bool(moved.any()):
                logits = substituted(moved, d0, target[moved])
                out[moved.to(out.device)] = next_token_loss(ids[moved])(logits).to(out)
            losses[k].append(out)
    return torch.cat(clean_out), [torch.cat(x) for x in losses]


@torch.no_grad()
def document_losses(model: Any, docs: Tensor, batch_size: int = 16) -> Tensor:
    """The clean next-token loss of each document (doc,), as `substitution_scores` computes it."""
    model = wrap(model)
    return torch.cat([next_token_loss(docs[d0:d0 + batch_size])(run(model, docs[d0:d0 + batch_size]).logits)
                      for d0 in range(0, docs.shape[0], batch_size)])


@torch.no_grad()
def clean_runs(model: Any, site: Site | str, docs: Tensor, batch_size: int = 16) -> tuple[Tensor, Tensor | None]:
    """The clean next-token loss of each document (doc,), as `document_losses`, and the clean
    residual stream (doc, pos, d_model) at `resume_point(model, site)`, from the same runs, for the
    substitution runs to start at (`substitution_scores_many(..., resume=)`); None when the model
    has no resume point for `site`."""
    model = wrap(model)
    entry = resume_point(model, site)
    losses, acts = [], []
    for d0 in range(0, docs.shape[0], batch_size):
        ids = docs[d0:d0 + batch_size]
        res = run(model, ids, capture=[] if entry is None else [entry])
        losses.append(next_token_loss(ids)(res.logits))
        if entry is not None:
            acts.append(res.cache[entry].detach().clone())
    return torch.cat(losses), None if entry is None else torch.cat(acts)


def _substitute(features: FeatureSet, i: int, target: Tensor):
    def fn(x: Tensor, ctx) -> Tensor:
        u = write_direction(features, i, x.shape[-1]).to(x)
        cur = features.encode(x)[..., i].to(x)  # (batch, pos)
        return x + (target.to(x) - cur)[..., None] * u
    return fn
