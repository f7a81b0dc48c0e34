"""Behaviour diff: where on a corpus the next-token distributions of A and B differ.

KL(A‖B) at position t = Σ_v p_A(v) (log p_A(v) − log p_B(v)), both distributions of the token
after t given the tokens up to t. It is aggregated three ways, each a table of keys with their
count, mean and total KL:

- `by_context`: the token at t (the token the prediction follows, "after this token they differ");
- `by_bigram`: the tokens at t − 1 and t (the context one token wider);
- `by_next`: the token at t + 1 that the text actually continues with (last position left out).

Keys seen fewer than `min_count` times are left out of the rankings. For the top keys of the
first two tables a second pass collects what B predicts more and less than A there (the mean of
p_B − p_A over the key's occurrences, largest and smallest tokens) and decoded examples: the context,
A's and B's top predictions, the KL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.progress import progress_bar
from ..core.score import Score, bootstrap_ci
from .corpus import Corpus


ROWS = 256  # positions per slice of the vocabulary-wide KL (bounds its float64 temporaries)


def log_probs(logits: Tensor) -> Tensor:
    """Next-token log-probabilities in float64, over slices of ROWS positions."""
    v = logits.shape[-1]
    x = logits.reshape(-1, v)
    out = torch.empty(x.shape, dtype=torch.float64)
    for s in range(0, x.shape[0], ROWS):  # float64 on the CPU (MPS has none), one slice of a model's logits at a time
        out[s:s + ROWS] = F.log_softmax(x[s:s + ROWS].cpu().double(), -1)
    return out.reshape(logits.shape)


def kl_per_token(logits_a: Tensor, logits_b: Tensor, b_is_log_probs: bool = False) -> Tensor:
    """KL(A‖B) of the next-token distributions at every position: (..., vocab) -> (...), in float64
    over slices of ROWS positions (a large vocabulary needs no full-size float64 temporaries);
    `b_is_log_probs`: `logits_b` are already `log_probs` (reused across several A's)."""
    shape, v = logits_a.shape[:-1], logits_a.shape[-1]
    xa, xb = logits_a.reshape(-1, v), logits_b.reshape(-1, v)
    out = torch.empty(xa.shape[0], dtype=torch.float64)
    for s in range(0, xa.shape[0], ROWS):  # float64 on the CPU (MPS has none), one slice of the logits at a time
        la = F.log_softmax(xa[s:s + ROWS].cpu().double(), -1)
        lb = xb[s:s + ROWS].cpu() if b_is_log_probs else F.log_softmax(xb[s:s + ROWS].cpu().double(), -1)
        out[s:s + ROWS] = (la.exp() * (la - lb)).sum(-1)
    return out.reshape(shape).clamp_min(0.0)


@dataclass(frozen=True)
class Example:
    """A decoded example of where A and B differ: its window and position, the context, each model's top
    predictions and the KL there."""

    window: int
    position: int
    context: tuple[int, ...]  # up to 8 tokens ending at the position
    a_top: tuple[tuple[int, float], ...]  # A's top predictions (token, probability)
    b_top: tuple[tuple[int, float], ...]
    kl: float


@dataclass(frozen=True)
class KeyStat:
    """One key of an aggregation table."""

    key: tuple[int, ...]
    count: int
    mean_kl: float
    total_kl: float
    ci: tuple[float, float] | None = None
    rises: tuple[tuple[int, float], ...] = ()  # tokens B predicts more than A here: (token, mean p_B − p_A)
    falls: tuple[tuple[int, float], ...] = ()
    examples: tuple[Example, ...] = ()
    share_by_source: dict[str, float] = field(default_factory=dict)  # where the occurrences are

    def score(self, table: str, corpus: str) -> Score:
        """The key's mean KL as a Score, with its interval, count and table."""
        return Score(value=self.mean_kl, metric="KL(A‖B) per token, nats", ci=self.ci,
                     aggregation=f"mean over the {self.count} positions of this {table} key", dataset=corpus,
                     n=self.count, seed=0, how={"table": table, "total_kl": round(self.total_kl, 6)})


@dataclass(frozen=True)
class BehaviourDiff:
    """Where on a corpus A's and B's next-token distributions differ: the KL per position (n, seq_len), its mean,
    and the tables by source, context token, bigram and next token."""

    corpus: str
    kl: Tensor  # (n, seq_len)
    overall: Score  # mean KL per token, bootstrap over windows
    by_source: dict[str, float]  # mean KL per token in each source
    by_context: tuple[KeyStat, ...]
    by_bigram: tuple[KeyStat, ...]
    by_next: tuple[KeyStat, ...]
    min_count: int
    means: dict[str, dict[tuple[int, ...], float]]  # table -> key -> mean KL, every key seen


def _logits(model: Any, ids: Tensor) -> Tensor:
    return model.run(ids).logits


def _table(keys: Tensor, kl: Tensor, min_count: int, top: int, table: str,
           baseline: Callable[[str, tuple[int, ...]], float] | None
           ) -> tuple[list[tuple[tuple[int, ...], int, float, float, Tensor]], dict[tuple[int, ...], float]]:
    """The `top` keys with count >= min_count, ranked by mean KL (or by mean KL / baseline(table, key)),
    as rows (key, count, mean, total, flat indices); and the mean KL of every key.
    `keys` (n_items, key_width) and `kl` (n_items,) are aligned."""
    uniq, inv = torch.unique(keys, dim=0, return_inverse=True)
    counts = torch.bincount(inv, minlength=len(uniq))
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, kl.double())
    means = sums / counts.clamp_min(1)
    key_list = [tuple(k) for k in uniq.tolist()]
    rank_by = means.clone()
    if baseline is not None:
        rank_by = means / torch.tensor([max(baseline(table, k), 1e-12) for k in key_list], dtype=torch.float64)
    rank_by[counts < min_count] = -1.0
    rows = []
    for j in rank_by.argsort(descending=True)[:top].tolist():
        if rank_by[j] < 0:
            break
        rows.append((key_list[j], int(counts[j]), float(means[j]), float(sums[j]), (inv == j).nonzero().flatten()))
    return rows, dict(zip(key_list, means.tolist()))


