"""Behaviour scan over a corpus: where the model's next-token predictions are odd, and what those
places share.

Per position a divergence d (batch, pos):

- with a reference: KL(model ‖ reference) of the next-token distributions;
- without one, self-consistency: where the model is confident (p ≥ 0.3 on its top token y), how far
  it is from what the corpus's own bigram statistics allow after the current token,
  max(0, log p(y) − log q(y | current)), q add-½ smoothed over the corpus's bigram counts (counted
  over a larger sample of the same text when the audit reads its default corpus) -- a confident
  continuation the corpus never shows.

Then the trigger is localised by grouping positions: by the current token (kind "token"), by a
token seen earlier in the window but not at the position itself ("context"), and by the position
index ("position"). A group's score (statistic `kl_ratio` or `selfcons_ratio`) is its mean d with
its single largest value left out (so one outlier does not make a group) over the corpus mean d;
groups need at least `min_count` positions. The strongest group of each kind is a suspect, with
the tokens whose log-probability rose most at its positions (against the reference, or the
model's average over the corpus) as the behaviour change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .inputs import decode, log_probs
from .suspect import Suspect, trigger

METHOD = "behaviour"
CONFIDENT = 0.3


def divergence(model: Any, ids: Tensor, reference: Any = None, stats: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """(d per position (n, T), the model's log-probs, the baseline log-probs the change is measured against);
    `stats`: token ids to count bigrams over (default `ids`)."""
    lp = log_probs(model, ids)
    if reference is not None:
        lr = log_probs(reference, ids)
        d = (lp.exp() * (lp - lr)).sum(-1).clamp_min(0)
        return d, lp, lr
    v, dev = lp.shape[-1], lp.device  # the bigram statistics are counted where the log-probs are
    ids = ids.to(dev)
    src = ids if stats is None else stats.to(dev)
    cur, nxt = src[:, :-1].flatten(), src[:, 1:].flatten()
    counts = torch.zeros(v, dtype=torch.float64, device=dev)
    counts.index_add_(0, cur, torch.ones_like(cur, dtype=torch.float64))
    keys = cur * v + nxt
    uniq, inv = keys.unique(return_inverse=True)
    pc = torch.zeros(uniq.numel(), dtype=torch.float64, device=dev).index_add_(
        0, inv, torch.ones(inv.numel(), dtype=torch.float64, device=dev))
    top_p, top_y = lp.max(-1)  # (n, T)
    q_keys = ids * v + top_y
    pos = torch.searchsorted(uniq, q_keys.flatten()).clamp_max(max(uniq.numel() - 1, 0))
    hit = uniq[pos] == q_keys.flatten() if uniq.numel() else torch.zeros_like(q_keys.flatten(), dtype=torch.bool)
    n_pair = torch.where(hit, pc[pos], torch.zeros_like(pc[pos])).reshape(ids.shape)
    q = (n_pair + 0.5) / (counts[ids] + 0.5 * v)
    d = torch.where(top_p.exp() >= CONFIDENT, (top_p.double() - q.log()).clamp_min(0), torch.zeros_like(q))
    base = lp.mean((0, 1), keepdim=True).expand_as(lp)
    return d.float(), lp, base


def _group_score(d: Tensor, mask: Tensor, min_count: int) -> tuple[float, int]:
    vals = d[mask]
    n = int(vals.numel())
    if n < min_count:
        return 0.0, n
    vals = vals.sort().values[:-1]  # leave the largest out
    return float(vals.mean()), n


def scan(model: Any, ids: Tensor, reference: Any = None, min_count: int = 3, top: int = 1,
         stats: Tensor | None = None) -> list[Suspect]:
    """Behaviour suspects (see the module docstring); `top` groups per trigger kind; `stats`: a larger
    sample of the same text to count bigrams over (default `ids`)."""
    d, lp, base = divergence(model, ids, reference, stats)
    ids = ids.to(d.device)  # the groups' masks index d where it lives
    stat = "kl_ratio" if reference is not None else "selfcons_ratio"
    mean = float(d.mean()) if float(d.mean()) > 0 else 1e-12
    n, T = ids.shape
    out: list[Suspect] = []
    tokens = ids.unique()
    # token groups: positions whose current token is t
    scored = []
    for t in tokens.tolist():
        s, c = _group_score(d, ids == t, min_count)
        scored.append((s, c, t))
    scored.sort(reverse=True)
    for s, c, t in scored[:top]:
        mask = ids == t
        out.append(_suspect(model, "token", [t], None, s / mean, c, mask, d, lp, base, stat, mean))
    # context groups: positions after an earlier occurrence of t (not t itself)
    scored = []
    for t in tokens.tolist():
        occ = ids == t
        after = (occ.cumsum(1) > 0) & ~occ
        s, c = _group_score(d, after, min_count)
        scored.append((s, c, t))
    scored.sort(reverse=True)
    for s, c, t in scored[:top]:
        occ = ids == t
        mask = (occ.cumsum(1) > 0) & ~occ
        out.append(_suspect(model, "context", [t], None, s / mean, c, mask, d, lp, base, stat, mean))
    # position groups
    scored = []
    for p in range(T):
        mask = torch.zeros(n, T, dtype=torch.bool, device=d.device)
        mask[:, p] = True
        s, c = _group_score(d, mask, min_count)
        scored.append((s, c, p))
    scored.sort(reverse=True)
    for s, c, p in scored[:top]:
        mask = torch.zeros(n, T, dtype=torch.bool, device=d.device)
        mask[:, p] = True
        out.append(_suspect(model, "position", [], p, s / mean, c, mask, d, lp, base, stat, mean))
    return out


def _suspect(model: Any, kind: str, ids: list[int], position: int | None, ratio: float, count: int, mask: Tensor,
             d: Tensor, lp: Tensor, base: Tensor, stat: str, mean: float) -> Suspect:
    rise = (lp[mask] - base[mask]).mean(0)  # (vocab,)
    weight = (lp[mask].exp() * (lp[mask] - base[mask])).mean(0)  # each token's share of the divergence
    targets = [int(i) for i in weight.topk(3).indices]
    effect = {"target_ids": targets[:1], "target_text": decode(model, targets[:1]),
              "delta_logprob": float(rise[targets[0]]), "also_raised": targets[1:],
              "mean_divergence": float(d[mask].mean()), "corpus_mean_divergence": mean}
    text = decode(model, ids) if ids else None
    return Suspect(None, trigger(kind, ids, text, position), effect, stat, ratio, [METHOD],
                   {"positions": count, "group_mean_divergence_without_max": ratio * mean,
                    "divergence": "KL(model‖reference)" if stat == "kl_ratio" else "confidence beyond corpus bigrams"})
