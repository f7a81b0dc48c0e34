"""Every part of the zoo induction network replaced at once by code derived from it.

`zoo:induction` is a two-layer attention-only transformer (4 heads per layer, layer norms) trained on
random tokens with a repeated segment (mechscope.zoo.recipes.induction); its loss is measured on the
predictable part of the second copy. The tools say what each part does (head_roles, attention
patterns; `python -m mechscope.circuits.induction_code` prints them):

    layer 0   head 2 attends to the previous token (previous-token score 0.96); heads 1 and 3 attend
              mostly two tokens back (0.51 and 0.77 of their attention at offset 2); head 0 attends to
              itself and its recent past. On random tokens these patterns are positional: they hardly
              depend on the tokens (total variation to the batch-mean pattern 0.02-0.10).
    layer 1   all four heads are induction heads (prefix matching 0.85-0.87, OV copying 0.999) that
              match two tokens: the key's previous token against the query's token (K-composition
              with the previous-token head) and the key's token two back against the query's
              previous token (the two-back heads); with no match, heads 1 and 3 rest on position 0.

The code (`induction_parts`), one part per component, all substituted in one forward pass:

    embed            the token's embedding row W_E[t]: the network's own table, kept as it is. The
                     token identity is what every later rule moves; this part is not explained further.
    pos_embed        one constant vector, the mean of the network's position embeddings over positions:
                     the code claims position matters only through the attention patterns, which the
                     rules below compute from positions themselves.
    layer-0 heads    attention by position only: pattern[q, k] = causal softmax of the head's own
                     query and key maps applied to (mean token embedding + position embedding) through
                     its layer norm -- the network's QK circuit restricted to positions, computed once,
                     the same for every sequence (no fitted number).
    layer-1 heads    attention by token matches: pattern[q, k] = causal softmax over keys of
                         a * [token k-1 == token q] + b * [token k-2 == token q-1]
                         + c * [k == 0] + d * [k == q] + e * [k == q - 1]
                     with five numbers per head fitted on training sequences (least cross-entropy to
                     the network's own patterns at the measured queries; `fit_rule`).
    every head       the head's output z[q] = sum_k pattern[q, k] v[k] with the head's own values v
                     (its W_V applied, in the same forward pass, to the residual the code has built so
                     far); the model then applies its own W_O. What a head moves is the network's; where
                     it looks is the code's.
    unembedding      the final layer norm divides by one constant (the mean divisor on training
                     sequences, 1 fitted number) instead of each position's own; W_U is the network's.

`measure_jointly` substitutes all parts at once (core `run` with a list of `Replace`) and compares
with the same components mean-ablated (per position over reference sequences) and resample-ablated
(every component from the same reference sequence): loss recovered = (L_ablated - L_code) /
(L_ablated - L_clean), token-pooled over the measured targets, with a paired bootstrap CI over
sequences. `measure_alone` does the same for one part at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.interventions import Context, Intervention, Mean, Replace, Resample
from ..core.run import run
from ..core.site import Kind, Site
from ..models import wrap
from .explain import _losses, _recovered

TRAIN_SEED, HELD_OUT_SEED, REFERENCE_SEED = 1, 777, 778
MATCH_FEATURES = ("match_current", "match_previous", "first", "self", "previous")


# --- attention patterns by rule ------------------------------------------------------------------

def _causal(T: int) -> Tensor:
    return torch.ones(T, T, dtype=torch.bool).tril()


def match_features(ids: Tensor) -> Tensor:
    """(batch, q, k, 5) float indicators, in the order of MATCH_FEATURES:
    token k-1 == token q; token k-2 == token q-1; k == 0; k == q; k == q - 1."""
    b, T = ids.shape
    back1 = torch.full_like(ids, -1)
    back1[:, 1:] = ids[:, :-1]  # token one back (-1: none)
    back2 = torch.full_like(ids, -2)
    back2[:, 2:] = ids[:, :-2]  # token two back (-2: none, never equal to -1)
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    feats = [ids[:, :, None] == back1[:, None, :],
             back1[:, :, None] == back2[:, None, :],
             (k == 0).expand(b, T, T), (k == q).expand(b, T, T), (k == q - 1).expand(b, T, T)]
    return torch.stack(feats, -1).float()


def match_pattern(ids: Tensor, weights: Tensor) -> Tensor:
    """(batch, q, k): causal softmax over keys of match_features(ids) @ weights."""
    s = match_features(ids) @ weights.float()
    return s.masked_fill(~_causal(ids.shape[1]), float("-inf")).softmax(-1)


@torch.no_grad()
def positional_patterns(model: Any, layer: int = 0) -> Tensor:
    """(head, q, k): each head's causal softmax of its own query and key maps applied to the mean token
    embedding plus each position's embedding, through the layer's norm (the QK circuit on positions)."""
    model = wrap(model)
    w = model.weights()
    if layer != 0:
        raise ValueError("positional patterns read the embeddings: only layer 0 sees nothing else")
    x = w.W_E.float().mean(0) + w.W_pos.float()  # (pos, d_model)
    x = F.layer_norm(x, x.shape[-1:], w.ln1_w[layer].float(), w.ln1_b[layer].float())
    q = torch.einsum("pm,hmd->hpd", x, w.W_Q[layer].float()) + w.b_Q[layer].float()[:, None]
    k = torch.einsum("pm,hmd->hpd", x, w.W_K[layer].float()) + w.b_K[layer].float()[:, None]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return s.masked_fill(~_causal(x.shape[0]), float("-inf")).softmax(-1)


def fit_rule(patterns: Tensor, ids: Tensor, query_mask: Tensor, steps: int = 200) -> Tensor:
    """The MATCH_FEATURES weights minimising the cross-entropy of the rule's pattern against `patterns`
    (batch, q, k) of one head, over the queries in `query_mask` (batch, q). Convex; L-BFGS."""
    feats, P, qm = match_features(ids), patterns.float(), query_mask.float()
    causal = _causal(ids.shape[1])
    w = torch.zeros(feats.shape[-1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logp = (feats @ w).masked_fill(~causal, -1e9).log_softmax(-1)
        loss = -((P * logp).sum(-1) * qm).sum() / qm.sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


# --- the parts ------------------------------------------------------------------------------------

def _head_fn(layer: int, pattern_of, needs: Sequence[Site]):
    """z[q] = sum_k pattern[q, k] v[k] with the run's own values, for every head of `layer`."""
    vsite = Site(Kind.V, layer)

    def fn(x: Tensor, ctx: Context) -> Tensor:
        v = ctx.cache[vsite]  # (batch, pos, head, d_head)
        pat = pattern_of(ctx.input_ids.to(v.device)).to(v.dtype)  # (batch, head, q, k)
        return torch.einsum("bhqk,bkhd->bqhd", pat, v).to(x.dtype)

    fn.needs = tuple(needs)
    return fn