def behaviour_diff(a: Any, b: Any, corpus: Corpus, batch: int = 16, top: int = 10, min_count: int = 4,
                   n_examples: int = 3, k_pred: int = 3, n_boot: int = 500, progress: bool = True,
                   baseline: Callable[[str, tuple[int, ...]], float] | None = None,
                   detail_windows: int | None = 128) -> BehaviourDiff:
    """The behaviour diff on `corpus` (module docstring). `baseline(table, key)`, when given, ranks the
    keys by mean KL / baseline (a control pair's KL there) instead of by mean KL. The rises and falls
    of the top keys are read on the windows of their examples and `detail_windows` others (`_details`)."""
    ids = corpus.ids
    n, T = ids.shape
    kl = torch.zeros(n, T, dtype=torch.float64)
    for s in progress_bar(range(0, n, batch), desc="behaviour diff", unit="batch", disable=not progress):
        chunk = ids[s:s + batch]
        kl[s:s + batch] = kl_per_token(_logits(a, chunk), _logits(b, chunk))
    per_window = kl.mean(1)
    overall = Score(value=float(kl.mean()), metric="KL(A‖B) per token, nats",
                    ci=bootstrap_ci(per_window, n_boot=n_boot), aggregation="mean over tokens; CI over windows",
                    dataset=corpus.name, n=n, seed=0, how={"tokens": n * T, "window": T})
    by_source = {name: float(kl[corpus.source == i].mean()) for i, name in enumerate(corpus.sources)
                 if bool((corpus.source == i).any())}

    pos = torch.arange(T).expand(n, T)
    flat_kl = kl.flatten()
    ctx_rows, ctx_all = _table(ids.flatten()[:, None], flat_kl, min_count, top, "context", baseline)
    bi_keys = torch.stack([ids[:, :-1], ids[:, 1:]], -1).reshape(-1, 2)  # positions 1.. of each window
    bi_flat = (torch.arange(n)[:, None] * T + pos[:, 1:]).flatten()
    bi_rows, bi_all = _table(bi_keys, kl[:, 1:].flatten(), min_count, top, "bigram", baseline)
    bi_rows = [(k, c, m, t, bi_flat[i]) for k, c, m, t, i in bi_rows]
    nx_flat = (torch.arange(n)[:, None] * T + pos[:, :-1]).flatten()
    nx_rows, _ = _table(ids[:, 1:].reshape(-1, 1), kl[:, :-1].flatten(), min_count, top, "next", None)
    nx_rows = [(k, c, m, t, nx_flat[i]) for k, c, m, t, i in nx_rows]

    detailed = _details(a, b, ids, kl, ctx_rows + bi_rows, batch, n_examples, k_pred, detail_windows)

    def stats(rows, details: list | None) -> tuple[KeyStat, ...]:
        out = []
        for j, (key, count, mean, total, where) in enumerate(rows):
            vals = flat_kl[where]
            ci = bootstrap_ci(vals, n_boot=n_boot) if count > 1 else None
            src = corpus.source.flatten()[where]
            share = {name: float((src == i).double().mean()) for i, name in enumerate(corpus.sources)}
            rises, falls, examples = details[j] if details is not None else ((), (), ())
            out.append(KeyStat(key, count, mean, total, ci, rises, falls, examples, share))
        return tuple(out)

    return BehaviourDiff(corpus.name, kl, overall, by_source, stats(ctx_rows, detailed[:len(ctx_rows)]),
                         stats(bi_rows, detailed[len(ctx_rows):]), stats(nx_rows, None), min_count,
                         {"context": ctx_all, "bigram": bi_all})


