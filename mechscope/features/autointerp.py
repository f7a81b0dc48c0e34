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
`fit_clauses` fits values, not only firing: a few clauses, each a rule of the same grammar (plus
"latent j of the set was active on the previous token"), chosen greedily on the training split:
1. the candidate rule that most lowers the squared error of the residual (the feature's values
   minus the current prediction) is added: for a 0/1 mask m and residual r the least-squares value
   is (m.r)/(m.m) and the error falls by (m.r)^2/(m.m), so token sets are again prefixes of tokens
   sorted by their mean residual (both ends: a clause may also lower the prediction);
2. the values of every clause so far are refitted jointly by least squares;
3. it stops after `max_clauses` clauses or when a further clause would lower the error by less
   than `min_gain` of the values' sum of squares (the first clause is always kept, as the one-rule
   search always answers with its best rule). Choosing sets of tokens from data overfits, so rules
   are searched on one half of the training documents and judged on the other (the value fitted
   on the first half must lower the error on the second); values are then fitted on all of them.
No clause is a table indexed by the input: each is a rule a person can read, with one fitted value.
Each explanation is then scored on held-out documents: Pearson correlation of prediction and
value, and precision / recall of "the rule holds" against "the feature is active".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .rules import (REGEXES, And, Bigram, CurrentToken, Explanation, InsideCode, InsideQuotes, Or, Position,
                    PreviousLatent, PreviousToken, Rule, TokenRegex, TokenTable, previous_above)


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


def _best_gain_set(keys: Tensor, r: Tensor, n_keys: int, max_size: int, prior: float = 3.0
                   ) -> tuple[frozenset[int], float]:
    """The prefix (of keys sorted by mean residual, from either end) of at most max_size keys whose
    mask lowers the squared error of `r` most with one least-squares value; and that reduction.
    Keys are sorted by their residual's sum over (count + `prior`): a mean shrunk towards 0, so that
    a key seen once or twice with a large residual by chance does not lead the list."""
    ok = keys >= 0
    cnt = torch.bincount(keys[ok], minlength=n_keys).double()
    sr = torch.bincount(keys[ok], weights=r[ok], minlength=n_keys)
    seen = cnt > 0
    if not bool(seen.any()):
        return frozenset(), 0.0
    mean = torch.where(seen, sr / (cnt + prior), torch.zeros_like(sr))
    best: tuple[frozenset[int], float] = (frozenset(), 0.0)
    for sign in (1.0, -1.0):
        order = (sign * mean).masked_fill(~seen, -float("inf")).argsort(descending=True)[:max_size]
        order = order[cnt[order] > 0]
        gain = sr[order].cumsum(0) ** 2 / cnt[order].cumsum(0)
        k = int(gain.argmax())
        if float(gain[k]) > best[1]:
            best = (frozenset(int(t) for t in order[:k + 1]), float(gain[k]))
    return best


def _gain(mask: Tensor, r: Tensor) -> float:
    """How much one least-squares value on the 0/1 `mask` lowers the squared error of `r`."""
    n = float(mask.sum())
    return float((r[mask].sum()) ** 2 / n) if n > 0 else 0.0


def previous_latent_masks(table: TokenTable, threshold: float = 0.0) -> Tensor:
    """(tokens, feature) float 0/1: latent j was above `threshold` on the previous token (needs the
    table's `latents`); the masks of every `PreviousLatent(j, above=threshold)` at once (pass the same
    threshold to `fit_clauses` as `prev_above`)."""
    if table.latents is None:
        raise ValueError("previous-latent rules need the set's values: TokenTable.with_latents(values)")
    return previous_above(table.latents, threshold).flatten(0, 1).float()


