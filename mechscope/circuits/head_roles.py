"""Attention-head roles scored from attention patterns on repeated random tokens.

The probe: a batch of sequences [BOS?] r_1 ... r_n r_1 ... r_n of uniformly random tokens.
For each head, average over the queries of the second copy (and all queries for previous-token):
    previous_token   attention from position q to q - 1
    duplicate_token  attention from a second-copy token to the same token in the first copy (q - n)
    induction        attention to the token after that earlier copy (q - n + 1): prefix matching
    bos              attention to position 0 (the first token, BOS when one is prepended)
Scores lie in [0, 1]. They say what a head attends to, not what it does with it: pair them with
`copying_scores` (what the OV circuit writes) and an ablation of the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import Intervention
from ..core.run import run
from ..core.site import Kind, Site
from ..models import wrap


@dataclass(frozen=True)
class HeadRoles:
    """Each score is (layer, head); `n`, `batch` and `seed` describe the probe.

    Example::

        from mechscope.circuits import head_roles
        roles = head_roles(ms.load("zoo:induction-quick"), n=12)
        roles.induction                          # (layer, head)
        roles.top("previous_token", k=2)         # [(layer, head, score), ...]
    """

    previous_token: Tensor
    duplicate_token: Tensor
    induction: Tensor
    bos: Tensor
    n: int
    batch: int
    seed: int

    def top(self, role: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads for `role` as (layer, head, score)."""
        return top_heads(getattr(self, role), k)

    def _repr_html_(self) -> str:
        from ..report.notebook import head_roles_html

        return head_roles_html(self)


def top_heads(scores: Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The k highest of (layer, head) scores as (layer, head, score)."""
    vals, idx = scores.flatten().topk(min(k, scores.numel()))
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1], float(v)) for v, i in zip(vals, idx)]


def repeated_tokens(vocab: int, n: int, batch: int, seed: int = 0, bos: int | None = None,
                    low: int = 0) -> Tensor:
    """(batch, [1 +] 2n) token ids: random r_1..r_n twice, with `bos` first when given.

    Example::

        from mechscope.circuits import repeated_tokens
        ids = repeated_tokens(vocab=48, n=12, batch=16, bos=0)   # (16, 25)
        ms.run(ms.load("zoo:induction-quick"), ids, capture=["attn.pattern.1"])
    """
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(low, vocab, (batch, n), generator=g)
    ids = torch.cat([half, half], 1)
    if bos is not None:
        ids = torch.cat([torch.full((batch, 1), bos), ids], 1)
    return ids


def head_roles(model: Any, n: int = 20, batch: int = 16, seed: int = 0, bos: int | None = None,
               vocab: int | None = None, low: int = 0, interventions: Sequence[Intervention] = ()) -> HeadRoles:
    """Score every head on a repeated-random-token probe (see the module docstring).

    `interventions` apply during the probe run (e.g. ablate an earlier head to see a role vanish).

    Example::

        from mechscope.circuits import head_roles
        roles = head_roles(ms.load("zoo:induction-quick"), n=12, batch=16)   # 2n + 1 <= n_ctx 32
        roles.top("induction")                   # [(layer, head, score), ...]
    """
    model = wrap(model)
    if vocab is None:
        vocab = int(model.weights().W_E.shape[0])
    ids = repeated_tokens(vocab, n, batch, seed, bos, low)
    off = 0 if bos is None else 1
    sites = [Site(Kind.PATTERN, layer) for layer in range(model.n_layers)]
    res = run(model, ids, capture=sites, interventions=interventions)
    pat = torch.stack([res.cache[s] for s in sites])  # (layer, batch, head, q, k)
    q = torch.arange(off + n, off + 2 * n)  # queries in the second copy
    all_q = torch.arange(off + 1, off + 2 * n)

    def mean_at(queries: Tensor, keys: Tensor) -> Tensor:  # -> (layer, head)
        return pat[:, :, :, queries, keys].mean((1, 3))

    return HeadRoles(
        previous_token=mean_at(all_q, all_q - 1),
        duplicate_token=mean_at(q, q - n),
        induction=mean_at(q, q - n + 1),
        bos=pat[..., off:, 0].mean((1, 3)),
        n=n, batch=batch, seed=seed)