@dataclass(frozen=True)
class TrainData:
    ids: Tensor  # (batch, pos)
    query_mask: Tensor  # (batch, pos): queries whose next-token target is measured


def training_data(hp: dict[str, Any], n: int = 256, seed: int = TRAIN_SEED):
    """`n` sequences of the recipe's task drawn with `seed` (the fits' data; held-out sets use other seeds)."""
    from ..zoo.recipes.induction import make_batch

    return make_batch(n, hp, torch.Generator().manual_seed(seed))


def _query_mask(batch: Any) -> Tensor:
    qm = torch.zeros(batch.ids.shape, dtype=torch.bool)
    qm[:, :-1] = batch.repeat
    return qm


@torch.no_grad()
def induction_parts(model: Any, train_data: Any) -> list[dict[str, Any]]:
    """The code for every component (see the module docstring): dicts with name, site, heads, fn (an
    ExplanationFn with `needs`), lines (lines of code of the rule) and fitted (numbers fitted on
    `train_data`, a zoo induction Batch)."""
    model = wrap(model)
    w = model.weights()
    H = model.n_heads
    ids = train_data.ids
    parts: list[dict[str, Any]] = []

    W_E = w.W_E.detach()

    def embed(x: Tensor, ctx: Context) -> Tensor:
        return W_E[ctx.input_ids.to(W_E.device)].to(x.dtype)

    embed.needs = ()
    parts.append(dict(name="embed: token's own embedding row", site=Site(Kind.EMBED), heads=None, fn=embed,
                      lines=1, fitted=0, weights="W_E (the network's table)"))

    pos_mean = w.W_pos.detach().mean(0)

    def pos_embed(x: Tensor, ctx: Context) -> Tensor:
        return pos_mean.to(x.dtype).expand_as(x)

    pos_embed.needs = ()
    parts.append(dict(name="pos_embed: one constant (mean position embedding)", site=Site(Kind.POS_EMBED),
                      heads=None, fn=pos_embed, lines=1, fitted=0, weights="mean of W_pos"))

    pos_pat = positional_patterns(model, 0)  # (head, q, k)
    for h in range(H):
        fn = _head_fn(0, lambda t, h=h: pos_pat[:, : t.shape[1], : t.shape[1]].expand(t.shape[0], -1, -1, -1),
                      [Site(Kind.V, 0)])
        parts.append(dict(name=f"L0H{h}: positional attention (QK on positions)", site=Site(Kind.Z, 0), heads=[h],
                          fn=fn, lines=8, fitted=0, weights="W_E mean, W_pos, ln1, W_Q, W_K; values W_V"))

    clean = run(model, ids, capture=[Site(Kind.PATTERN, 1)]).cache[Site(Kind.PATTERN, 1)]
    qm = _query_mask(train_data)
    for h in range(H):
        wts = fit_rule(clean[:, h], ids, qm)
        fn = _head_fn(1, lambda t, wts=wts: match_pattern(t, wts)[:, None].expand(-1, H, -1, -1),
                      [Site(Kind.V, 1)])
        parts.append(dict(name=f"L1H{h}: two-token-match induction", site=Site(Kind.Z, 1), heads=[h], fn=fn,
                          lines=12, fitted=len(MATCH_FEATURES),
                          rule={n: round(float(v), 3) for n, v in zip(MATCH_FEATURES, wts)},
                          weights="values W_V"))

    scale_site = Site(Kind.LN_FINAL_SCALE)
    scale = float(run(model, ids, capture=[scale_site]).cache[scale_site].mean())

    def final_scale(x: Tensor, ctx: Context) -> Tensor:
        return torch.full_like(x, scale)

    final_scale.needs = ()
    parts.append(dict(name="unembed: final norm divides by a constant", site=scale_site, heads=None,
                      fn=final_scale, lines=1, fitted=1, weights="ln_final weight and bias, W_U, b_U"))
    return parts


