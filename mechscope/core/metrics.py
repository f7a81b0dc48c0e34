"""Metrics: named functions of a model's logits that return one value per prompt.

Each metric maps logits (batch, pos, vocab) to a tensor (batch,), so a batched sweep can read
every row separately and a Score can bootstrap over prompts. The name travels with the number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Metric:
    """A named metric. `higher_is_better` tells how to read it (loss and KL: False);
    `last_position_only` says it reads nothing but the last position's logits, so a sweep may
    compute only those (they arrive as (batch, 1, vocab)).

    Example::

        from mechscope.core import metrics
        ld = metrics.logit_diff(torch.tensor([5099]), torch.tensor([2322]))  # a Metric
        model = ms.load("smollm2-135m")
        logits = ms.run(model, model.to_tokens(["When Mary and John went out, John gave it to"])).logits
        ld(logits)                               # logits (batch, pos, vocab) -> (batch,)
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    higher_is_better: bool = True
    last_position_only: bool = False
    # the vocabulary columns (token ids) it reads, when it reads only a few: a sweep may then
    # compute only those logits (the others arrive as NaN)
    logit_columns: tuple[int, ...] | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        out = self.fn(logits)
        if out.dim() != 1 or out.shape[0] != logits.shape[0]:
            raise ValueError(f"metric {self.name} must return one value per prompt (batch,), "
                             f"got shape {tuple(out.shape)} for logits {tuple(logits.shape)}")
        return out


MAX_COLUMNS = 1024  # beyond this many token ids, computing all logits costs about the same


def metric_columns(metric: Any) -> Tensor | None:
    """The token ids `metric` reads, as a tensor, when it declares them (and reads only the last position)."""
    cols = getattr(metric, "logit_columns", None)
    if cols is None or not getattr(metric, "last_position_only", False):
        return None
    return torch.tensor(cols, dtype=torch.long)


def _last(logits: Tensor, positions: Tensor | None) -> Tensor:
    # (batch, pos, vocab) -> (batch, vocab) at each prompt's answer position (default: the last)
    if positions is None:
        return logits[:, -1]
    return logits[torch.arange(logits.shape[0], device=logits.device), positions.to(logits.device)]


def logit_diff(correct: Tensor, wrong: Tensor, positions: Tensor | None = None) -> Metric:
    """logit[correct] - logit[wrong] at the answer position; `correct`, `wrong`: (batch,) token ids."""
    def fn(logits: Tensor) -> Tensor:
        last = _last(logits, positions)
        rows = torch.arange(last.shape[0], device=last.device)
        return last[rows, correct.to(last.device)] - last[rows, wrong.to(last.device)]

    cols = tuple(sorted(set(correct.flatten().tolist()) | set(wrong.flatten().tolist())))
    return Metric("logit_diff", fn, last_position_only=positions is None,
                  logit_columns=cols if len(cols) <= MAX_COLUMNS else None)


def answer_logprob(answer: Tensor, positions: Tensor | None = None) -> Metric:
    """log p(answer) at the answer position."""
    def fn(logits: Tensor) -> Tensor:
        lp = _last(logits, positions).float().log_softmax(-1)
        return lp[torch.arange(lp.shape[0], device=lp.device), answer.to(lp.device)]

    return Metric("answer_logprob", fn, last_position_only=positions is None)


def next_token_loss(input_ids: Tensor, attention_mask: Tensor | None = None) -> Metric:
    """Mean cross-entropy of predicting each next token, per prompt (padding excluded)."""
    def fn(logits: Tensor) -> Tensor:
        lp = logits[:, :-1].float().log_softmax(-1)  # (batch, pos-1, vocab)
        target = input_ids[:, 1:].to(lp.device)
        nll = -lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (batch, pos-1)
        mask = torch.ones_like(nll) if attention_mask is None else attention_mask[:, 1:].to(nll)
        return (nll * mask).sum(1) / mask.sum(1).clamp_min(1)

    return Metric("next_token_loss", fn, higher_is_better=False)


def kl_from(reference_logits: Tensor, positions: Tensor | None = None) -> Metric:
    """KL(reference || model) of the next-token distribution at the answer position."""
    ref = _last(reference_logits, positions).float().log_softmax(-1)

    def fn(logits: Tensor) -> Tensor:
        lp = _last(logits, positions).float().log_softmax(-1)
        return F.kl_div(lp, ref.to(lp.device), log_target=True, reduction="none").sum(-1)

    return Metric("kl_divergence", fn, higher_is_better=False, last_position_only=positions is None)


def accuracy(answer: Tensor, positions: Tensor | None = None) -> Metric:
    """1 where the answer is the top token at the answer position, else 0."""
    def fn(logits: Tensor) -> Tensor:
        return (_last(logits, positions).argmax(-1) == answer.to(logits.device)).float()

    return Metric("accuracy", fn, last_position_only=positions is None)


def sequence_kl_from(reference_logits: Tensor, positions: Tensor | None = None) -> Metric:
    """KL(reference || model) of the next-token distribution, averaged over positions: all of
    them, or those where the mask `positions` (pos,) is true."""
    ref = reference_logits.float().log_softmax(-1)  # (batch, pos, vocab)
    keep = None if positions is None else positions.bool()

    def fn(logits: Tensor) -> Tensor:
        lp = logits.float().log_softmax(-1)
        kl = F.kl_div(lp, ref.to(lp.device), log_target=True, reduction="none").sum(-1)  # (batch, pos)
        return kl.mean(-1) if keep is None else kl[:, keep.to(kl.device)].mean(-1)

    return Metric("sequence_kl", fn, higher_is_better=False)


def sequence_logprob(answers: Tensor) -> Metric:
    """log p(answer) averaged over the positions that have one: `answers` (batch, pos) holds the
    expected token at each position, -1 where there is none."""
    def fn(logits: Tensor) -> Tensor:
        lp = logits.float().log_softmax(-1)  # (batch, pos, vocab)
        a = answers.to(lp.device)
        has = a >= 0
        got = lp.gather(-1, a.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (batch, pos)
        return (got * has).sum(-1) / has.sum(-1).clamp_min(1)

    return Metric("sequence_logprob", fn)