def _clause_candidates(r: Tensor, sel: Tensor, table: TokenTable, fixed: dict[Rule, Tensor],
                       prev_latents: Tensor | None, exclude: int | None, vocab: int, max_set: int,
                       prev_above: float = 0.0) -> list[tuple[str, Rule, float]]:
    """Each family's best rule for the residual `r` on the tokens `sel` (bool, flattened), with its gain."""
    none = torch.full_like(table.ids.flatten(), -1)
    cands: list[tuple[str, Rule, float]] = []
    s, g = _best_gain_set(torch.where(sel, table.ids.flatten(), none), r, vocab, max_set)
    if s:
        cands.append(("token", CurrentToken(s), g))
    s, g = _best_gain_set(torch.where(sel, table.prev.flatten(), none), r, vocab, max_set)
    if s:
        cands.append(("previous", PreviousToken(s), g))
    top = r.masked_fill(~sel, 0).abs().topk(min(64, r.numel())).indices
    pair_key = table.prev.flatten() * vocab + table.ids.flatten()
    seen = torch.unique(pair_key[top][table.prev.flatten()[top] >= 0])
    if len(seen):
        dense = torch.searchsorted(seen, pair_key).clamp_max(len(seen) - 1)
        dense = torch.where((seen[dense] == pair_key) & sel, dense, torch.full_like(dense, -1))
        s, g = _best_gain_set(dense, r, len(seen), max_set)
        if s:
            inv = seen.tolist()
            cands.append(("bigram", Bigram(frozenset((inv[i] // vocab, inv[i] % vocab) for i in s)), g))
    for rule, mask in fixed.items():
        cands.append((type(rule).__name__, rule, _gain(mask & sel, r)))
    if prev_latents is not None:
        P, rs = prev_latents[sel], r[sel].float()
        cnt = P.sum(0).double()
        gains = torch.where(cnt > 0, (rs @ P).double() ** 2 / cnt.clamp_min(1), torch.zeros_like(cnt))
        if exclude is not None:
            gains[exclude] = -1.0
        j = int(gains.argmax())
        if float(gains[j]) > 0:
            cands.append(("latent", PreviousLatent(j, above=prev_above), float(gains[j])))
    cands.sort(key=lambda t: -t[2])
    return cands


def _honest_gain(mask: Tensor, r: Tensor, a: Tensor, b: Tensor) -> float:
    """How much the value fitted on tokens `a` lowers the squared error of `r` on tokens `b`."""
    ma, mb = mask & a, mask & b
    n = float(ma.sum())
    if n == 0:
        return 0.0
    v = float(r[ma].sum()) / n
    return 2 * v * float(r[mb].sum()) - v * v * float(mb.sum())


def fit_clauses(values: Tensor, table: TokenTable, *, fixed: dict[Rule, Tensor] | None = None,
                prev_latents: Tensor | None = None, prev_above: float = 0.0, exclude: int | None = None,
                max_set: int = 12,
                max_clauses: int = 4, min_gain: float = 0.01, shortlist: int = 6, crossfit: bool = True
                ) -> tuple[Explanation, float]:
    """An explanation of a few clauses with least-squares values for one feature's values (doc, pos)
    on `table` (see the module docstring), and its training correlation. `prev_latents` (tokens,
    feature), from `previous_latent_masks(table, prev_above)`, adds the rules "latent j was above
    `prev_above` on the previous token"; `exclude` is the explained feature's own index there (never read).

    The training documents are split in two (alternate documents): rules are searched on the first
    part, and a clause is chosen and kept by how much its value, fitted on the first part, lowers
    the error on the second (each clause after the first must lower it by `min_gain` of the second
    part's sum of squares);
    the kept clauses' values are then fitted on all the training documents. `crossfit=False` (or
    fewer than four documents) searches and judges on all of them."""
    y = values.flatten().double()
    fixed = fixed if fixed is not None else fixed_masks(table)
    vocab = int(table.ids.max()) + 1
    n_docs, n_pos = table.ids.shape
    doc = torch.arange(n_docs).repeat_interleave(n_pos)
    split = crossfit and n_docs >= 4
    a = doc % 2 == 0 if split else torch.ones_like(doc, dtype=torch.bool)
    b = ~a if split else a
    if float((y ** 2).sum()) == 0:
        return Explanation(Position("<", 0), 0.0), 0.0
    total_b = float((y[b] ** 2).sum())
    rules: list[Rule] = []
    masks: list[Tensor] = []
    w = torch.zeros(0, dtype=torch.float64)
    r = y.clone()
    for _ in range(max_clauses):
        cands = _clause_candidates(r, a, table, fixed, prev_latents, exclude, vocab, max_set,
                                   prev_above)[:shortlist]
        if not cands:
            break
        shortlisted = [rule for _, rule, _ in cands]
        other = next((t for t in cands[1:] if t[0] != cands[0][0]), None)
        if other is not None:
            shortlisted += [And(cands[0][1], other[1]), Or(cands[0][1], other[1])]
        scored = [(_honest_gain(rule.mask(table).flatten(), r, a, b), k, rule) for k, rule in enumerate(shortlisted)]
        g, _, best = max(scored, key=lambda t: (t[0], -t[1]))
        if rules and g < min_gain * total_b:
            break
        rules.append(best)
        masks.append(best.mask(table).flatten().double())
        M = torch.stack(masks, dim=1)  # (tokens, clauses)
        w = torch.linalg.lstsq(M.T @ M + 1e-9 * torch.eye(len(masks), dtype=torch.float64), M.T @ y).solution
        r = y - M @ w
    if not rules:
        return Explanation(Position("<", 0), 0.0), 0.0
    expl = Explanation(rules[0], float(w[0]), tuple((rl, float(v)) for rl, v in zip(rules[1:], w[1:].tolist())))
    return expl, pearson(M @ w, y)  # the fitted prediction itself (y - r carries rounding noise)


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


CANDIDATES = ("rule", "clauses", "clauses_all")


@dataclass(frozen=True, eq=False)
class Fold:
    """One fold of the fitting documents: a table to fit on (with its fixed masks and previous-latent
    masks) and the documents kept out of that fit, to judge it on."""

    fit: TokenTable
    fixed: dict[Rule, Tensor]
    prev_latents: Tensor | None
    fit_docs: Tensor  # (docs,) indices into the fitting documents
    judge: TokenTable
    judge_docs: Tensor


class Chooser:
    """Per feature, the explanation family that predicts best on fitting documents it was not fitted on.

    The fitting documents are split into `n_folds` folds (alternating documents). For each fold,
    every candidate family is fitted on the other folds and its squared error is summed on this
    one: the one rule (`explain_feature`), clauses with the rule search split in two
    (`fit_clauses`) and clauses searched and judged on all their documents (`fit_clauses(...,
    crossfit=False)`). The family of least error over the folds is then fitted on all the fitting
    documents. Only the fitting documents are read: the held-out half never chooses. The folds'
    tables and masks are built once, for every feature of a set. `fit(..., judge=)` replaces the
    squared error by another error on the judged documents (the pipeline's: the model's loss with
    each candidate substituted for the feature).

    Example::

        chooser = Chooser(fit_table, prev_latents=previous_latent_masks(fit_table), n_folds=2)
        expl, fit_corr, info = chooser.fit(values[fit_docs, :, i], exclude=i)   # values (doc, pos, feature)
        info["chosen"], info["fold_error"]       # "clauses_all", {"rule": ..., "clauses": ..., ...}
    """

    def __init__(self, table: TokenTable, *, fixed: dict[Rule, Tensor] | None = None,
                 prev_latents: Tensor | None = None, prev_above: float = 0.0, n_folds: int = 2,
                 candidates: tuple[str, ...] = CANDIDATES):
        bad = [c for c in candidates if c not in CANDIDATES]
        if bad or not candidates:
            raise ValueError(f"candidates must be among {CANDIDATES}; got {candidates}")
        n_docs, n_pos = table.ids.shape
        if n_folds < 2 or n_docs < 2 * n_folds:
            raise ValueError(f"{n_folds} folds of {n_docs} fitting documents: need n_folds >= 2 and two documents "
                             "per fold at least")
        self.table, self.prev_above, self.candidates = table, prev_above, candidates
        self.fixed = fixed if fixed is not None else fixed_masks(table)
        self.prev_latents = prev_latents
        docs = torch.arange(n_docs)
        self.folds = []
        for k in range(n_folds):
            judge, rest = docs[docs % n_folds == k], docs[docs % n_folds != k]
            tokens = (rest[:, None] * n_pos + torch.arange(n_pos)).flatten()
            sub = table.subset(rest)
            self.folds.append(Fold(sub, {r: m[tokens] for r, m in self.fixed.items()},
                                   None if prev_latents is None else prev_latents[tokens], rest,
                                   table.subset(judge), judge))

    def _fit(self, family: str, values: Tensor, table: TokenTable, fixed: dict[Rule, Tensor],
             prev_latents: Tensor | None, exclude: int | None, max_clauses: int) -> tuple[Explanation, float]:
        if family == "rule":
            return explain_feature(values, table, fixed=fixed)
        return fit_clauses(values, table, fixed=fixed, prev_latents=prev_latents, prev_above=self.prev_above,
                           exclude=exclude, max_clauses=max_clauses, crossfit=family == "clauses")

    def fit(self, values: Tensor, *, exclude: int | None = None, max_clauses: int = 4,
            judge: Callable[[int, list[Explanation]], list[float]] | None = None,
            ) -> tuple[Explanation, float, dict[str, Any]]:
        """The chosen explanation of one feature's values (doc, pos) on the fitting documents, its
        training correlation, and how it was chosen: `chosen` (the family), `fold_error` (each
        family's error summed over the folds' judged documents).

        The error is the squared error of the prediction, as a share of the values' sum of squares
        on the judged documents; or, with `judge`, what `judge(k, explanations)` returns for fold k
        and one explanation per candidate family fitted on fold k's other documents: one error per
        explanation, lower is better, computed on (some of) fold k's judged documents (e.g. the
        model's loss with the explanation substituted for the feature)."""
        total = float((values.double() ** 2).sum())
        error = {c: 0.0 for c in self.candidates}
        for k, f in enumerate(self.folds):
            expls = [self._fit(c, values[f.fit_docs], f.fit, f.fixed, f.prev_latents, exclude, max_clauses)[0]
                     for c in self.candidates]
            if judge is not None:
                errs = judge(k, expls)
            else:
                y = values[f.judge_docs].double()
                errs = [float(((e.predict(f.judge).double() - y) ** 2).sum()) / (total if total > 0 else 1.0)
                        for e in expls]
            for c, e in zip(self.candidates, errs):
                error[c] += float(e)
        chosen = min(self.candidates, key=lambda c: (error[c], self.candidates.index(c)))
        expl, corr = self._fit(chosen, values, self.table, self.fixed, self.prev_latents, exclude, max_clauses)
        return expl, corr, {"chosen": chosen, "fold_error": {k: round(v, 6) for k, v in error.items()},
                            "folds": len(self.folds), "judged_by": "squared error" if judge is None else "judge"}
