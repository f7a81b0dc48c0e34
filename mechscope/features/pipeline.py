"""Explain every live feature of a set and store the explanations with their scores.

Steps:
1. compute the feature values over the documents (doc, pos, feature) with one capture per batch;
2. split the documents (seeded) into a fitting half and a held-out half; a feature is live when
   it is active on at least `min_active` fitting tokens;
3. fit one explanation per live feature and score it on the held-out half (correlation,
   precision, recall): with `grammar="rule"` (the default) one rule and its mean value
   (`autointerp.explain_feature`); with `grammar="clauses"` a few clauses whose values are fitted
   by least squares, reading tokens, context and the set's latents on the previous token
   (`autointerp.fit_clauses`); with `grammar="select"`, per feature the one rule or clauses (with
   or without the rule search's split), whichever does best on folds of the fitting half it
   was not fitted on (`autointerp.Chooser`; by default judged by the model's loss with it
   substituted for the feature on a few of the fold's documents), refitted on the whole fitting half; `baseline=True`
   also scores the one-rule search (rank 2), on the same split and in the same causal runs;
4. score the explanation causally (loss recovered against zero and mean ablation of the feature,
   on the held-out half) for every live feature, or for the `causal_limit` most active ones; the
   blocks before the feature's site run once per document (`substitution.clean_runs`), each
   substitution only the blocks from the site on;
5. write one row per feature into the store's `explanations` table; `spec` holds the JSON of how
   each number was measured and the explanation's size (clauses, fitted values, tokens listed).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import run
from ..core.progress import progress_bar
from ..models import wrap
from .autointerp import Chooser, explain_feature, fit_clauses, fixed_masks, heldout, previous_latent_masks
from .feature import FeatureSet
from .lm_explainer import LMExplainer
from .rules import TokenTable
from .store import FeatureStore
from .substitution import clean_runs, substitution_losses, substitution_scores_many

GRAMMARS = ("clauses", "rule", "select")


@dataclass(frozen=True)
class ExplainedSet:
    """What explaining a feature set found: live and explained counts, the causal scores' count and one row per
    live feature."""

    set_id: str
    live: int
    explained: int  # live features with a rule that fires on held-out text
    corr_at_least_07: int  # live features whose held-out correlation is >= 0.7
    causal_scored: int
    rows: tuple[dict[str, Any], ...]  # the grammar search's explanation per live feature
    lm_rows: tuple[dict[str, Any], ...] = ()  # the language model's, when one was asked
    baseline_rows: tuple[dict[str, Any], ...] = ()  # the one-rule search's, with baseline=True
    seconds: dict[str, float] | None = None  # wall and CPU time of the explaining and scoring

    @property
    def share_corr_07(self) -> float:
        """The share of live features whose held-out correlation is at least 0.7."""
        return self.corr_at_least_07 / max(1, self.live)


def feature_values(model: Any, features: FeatureSet, docs: Tensor, batch_size: int = 16) -> Tensor:
    """(doc, pos, feature) values of `features` over `docs`."""
    model = wrap(model)
    site = model.check(features.site)
    out = []
    with torch.no_grad():
        for d0 in range(0, docs.shape[0], batch_size):
            acts = run(model, docs[d0:d0 + batch_size], capture=[site]).cache[site]
            out.append(features.encode(acts).float().cpu())
    return torch.cat(out)


def explain_set(model: Any, features: FeatureSet, docs: Tensor, store: FeatureStore | None, *, dataset: str,
                decode: Any = None, min_active: int = 3, causal_limit: int | None = None, threshold: float = 0.0,
                seed: int = 0, progress: bool = True, lm: LMExplainer | None = None,
                causal_docs: int | None = None, grammar: str = "rule", baseline: bool = False,
                max_clauses: int = 4, select_by: str = "loss", select_docs: int = 8) -> ExplainedSet:
    """Explain every live feature (rank 0: the grammar search; rank 1: `lm`'s answer, when given;
    rank 2: the one-rule search, with `baseline`) and store the rows; see the module docstring for
    the steps. `causal_docs` scores causally on only the first N held-out documents (each causal
    score costs runs over them); `causal_limit=None` scores every live feature. With
    `grammar="select"`, `select_by="loss"` judges the candidates on the first `select_docs` judged
    documents of each fold of the fitting half by the model's loss with each substituted for the
    feature (the causal score's own measure, on fitting documents); `"error"` by squared error."""
    if grammar not in GRAMMARS:
        raise ValueError(f"grammar must be one of {GRAMMARS}; got {grammar!r}")
    if select_by not in ("loss", "error"):
        raise ValueError(f"select_by must be 'loss' or 'error'; got {select_by!r}")
    model = wrap(model)
    wall0, cpu0 = time.monotonic(), time.process_time()
    values = feature_values(model, features, docs)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(docs.shape[0], generator=g)
    fit_docs, test_docs = order[: docs.shape[0] // 2].sort().values, order[docs.shape[0] // 2:].sort().values
    table = TokenTable.build(docs, decode).with_latents(values)
    fit_t, test_t = table.subset(fit_docs), table.subset(test_docs)
    fixed = fixed_masks(fit_t)
    prev_latents = previous_latent_masks(fit_t, threshold) if grammar in ("clauses", "select") else None
    chooser = (Chooser(fit_t, fixed=fixed, prev_latents=prev_latents, prev_above=threshold)
               if grammar == "select" else None)
    active = (values[fit_docs] > threshold).flatten(0, 1).sum(0)  # (feature,)
    live = [i for i in range(len(features)) if int(active[i]) >= min_active]
    causal = set(sorted(live, key=lambda i: -int(active[i]))[:causal_limit] if causal_limit is not None else live)
    causal_set = test_docs[:causal_docs] if causal_docs is not None else test_docs
    causal_t = table.subset(causal_set)
    # the clean runs once: each document's loss, and the residual stream where the substitution runs start
    clean, resume = clean_runs(model, features.site, docs[causal_set]) if causal else (None, None)
    fold_runs = []  # per fold of the fitting half: its judged documents' clean runs, for select_by="loss"
    if chooser is not None and select_by == "loss":
        for f in chooser.folds:
            jd = f.judge_docs[:select_docs]  # indices into the fitting documents
            losses_k, resume_k = clean_runs(model, features.site, docs[fit_docs[jd]])
            fold_runs.append((fit_docs[jd], fit_t.subset(jd), losses_k, resume_k))

    def judge_by_loss(i: int):
        def judge(k: int, expls: list[Any]) -> list[float]:
            gdocs, jt, losses_k, resume_k = fold_runs[k]
            _, got = substitution_losses(model, features, i, [e.predict(jt) for e in expls], docs[gdocs],
                                         clean_losses=losses_k, values=values[gdocs, :, i], resume=resume_k)
            return [float(x.double().sum()) for x in got]
        return judge

    rows, n_fires, n07 = [], 0, 0
    fit_seconds, causal_seconds = 0.0, 0.0

    def scored(i: int, expls: list[tuple[Any, int, dict[str, Any]]]) -> list[tuple[dict[str, Any], Any]]:
        nonlocal causal_seconds
        out, sc = [], None
        if i in causal:
            t0 = time.monotonic()
            mean_value = float(values[fit_docs, :, i].mean())
            sc = substitution_scores_many(model, features, i, [e for e, _, _ in expls], docs[causal_set], causal_t,
                                          mean_value=mean_value, reference=f"{dataset}: fitting half",
                                          dataset=f"{dataset}: held-out half" + (
                                              "" if causal_docs is None else f", first {len(causal_set)} documents"),
                                          seed=seed, clean_losses=clean, values=values[causal_set, :, i],
                                          resume=resume)
            causal_seconds += time.monotonic() - t0
        for k, (expl, rank, spec) in enumerate(expls):
            held = heldout(expl, values[test_docs, :, i], test_t, threshold)
            size = expl.size() if hasattr(expl, "size") else None
            spec = {**spec, "fit_docs": len(fit_docs), "heldout_docs": len(test_docs), "heldout_tokens": held.n_tokens,
                    "active_threshold": threshold, "split_seed": seed, "dataset": dataset, "size": size}
            loss_recovered = None
            if sc is not None:
                loss_recovered = sc[k]["mean"].value
                spec["causal"] = {a: s.describe() for a, s in sc[k].items()}
                spec["loss_recovered_vs_zero"] = sc[k]["zero"].value
            out.append(({"feature": i, "rank": rank, "explanation": expl.describe(decode), "corr": held.corr,
                         "precision": held.precision, "recall": held.recall, "loss_recovered": loss_recovered,
                         "spec": json.dumps(spec)}, held))
        return out

    search = {"clauses": "rule grammar search, clauses with least-squares values (no language model)",
              "rule": "rule grammar search, one rule (no language model)",
              "select": "rule grammar search, per feature the one rule or clauses (with or without the split) "
                        "chosen by error on held-out folds of the fitting half (no language model)"}
    for i in progress_bar(live, desc=f"explaining {features.name}", unit="feature", disable=not progress):
        t0 = time.monotonic()
        expls: list[tuple[Any, int, dict[str, Any]]] = []
        info: dict[str, Any] = {}
        if grammar == "clauses":
            expl, fit_corr = fit_clauses(values[fit_docs, :, i], fit_t, fixed=fixed, prev_latents=prev_latents,
                                         prev_above=threshold, exclude=i, max_clauses=max_clauses)
        elif grammar == "select":
            expl, fit_corr, info = chooser.fit(values[fit_docs, :, i], exclude=i, max_clauses=max_clauses,
                                               judge=judge_by_loss(i) if fold_runs else None)
            if fold_runs:
                info = {**info, "judged_by": f"loss with the candidate substituted, {select_docs} documents per fold"}
        else:
            expl, fit_corr = explain_feature(values[fit_docs, :, i], fit_t, fixed=fixed)
        expls.append((expl, 0, {"explainer": search[grammar], "fit_corr": fit_corr, **info}))
        if baseline and grammar != "rule":
            if info.get("chosen") == "rule":  # the same search on the same documents: the same answer
                base, base_corr = expl, fit_corr
            else:
                base, base_corr = explain_feature(values[fit_docs, :, i], fit_t, fixed=fixed)
            expls.append((base, 2, {"explainer": search["rule"], "fit_corr": base_corr}))
        if lm is not None:  # the language model's explanation, through the same scorers
            lm_expl, info = lm.explain(values[fit_docs, :, i], fit_t)
            expls.append((lm_expl, 1, info))
        fit_seconds += time.monotonic() - t0
        results = scored(i, expls)
        row, held = results[0]
        n_fires += held.precision > 0
        n07 += held.corr >= 0.7
        rows.extend(r for r, _ in results)
    if store is not None and rows:
        store.replace_explanations(features.name, rows)
    seconds = {"wall": round(time.monotonic() - wall0, 1), "cpu": round(time.process_time() - cpu0, 1),
               "fit_wall": round(fit_seconds, 1), "causal_wall": round(causal_seconds, 1)}
    return ExplainedSet(features.name, len(live), n_fires, n07, len(causal & set(live)),
                        tuple(r for r in rows if r["rank"] == 0), tuple(r for r in rows if r["rank"] == 1),
                        tuple(r for r in rows if r["rank"] == 2), seconds)