def _details(a: Any, b: Any, ids: Tensor, kl: Tensor, rows: list, batch: int, n_examples: int,
             k_pred: int, detail_windows: int | None = 128) -> list[tuple]:
    """Per row: rises, falls and examples, from a second pass over the windows the rows' positions
    are in: those of the examples and, of the rest, `detail_windows` evenly spaced (None: all); the
    rises and falls are means over the row's positions in these windows."""
    n, T = ids.shape
    if not rows:
        return []
    # the examples of a row: its occurrences with the largest KL
    chosen = [set(w[kl.flatten()[w].argsort(descending=True)[:n_examples]].tolist()) for *_, w in rows]
    need = torch.unique(torch.cat([where // T for *_, where in rows]))
    if detail_windows is not None and len(need) > detail_windows:
        spaced = need[torch.linspace(0, len(need) - 1, detail_windows).round().long()]
        need = torch.unique(torch.cat([spaced, torch.tensor([f // T for c in chosen for f in c], dtype=torch.long)]))
    sums: list[Tensor | int] = [0] * len(rows)
    counts = [0] * len(rows)
    examples: list[list[Example]] = [[] for _ in rows]
    local = torch.full((n * T,), -1, dtype=torch.long)  # flat position -> row in this batch's logits
    for s in range(0, len(need), batch):
        wins = need[s:s + batch]
        # float64 on the CPU (MPS has none), like the rest of the KL tables
        la = F.softmax(_logits(a, ids[wins]).cpu().double(), -1)  # (b, T, vocab)
        lb = F.softmax(_logits(b, ids[wins]).cpu().double(), -1)
        flat_here = (wins[:, None] * T + torch.arange(T)).flatten()
        local[flat_here] = torch.arange(len(flat_here))
        pa, pb = la.reshape(-1, la.shape[-1]), lb.reshape(-1, lb.shape[-1])
        for j, (*_, where) in enumerate(rows):
            hit = local[where]
            hit = hit[hit >= 0]
            if not len(hit):
                continue
            sums[j] = sums[j] + (pb[hit] - pa[hit]).sum(0)
            counts[j] += len(hit)
            for f in sorted(chosen[j]):
                if local[f] >= 0:
                    i = int(local[f])
                    w, p = divmod(f, T)
                    va, ia = pa[i].topk(k_pred)
                    vb, ib = pb[i].topk(k_pred)
                    examples[j].append(Example(
                        w, p, tuple(ids[w, max(0, p - 7):p + 1].tolist()),
                        tuple(zip(ia.tolist(), va.tolist())), tuple(zip(ib.tolist(), vb.tolist())),
                        float(kl[w, p])))
        local[flat_here] = -1
    out = []
    for j, (*_, where) in enumerate(rows):
        mean = sums[j] / max(counts[j], 1)
        up, down = mean.topk(5), (-mean).topk(5)
        out.append((tuple(zip(up.indices.tolist(), up.values.tolist())),
                    tuple(zip(down.indices.tolist(), (-down.values).tolist())),
                    tuple(sorted(examples[j], key=lambda e: -e.kl))))
    return out