# --- measuring ------------------------------------------------------------------------------------

def _where(part: dict[str, Any]) -> dict[str, Any]:
    return {} if part["heads"] is None else {"heads": list(part["heads"])}


@torch.no_grad()
def measure_jointly(model: Any, parts: Sequence[dict[str, Any]], data: Any, reference: Any, *, n_boot: int = 1000,
                    seed: int = 0, dataset: str = "held-out sequences") -> dict[str, Any]:
    """Loss recovered when every part in `parts` stands in for its component at once.

    data, reference  zoo induction Batches (the loss is on `data.repeat`; the ablations read `reference`)
    Returns the four token-pooled losses (clean, code, mean, resample) and Scores vs mean and resample
    ablation of the same components (all at once; resample takes every component from the same
    reference sequence).
    """
    model = wrap(model)
    ids, mask = data.ids, data.repeat
    sites = sorted({p["site"] for p in parts})
    ref = run(model, reference.ids, capture=sites).cache
    needs = sorted({s for p in parts for s in getattr(p["fn"], "needs", ())})
    runs: dict[str, list[Intervention]] = {
        "clean": [],
        "code": [Replace(p["site"], fn=p["fn"], **_where(p)) for p in parts],
        "mean": [Mean.of(p["site"], ref[p["site"]], **_where(p)) for p in parts],
        "resample": [Resample(p["site"], source=ref[p["site"]], seed=seed, **_where(p)) for p in parts],
    }
    losses = {k: _losses(run(model, ids, capture=needs if k == "code" else [], interventions=ivs).logits,
                         ids, mask, None) for k, ivs in runs.items()}
    keep = losses["clean"][1] > 0
    losses = {k: (s[keep], c[keep]) for k, (s, c) in losses.items()}
    pooled = {k: float(s.sum() / c.sum()) for k, (s, c) in losses.items()}
    how = {"components": [p["name"] for p in parts], "loss": "next-token cross-entropy on the repeat",
           "reference_n": int(reference.ids.shape[0])}
    scores = {kind: _recovered(losses[kind], losses["code"], losses["clean"], {**how, "ablation": kind}, dataset,
                               seed, n_boot) for kind in ("mean", "resample")}
    return {"loss_clean": pooled["clean"], "loss_code": pooled["code"], "loss_mean_ablated": pooled["mean"],
            "loss_resample_ablated": pooled["resample"], "vs_mean": scores["mean"], "vs_resample": scores["resample"]}
