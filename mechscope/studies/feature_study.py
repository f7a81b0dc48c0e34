"""Every latent of a trained dictionary on held-out text: dashboards, explanations and their scores.

Steps (`feature_study`):
1. wrap the dictionary's latents as a `FeatureSet` at its site (decoder rows are the write
   directions); with `skip_first`, the first position of every window reads 0 for every latent
   (the attention-sink position of models like SmolLM2 carries a norm far outside what the
   dictionary was trained on, and would fill every top-example list);
2. build every dashboard in one streaming pass into the DuckDB store;
3. fit an executable explanation per live latent on half the windows and score it on the other
   half: correlation, precision, recall, then causally (loss recovered when the explanation's
   prediction replaces the latent, against zero and mean ablation) for every live latent or the
   `causal_limit` most active ones;
4. summarise: live latents, the share whose held-out correlation is >= 0.7, the causal scores'
   median and quartiles (with `baseline`, the one-rule search's beside them, from the same runs,
   and the per-latent difference: its median with a bootstrap interval over latents),
   the explanations' median size (clauses, fitted values, tokens listed), the wall and CPU time,
   and three example pages (the best-explained latent, the one at the median correlation, and the
   most active latent).

`mechscope features explain MODEL DICTIONARY` runs it and ends with one JSON line.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.score import bootstrap_ci
from ..core.site import Site
from ..features import FeatureSet, FeatureStore, build_dashboards
from ..features.pipeline import explain_set


def dictionary_features(dictionary: Any, site: Site | str | None = None, name: str | None = None,
                        skip_first: bool = False) -> FeatureSet:
    """The latents of `dictionary` (encode (..., d) -> (..., d_sae), decoder rows W_dec) as a FeatureSet."""
    site = site or dictionary.config.site
    if not site:
        raise ValueError("the dictionary records no site; pass one")
    site = Site.parse(site) if isinstance(site, str) else site
    base = dictionary.encode

    def encode(x: Tensor) -> Tensor:
        with torch.no_grad():
            out = base(x)
        if skip_first:
            out[:, 0] = 0
        return out

    return FeatureSet.from_dictionary(site, encode, dictionary.W_dec,
                                      name or f"{dictionary.architecture}-{site.name}-{dictionary.config.d_sae}")


def _compact_page(page: dict[str, Any], n_examples: int = 3) -> dict[str, Any]:
    def example(e: dict[str, Any]) -> str:
        toks, acts = e["tokens"], e["acts"]
        peak = max(range(len(acts)), key=lambda j: acts[j]) if acts else -1
        return "".join(f"[[{t}]]" if j == peak else t for j, t in enumerate(toks))

    expl = page["explanations"][0] if page["explanations"] else {}
    return {
        "feature": page["feature"], "density": page["density"], "max_act": page["max_act"],
        "explanation": expl.get("explanation"), "heldout_corr": expl.get("corr"),
        "precision": expl.get("precision"), "recall": expl.get("recall"),
        "loss_recovered_vs_mean": expl.get("loss_recovered"),
        "top_examples": [f"{e['activation']:.2f}: {example(e)}" for e in page["top"][:n_examples]],
        "promotes": [lg["token"] for lg in page["logits"] if lg["sign"] > 0][:6],
        "suppresses": [lg["token"] for lg in page["logits"] if lg["sign"] < 0][:6],
    }


def feature_study(model: Any, dictionary: Any, docs: Tensor, store_path: str | Path, *, dataset: str,
                  site: Site | str | None = None, name: str | None = None, skip_first: bool = False,
                  causal_limit: int | None = None, seed: int = 0, progress: bool = True,
                  lm: Any = None, causal_docs: int | None = None, grammar: str = "rule",
                  baseline: bool = False, select_by: str = "loss", select_docs: int = 8) -> dict[str, Any]:
    """Dashboards and explanations of every latent of `dictionary` on `docs` (n_docs, pos), stored
    in the DuckDB file `store_path`; returns the figures (see the module docstring)."""
    feats = dictionary_features(dictionary, site, name, skip_first)
    tok = getattr(model, "tokenizer", None)
    decode = (lambda t: tok.decode([int(t)])) if tok is not None else None
    t0 = time.monotonic()
    with FeatureStore(store_path) as store:
        dash = build_dashboards(model, feats, docs, store, dataset=dataset, seed=seed, progress=progress)
        t1 = time.monotonic()
        res = explain_set(model, feats, docs, store, dataset=dataset, decode=decode, causal_limit=causal_limit,
                          seed=seed, progress=progress, lm=lm, causal_docs=causal_docs, grammar=grammar,
                          baseline=baseline, select_by=select_by, select_docs=select_docs)
        t2 = time.monotonic()
        rows = sorted(res.rows, key=lambda r: -r["corr"])
        live_ids = {r["feature"] for r in rows}
        pages = []
        if rows:
            busiest = max((f for f in store.features(feats.name) if f["feature"] in live_ids),
                          key=lambda f: f["n_active"])["feature"]
            for label, fid in (("best explained", rows[0]["feature"]), ("median correlation",
                                                                        rows[len(rows) // 2]["feature"]),
                               ("most active", busiest)):
                pages.append({"why": label, **_compact_page(store.page(feats.name, fid))})
    # a latent silent on every causal document has no ablation effect to recover: its ratio is not
    # finite, and it is counted apart instead of entering the median and quartiles
    causal = [r["loss_recovered"] for r in res.rows if r["loss_recovered"] is not None]
    undefined = sum(not math.isfinite(x) for x in causal)
    causal = [x for x in causal if math.isfinite(x)]
    base = [r["loss_recovered"] for r in res.baseline_rows
            if r["loss_recovered"] is not None and math.isfinite(r["loss_recovered"])]
    return {
        "set": feats.name, "site": feats.site.name, "model": getattr(model, "name", type(model).__name__),
        "dataset": dataset, "documents": int(docs.shape[0]), "tokens_per_document": int(docs.shape[1]),
        "latents": len(feats), "live": res.live, "explained_fires_heldout": res.explained,
        "corr_at_least_0.7": res.corr_at_least_07, "share_corr_0.7": res.share_corr_07,
        "median_heldout_corr": statistics.median([r["corr"] for r in rows]) if rows else None,
        "causal_scored": len(causal) + undefined, "causal_documents": causal_docs or int(docs.shape[0]) - int(docs.shape[0]) // 2,
        "lm_explained": len(res.lm_rows), "lm_corr_at_least_0.7": sum(r["corr"] >= 0.7 for r in res.lm_rows),
        "median_loss_recovered_vs_mean": statistics.median(causal) if causal else None,
        "quartiles_loss_recovered_vs_mean": _quartiles(causal), "causal_not_finite": undefined,
        "grammar": grammar, "select_by": select_by if grammar == "select" else None,
        "select_docs_per_fold": select_docs if grammar == "select" and select_by == "loss" else None,
        "size_median": _median_size(res.rows),
        "baseline": None if not res.baseline_rows else {
            "explainer": "one rule and its mean value", "causal_scored": len(base),
            "median_loss_recovered_vs_mean": statistics.median(base) if base else None,
            "quartiles_loss_recovered_vs_mean": _quartiles(base),
            "median_heldout_corr": statistics.median([r["corr"] for r in res.baseline_rows]),
            "size_median": _median_size(res.baseline_rows), "paired": paired_difference(res.rows, res.baseline_rows,
                                                                                         seed=seed)},
        "chosen": _chosen(res.rows),
        "skip_first": skip_first, "seconds": {"dashboards": round(t1 - t0, 1), "explanations": round(t2 - t1, 1),
                                              "explanations_detail": res.seconds},
        "dashboard_live": dash.live, "store": str(store_path), "pages": pages,
    }


def paired_difference(rows: tuple[dict[str, Any], ...] | list[dict[str, Any]],
                      baseline_rows: tuple[dict[str, Any], ...] | list[dict[str, Any]], *, seed: int = 0,
                      n_boot: int = 2000) -> dict[str, Any] | None:
    """Per feature, loss recovered (vs mean ablation) of `rows` minus that of `baseline_rows` on the
    same causal runs, over the features where both are finite: the median difference with a
    percentile bootstrap interval over features, and how many are higher, lower and equal.

    Example::

        from mechscope.studies.feature_study import paired_difference
        paired_difference([{"feature": 0, "loss_recovered": 0.9}, {"feature": 1, "loss_recovered": 0.5}],
                          [{"feature": 0, "loss_recovered": 0.7}, {"feature": 1, "loss_recovered": 0.5}])
        # {"n": 2, "median_difference": 0.1, "ci": [...], "higher": 1, "lower": 0, "equal": 1}
    """
    base = {r["feature"]: r["loss_recovered"] for r in baseline_rows}
    diffs = [r["loss_recovered"] - base[r["feature"]] for r in rows
             if r["loss_recovered"] is not None and base.get(r["feature"]) is not None
             and math.isfinite(r["loss_recovered"]) and math.isfinite(base[r["feature"]])]
    if not diffs:
        return None
    ci = bootstrap_ci(diffs, lambda v: v.quantile(0.5), n_boot=n_boot, seed=seed) if len(diffs) >= 2 else None
    return {"n": len(diffs), "median_difference": statistics.median(diffs), "ci": None if ci is None else list(ci),
            "higher": sum(d > 0 for d in diffs), "lower": sum(d < 0 for d in diffs),
            "equal": sum(d == 0 for d in diffs)}


def _chosen(rows: tuple[dict[str, Any], ...]) -> dict[str, int] | None:
    """How many features each explanation family was chosen for (rows of `grammar="select"`)."""
    out: dict[str, int] = {}
    for r in rows:
        c = json.loads(r["spec"]).get("chosen")
        if c is not None:
            out[c] = out.get(c, 0) + 1
    return out or None


def _quartiles(xs: list[float]) -> list[float] | None:
    """The 25th, 50th and 75th percentiles of `xs` (None when fewer than two)."""
    return [round(q, 4) for q in statistics.quantiles(xs, n=4, method="inclusive")] if len(xs) >= 2 else None


def _median_size(rows: tuple[dict[str, Any], ...]) -> dict[str, float] | None:
    """The median of each size figure (clauses, fitted values, tokens listed) over the rows' specs."""
    sizes = [json.loads(r["spec"]).get("size") for r in rows]
    sizes = [z for z in sizes if z]
    if not sizes:
        return None
    return {k: statistics.median(z[k] for z in sizes) for k in sizes[0]}


__all__ = ["dictionary_features", "feature_study", "paired_difference"]
