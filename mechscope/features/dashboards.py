"""Feature dashboards in one streaming pass over a token dataset, stored in a FeatureStore.

Steps, per batch of documents (token ids (doc, pos), equal lengths):
1. run the model once, capturing the feature set's site; encode to feature values (doc*pos, n);
2. update running counts: tokens, active tokens (value > threshold), sum and max per feature;
   a symmetric-log histogram of the values (bins fixed in advance, so one pass suffices);
3. top-k: merge the batch's k largest values per feature with the k kept so far, and keep each
   candidate's context window of feature values, cut from this batch while it is in memory;
4. a uniform sample of active tokens per feature (reservoir by random keys: keep the R smallest
   keys), with their contexts; at the end it yields the quantile samples (equal-count bands);
5. co-activation counts C = AᵀA of the binary activity matrix (sparse when features are sparse);
   at the end each feature's partners are ranked by C_ij / sqrt(C_ii C_jj).
Logit effects need no data: each feature's write direction, carried to the residual stream
(a neuron's row of W_out), times the unembedding W_U: the direct path, final norm ignored.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import Kind, run
from ..core.progress import progress_bar
from ..models import wrap
from .feature import FeatureSet
from .store import FeatureStore


def symlog_edges(lo_exp: int = -3, hi_exp: int = 3, per_decade: int = 4) -> Tensor:
    """Bin edges: ±10^e for e from lo_exp to hi_exp (per_decade steps), and 0."""
    n = (hi_exp - lo_exp) * per_decade + 1
    pos = torch.logspace(lo_exp, hi_exp, n, dtype=torch.float64)
    return torch.cat([-pos.flip(0), torch.zeros(1, dtype=torch.float64), pos])


@dataclass(frozen=True)
class DashboardSummary:
    """What `build_dashboards` did: the set, its feature and token counts, the live features and the time
    taken.

    Example::

        from mechscope.features import build_dashboards
        summary = build_dashboards(model, features, docs, store, dataset="textlm")
        summary.live, summary.n_features, summary.seconds
    """

    set_id: str
    n_features: int
    n_tokens: int
    live: int  # features active on at least one token
    seconds: float


def build_dashboards(model: Any, features: FeatureSet, docs: Tensor, store: FeatureStore, *, dataset: str,
                     batch_size: int = 16, k: int = 20, reservoir: int = 64, bands: int = 5, per_band: int = 2,
                     context: tuple[int, int] = (8, 3), threshold: float = 0.0, n_logits: int = 10,
                     n_coact: int = 8, seed: int = 0, progress: bool = True) -> DashboardSummary:
    """Build every dashboard of `features` over `docs` (n_docs, pos) and write them to `store`.

    Example::

        from mechscope.features import FeatureSet, FeatureStore, build_dashboards
        feats = FeatureSet.neurons(ms.Site(ms.Kind.MLP_POST, 1), d=512)
        with FeatureStore("out/features.duckdb") as store:
            build_dashboards(model, feats, docs, store, dataset="textlm")   # docs (n_docs, pos)
    """
    t0 = time.monotonic()
    model = wrap(model)
    if docs.dim() != 2 or docs.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"docs must be integer token ids (n_docs, pos), got {docs.dtype} {tuple(docs.shape)}")
    site = model.check(features.site)
    n, (n_docs, T) = len(features), docs.shape
    before, after = context
    W = before + 1 + after
    edges = symlog_edges()
    n_bins = len(edges) + 1
    gen = torch.Generator().manual_seed(seed)

    n_active = torch.zeros(n, dtype=torch.long)
    total = torch.zeros(n, dtype=torch.float64)
    vmax = torch.full((n,), -math.inf)
    hist = torch.zeros(n * n_bins, dtype=torch.long)
    top_v = torch.full((0, n), -math.inf)
    top_g = torch.zeros((0, n), dtype=torch.long)
    top_ctx = torch.zeros((0, n, W))
    res_key = torch.zeros((0, n))
    res_v = torch.zeros((0, n))
    res_g = torch.zeros((0, n), dtype=torch.long)
    res_ctx = torch.zeros((0, n, W))
    coact = torch.zeros(n, n, dtype=torch.float64)

    bar = progress_bar(total=n_docs, desc=f"dashboards {features.name}", unit="doc", disable=not progress)
    for d0 in range(0, n_docs, batch_size):
        ids = docs[d0:d0 + batch_size]
        b = ids.shape[0]
        with torch.no_grad():
            acts = run(model, ids, capture=[site]).cache[site]
            f = features.encode(acts).detach().float().cpu()  # (b, T, n)
        if f.shape[:2] != (b, T) or f.shape[-1] != n:
            raise ValueError(f"{features.name}: encode gave {tuple(f.shape)}, expected ({b}, {T}, {n})")
        flat = f.reshape(b * T, n)  # row r = (doc d0 + r // T, position r % T)
        active = flat > threshold
        n_active += active.sum(0)
        total += flat.double().sum(0)
        vmax = torch.maximum(vmax, flat.max(0).values)
        bins = torch.bucketize(flat.double(), edges)  # (b*T, n) in 0..len(edges)
        hist += torch.bincount((torch.arange(n) * n_bins + bins).flatten(), minlength=n * n_bins)

        # top-k merge, with contexts cut from this batch
        kb = min(k, b * T)
        v, r = flat.topk(kb, dim=0)  # (kb, n)
        top_v, top_g, top_ctx = _merge(top_v, top_g, top_ctx, v, r + d0 * T, _contexts(f, r, T, before, after), k,
                                       largest=True)
        # reservoir of active tokens: the smallest random keys survive
        keys = torch.rand(b * T, n, generator=gen).masked_fill(~active, math.inf)
        kr = min(reservoir, b * T)
        kk, r = keys.topk(kr, dim=0, largest=False)
        res_key, (res_v, res_g, res_ctx) = _merge_keys(res_key, (res_v, res_g, res_ctx), kk,
                                                      (flat.gather(0, r), r + d0 * T, _contexts(f, r, T, before, after)),
                                                      reservoir)
        a = active.float()
        if n <= 2048 or a.mean() > 0.05:
            coact += (a.T @ a).double()
        else:
            sp = a.to_sparse()
            coact += torch.sparse.mm(sp.t(), sp).to_dense().double()
        bar.update(b)
    bar.close()

    n_tokens = n_docs * T
    set_id = features.name
    tok = getattr(model, "tokenizer", None)
    rows: dict[str, list[dict[str, Any]]] = {k_: [] for k_ in ("features", "examples", "histograms",
                                                               "logit_effects", "coactivation")}
    for i, label in enumerate(features.labels):
        rows["features"].append({"set_id": set_id, "feature": i, "label": label, "n_active": int(n_active[i]),
                                 "density": float(n_active[i]) / n_tokens,
                                 "max_act": float(vmax[i]), "mean_act": float(total[i]) / n_tokens})
    # top examples (only real, active entries)
    for j in range(top_v.shape[0]):
        for i in range(n):
            if top_v[j, i] > threshold:
                rows["examples"].append(_example(set_id, i, "top", j, top_g[j, i], top_v[j, i], top_ctx[j, i],
                                                 docs, T, before, after, tok))
    # quantile samples: equal-count bands of the reservoir's values, a few examples from each
    for i in range(n):
        live = torch.isfinite(res_key[:, i]) if res_key.numel() else torch.zeros(0, dtype=torch.bool)
        idx = live.nonzero().squeeze(1)
        if not len(idx):
            continue
        order = idx[res_v[idx, i].argsort(descending=True)]
        rank = 0
        for band in torch.tensor_split(order, min(bands, len(order))):
            for j in band[:per_band]:
                rows["examples"].append(_example(set_id, i, "quantile", rank, res_g[j, i], res_v[j, i], res_ctx[j, i],
                                                 docs, T, before, after, tok))
                rank += 1
    lo = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), edges])
    hi = torch.cat([edges, torch.tensor([math.inf], dtype=torch.float64)])
    h = hist.view(n, n_bins)
    for i, bb in h.nonzero().tolist():
        rows["histograms"].append({"set_id": set_id, "feature": i, "bin": bb, "lo": _finite(lo[bb]),
                                   "hi": _finite(hi[bb]), "count": int(h[i, bb])})
    effects = logit_effects(model, features)
    if effects is not None:
        for i in range(n):
            for sign, order in ((1, effects[i].topk(n_logits).indices), (-1, (-effects[i]).topk(n_logits).indices)):
                for rank, t in enumerate(order.tolist()):
                    rows["logit_effects"].append({"set_id": set_id, "feature": i, "sign": sign, "rank": rank,
                                                  "token_id": t, "token": _token(tok, t),
                                                  "effect": float(effects[i, t])})
    diag = coact.diagonal().clamp_min(1)
    score = coact / (diag[:, None] * diag[None, :]).sqrt()
    score.fill_diagonal_(-1)
    m = min(n_coact, n - 1)
    if m > 0:
        sv, si = score.topk(m, dim=1)
        for i in range(n):
            for rank, (s, o) in enumerate(zip(sv[i].tolist(), si[i].tolist())):
                if s > 0:
                    rows["coactivation"].append({"set_id": set_id, "feature": i, "rank": rank, "other": o,
                                                 "score": s})
    store.replace_set({"set_id": set_id, "model": getattr(model, "name", ""), "site": site.name,
                       "kind": features.kind, "n_features": n, "n_tokens": n_tokens, "dataset": dataset,
                       "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, rows)
    return DashboardSummary(set_id, n, n_tokens, int((n_active > 0).sum()), time.monotonic() - t0)


def logit_effects(model: Any, features: FeatureSet) -> Tensor | None:
    """(n_features, vocab): each feature's write direction in the residual stream times W_U (the
    direct path to the logits, final norm ignored); None when the model has no unembedding or the
    features' write directions are unknown.

    Example::

        from mechscope.features import logit_effects
        effects = logit_effects(model, feats)    # (n_features, vocab), or None
        effects[0].topk(5).indices               # tokens feature 0 promotes most
    """
    try:
        w = model.weights()
    except (AttributeError, NotImplementedError):
        return None
    if w.W_U is None:
        return None
    d_model = w.W_U.shape[0]
    dirs = features.directions
    if dirs is None and features.kind == "neuron" and features.site.kind is Kind.MLP_POST and w.W_out is not None:
        dirs = w.W_out[features.site.layer][list(features.units)]  # (n, d_model): each unit's output row
    if dirs is None or dirs.shape[-1] != d_model:
        return None
    return (dirs.detach().float() @ w.W_U.detach().float()).cpu()


def _contexts(f: Tensor, r: Tensor, T: int, before: int, after: int) -> Tensor:
    """(k, n, W): feature values around each selected row r (k, n) of f (b, T, n), same feature."""
    doc, pos = r // T, r % T
    offs = torch.arange(-before, after + 1)
    p = (pos[..., None] + offs).clamp(0, T - 1)  # (k, n, W)
    feat = torch.arange(f.shape[-1])[None, :, None].expand_as(p)
    out = f[doc[..., None].expand_as(p), p, feat]
    valid = (pos[..., None] + offs >= 0) & (pos[..., None] + offs < T)
    return out.masked_fill(~valid, float("nan"))


def _merge(v0, g0, c0, v1, g1, c1, k, largest):
    v = torch.cat([v0, v1])
    keep_v, keep = v.topk(min(k, v.shape[0]), dim=0, largest=largest)
    g = torch.cat([g0, g1]).gather(0, keep)
    c = torch.cat([c0, c1]).gather(0, keep[..., None].expand(-1, -1, c1.shape[-1]))
    return keep_v, g, c


def _merge_keys(k0, vals0, k1, vals1, size):
    keys = torch.cat([k0, k1])
    kept, keep = keys.topk(min(size, keys.shape[0]), dim=0, largest=False)
    out = []
    for a, b in zip(vals0, vals1):
        both = torch.cat([a, b])
        idx = keep if both.dim() == 2 else keep[..., None].expand(-1, -1, both.shape[-1])
        out.append(both.gather(0, idx))
    return kept, tuple(out)


def _example(set_id, i, kind, rank, g, v, ctx, docs, T, before, after, tok) -> dict[str, Any]:
    g = int(g)
    doc, pos = g // T, g % T
    lo, hi = max(0, pos - before), min(T, pos + after + 1)
    ids = docs[doc, lo:hi].tolist()
    acts = ctx[before - (pos - lo): before + (hi - pos)].tolist()
    return {"set_id": set_id, "feature": i, "kind": kind, "rank": rank, "doc": doc, "pos": pos,
            "activation": float(v), "tokens": [_token(tok, t) for t in ids], "acts": [round(a, 5) for a in acts]}


def _token(tok, t: int) -> str:
    if tok is None:
        return str(t)
    try:
        return tok.decode([t])
    except Exception:  # noqa: BLE001 - a tokenizer without decode: show the id
        return str(t)


def _finite(x: Tensor) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
