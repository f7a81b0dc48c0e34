"""Automated interpretation without a language model: search the rule grammar for each feature.

Steps, for each feature, on a training split of documents:
1. token-set rules from sufficient statistics: per token id, the count and the sum of the
   feature's values; sets are grown greedily from the tokens with the highest mean value, and
   the prefix with the best Pearson correlation between the rule's mask and the values is kept
   (correlation of a 0/1 mask needs only these sums). The same for previous tokens and for
   bigrams seen at the feature's top activations;
2. fixed rules (token regexes, positions, inside quotes, inside code) scored for every feature
   at once;
3. And / Or of the two best rules of different families;
4. the best rule by training correlation becomes an Explanation whose scale is the feature's
   mean value where the rule holds.
Each explanation is then scored on held-out documents: Pearson correlation of prediction and
value, and precision / recall of "the rule holds" against "the feature is active".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .rules import (REGEXES, And, Bigram, CurrentToken, Explanation, InsideCode, InsideQuotes, Or, Position,
                    PreviousToken, Rule, TokenRegex, TokenTable)


@dataclass(frozen=True)
class Heldout:
    """How well an explanation predicts a feature on documents it was not fitted on."""

    corr: float
    precision: float
    recall: float
    n_tokens: int


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of `x` and `y` (any shapes, flattened); 0 when either is constant."""
    x, y = x.double().flatten(), y.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    den = (x.norm() * y.norm()).item()
    return float((x @ y).item() / den) if den > 0 else 0.0


def _mask_corr(cnt: Tensor, sy: Tensor, n: int, mean_y: float, sd_y: float) -> Tensor:
    """Correlation of a 0/1 mask with y from the mask's count and the sum of y under it."""
    p = cnt / n
    cov = sy / n - p * mean_y
    sd_m = (p * (1 - p)).clamp_min(0).sqrt()
    return torch.where((sd_m > 0) & (cnt > 0), cov / (sd_m * sd_y + 1e-30), torch.zeros_like(cov))


def _best_set(keys: Tensor, y: Tensor, n_keys: int, max_size: int) -> tuple[frozenset[int], float]:
    """The prefix (by mean y per key) of at most max_size keys whose mask correlates best with y."""
    ok = keys >= 0
    cnt = torch.bincount(keys[ok], minlength=n_keys).double()
    sy = torch.bincount(keys[ok], weights=y[ok].double(), minlength=n_keys)
    mean = torch.where(cnt > 0, sy / cnt.clamp_min(1), torch.full_like(sy, -float("inf")))
    order = mean.argsort(descending=True)[:max_size]
    order = order[cnt[order] > 0]
    if not len(order):
        return frozenset(), 0.0
    n, my, sdy = y.numel(), float(y.double().mean()), float(y.double().std(unbiased=False))
    if sdy == 0:
        return frozenset(), 0.0
    corr = _mask_corr(cnt[order].cumsum(0), sy[order].cumsum(0), n, my, sdy)
    k = int(corr.argmax())
    return frozenset(int(t) for t in order[:k + 1]), float(corr[k])


def explain_feature(values: Tensor, table: TokenTable, *, fixed: dict[Rule, Tensor] | None = None,
                    max_set: int = 12) -> tuple[Explanation, float]:
    """The best rule for one feature's values (doc, pos) on `table`, and its training correlation."""
    y = values.flatten().double()
    vocab = int(table.ids.max()) + 1
    cands: list[tuple[str, Rule, float]] = []
    s, c = _best_set(table.ids.flatten(), y, vocab, max_set)
    if s:
        cands.append(("token", CurrentToken(s), c))
    s, c = _best_set(table.prev.flatten(), y, vocab, max_set)
    if s:
        cands.append(("previous", PreviousToken(s), c))
    # bigrams among the feature's strongest tokens
    top = y.topk(min(64, y.numel())).indices
    pair_key = table.prev.flatten() * vocab + table.ids.flatten()
    seen = torch.unique(pair_key[top][table.prev.flatten()[top] >= 0])
    keys = torch.where(torch.isin(pair_key, seen), pair_key, torch.full_like(pair_key, -1))
    remap = {int(k): i for i, k in enumerate(seen.tolist())}
    if remap:
        dense = torch.tensor([remap.get(int(k), -1) for k in keys.tolist()])
        s, c = _best_set(dense, y, len(remap), max_set)
        if s:
            inv = seen.tolist()
            cands.append(("bigram", Bigram(frozenset((inv[i] // vocab, inv[i] % vocab) for i in s)), c))
    for rule, mask in (fixed or fixed_masks(table)).items():
        cands.append((type(rule).__name__, rule, pearson(mask.float(), y)))
    cands.sort(key=lambda t: -t[2])
    best_family, best, best_c = cands[0]
    other = next((t for t in cands[1:] if t[0] != best_family), None)
    if other is not None:
        for combo in (And(best, other[1]), Or(best, other[1])):
            cc = pearson(combo.mask(table).float(), y)
            if cc > best_c + 1e-3:
                best, best_c = combo, cc
    m = best.mask(table).flatten()
    scale = float(y[m].mean()) if m.any() else 0.0
    return Explanation(best, scale), best_c


def fixed_masks(table: TokenTable) -> dict[Rule, Tensor]:
    """Masks of the rules that do not depend on the feature, computed once per table."""
    T = table.ids.shape[1]
    rules: list[Rule] = [TokenRegex(p, name) for p, name in REGEXES]
    rules += [Position("==", 0), Position("<", 4), Position(">=", T // 2), InsideQuotes(), InsideCode()]
    return {r: r.mask(table).flatten() for r in rules}


def heldout(explanation: Explanation, values: Tensor, table: TokenTable, threshold: float = 0.0) -> Heldout:
    """Score `explanation` on held-out tokens: correlation of its prediction with the feature `values`, and the
    precision and recall of "it fires" against "the value exceeds `threshold`"."""
    pred = explanation.predict(table).flatten()
    y = values.flatten()
    fires, active = pred != 0, y > threshold
    tp = float((fires & active).sum())
    return Heldout(pearson(pred, y), tp / max(1.0, float(fires.sum())), tp / max(1.0, float(active.sum())),
                   int(y.numel()))


def explain_all(values: Tensor, table: TokenTable, train_docs: Tensor, test_docs: Tensor, threshold: float = 0.0,
                **kw: Any) -> list[tuple[Explanation, float, Heldout]]:
    """Explain every feature of `values` (doc, pos, feature): fit on train_docs, score on test_docs
    (a token counts as active where its value exceeds `threshold`)."""
    train, test = table.subset(train_docs), table.subset(test_docs)
    fixed = fixed_masks(train)
    out = []
    for i in range(values.shape[-1]):
        expl, c = explain_feature(values[train_docs, :, i], train, fixed=fixed, **kw)
        out.append((expl, c, heldout(expl, values[test_docs, :, i], test, threshold)))
    return out
