"""A modular-addition network as code: embed -> Fourier features -> trigonometric identities -> unembed.

`modadd_hypothesis(model, layout)` returns a `Hypothesis` (core) whose parts replace the whole
network's computation of the answer with three readable rules, each standing in for one component
and reading the one before it (so in a scrubbing run the rules chain: the answer is computed by
code from the input numbers alone):

    embed    each number t is embedded as  mean + sum_k cos(w_k t) C_k + sin(w_k t) S_k  over the key
             frequencies w_k = 2 pi k / p: the network's own embedding of each number, kept on the
             key frequencies only (numbers: the mean and the C_k, S_k, read from the network's
             embeddings of 0..p-1; no labels)
    hidden   the answer's features (the residual at "=", or a hidden layer) read back cos(w_k a),
             sin(w_k a), cos(w_k b), sin(w_k b) from the two embeddings, combine them by
                 cos(w(a+b)) = cos(wa) cos(wb) - sin(wa) sin(wb)
                 sin(w(a+b)) = sin(wa) cos(wb) + cos(wa) sin(wb)
             and write  c + sum_k cos(w_k(a+b)) U_k + sin(w_k(a+b)) V_k  (fitted by least squares to
             the network's values on the training split only)
    logits   the unembedding kept on the key frequencies of the answer c: the score of c is
             r_0 + sum_k x_k cos(w_k c) + y_k sin(w_k c) with (r_0, x_k, y_k) a linear read of the
             features (the network's own linear map to the logits, fitted on the training split and
             projected onto the key frequencies over c); with x_k = r_k cos(w_k(a+b)) and
             y_k = r_k sin(w_k(a+b)) this is r_k cos(w_k(a + b - c)), largest at c = a + b

Key frequencies are found from the network's neurons (`explanations.key_frequencies`) unless given.
The layout (`ModAddLayout`) says which sites and which input encoding the network has, so the same
code explains the zoo's transformer and a network of another shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.hypothesis import Code, Component, Hypothesis
from ..core.interventions import Context
from ..core.run import resolve, run
from ..models import wrap
from .explanations import modadd_setting
from .modadd_layout import ModAddLayout


def fourier_columns(t: Tensor, p: int, freqs: Sequence[int]) -> Tensor:
    """(n, 2K): [cos w_1 t, sin w_1 t, cos w_2 t, ...] for w_k = 2 pi k / p."""
    t = t.double()
    cols = []
    for k in freqs:
        w = 2 * math.pi * k / p
        cols += [torch.cos(w * t), torch.sin(w * t)]
    return torch.stack(cols, 1)


def angle_sum(fa: Tensor, fb: Tensor) -> Tensor:
    """cos and sin of w(a + b) from those of wa and wb (columns in pairs cos, sin per frequency)."""
    ca, sa, cb, sb = fa[:, 0::2], fa[:, 1::2], fb[:, 0::2], fb[:, 1::2]
    out = torch.empty_like(fa)
    out[:, 0::2] = ca * cb - sa * sb  # cos(x + y) = cos x cos y - sin x sin y
    out[:, 1::2] = sa * cb + ca * sb  # sin(x + y) = sin x cos y + cos x sin y
    return out


def _with_one(x: Tensor) -> Tensor:
    return torch.cat([torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device), x], 1)


def _lstsq(X: Tensor, Y: Tensor) -> Tensor:
    return torch.linalg.lstsq(X.double(), Y.double(), driver="gelsd").solution


def _value(act: Tensor, position: int | None) -> Tensor:
    return act if position is None else act[:, position]


@torch.no_grad()
def modadd_hypothesis(model: Any, layout: ModAddLayout | None = None, *, freqs: Sequence[int] | None = None,
                      train_inputs: Any = None) -> Hypothesis:
    """The network's computation of the answer as code (module docstring); numbers fitted on
    `train_inputs` only (default: the zoo run's training split).

    Example::

        from mechscope.circuits import modadd_hypothesis
        from mechscope.causal import scrub
        model = ms.load("zoo:modadd-frac05")
        hyp = modadd_hypothesis(model)           # numbers fitted on the training split
        a, b = torch.randint(0, 113, (2, 256))
        x = torch.stack([a, b, torch.full_like(a, 113)], 1)     # (256, 3): a, b, "="
        scrub(model, hyp, x, "mean", labels=(a + b) % 113).recovered
    """
    model, layout, train_inputs, freqs = modadd_setting(model, layout, train_inputs, freqs)
    p = layout.p
    sites = {name: resolve(model, name) for name in
             {layout.embeds[0][0], layout.embeds[1][0], layout.hidden, layout.logits}}

    # 1. embeddings of each number, kept on the key frequencies (read from the network, no labels)
    numbers = torch.arange(p)
    tables = []
    for i, (name, pos) in enumerate(layout.embeds):
        other = torch.zeros_like(numbers)
        inputs = layout.encode(numbers, other) if i == 0 else layout.encode(other, numbers)
        T = _value(run(model, inputs, capture=[sites[name]]).cache[sites[name]], pos).double()  # (p, d)
        coef = _lstsq(_with_one(fourier_columns(numbers, p, freqs)), T)  # (1 + 2K, d): mean, then C_k, S_k
        tables.append(coef)
    shared = layout.embeds[0][0] == layout.embeds[1][0] and torch.allclose(tables[0], tables[1])
    if shared:
        tables[1] = tables[0]
    readouts = [torch.linalg.pinv(c[1:]) for c in tables]  # (d, 2K): derived from the tables, no new numbers

    parts: list[Code] = []
    by_site: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(layout.embeds):
        by_site.setdefault(name, []).append(i)
    for name, ops in by_site.items():
        positions = [layout.embeds[i][1] for i in ops]

        def embed_numbers(x: Tensor, ctx: Context, ops=ops, positions=positions) -> Tensor:
            """Each operand's embedding: mean + sum_k cos(w_k t) C_k + sin(w_k t) S_k."""
            operands = layout.operands(ctx.input_ids)
            new = x.clone()
            for i, pos in zip(ops, positions):
                e = _with_one(fourier_columns(operands[i], p, freqs)) @ tables[i]
                if pos is None:
                    new = e.to(x.dtype)
                else:
                    new[:, pos] = e.to(x.dtype)
            return new

        nums = {f"table_{'ab'[i]}": tables[i] for i in ops if not (shared and i == 1)}
        parts.append(Code(Component(name, positions=None if positions[0] is None else positions), embed_numbers,
                          numbers=nums, fitted_on="the network's embeddings of 0..p-1 (no labels)",
                          helpers=(fourier_columns,), name="embed_numbers",
                          claim="numbers are embedded on the key frequencies only"))

    # 2. the answer's features from the angle-sum identities, fitted on the training split
    a_tr, b_tr = layout.operands(train_inputs)
    s_tr = angle_sum(fourier_columns(a_tr, p, freqs), fourier_columns(b_tr, p, freqs))
    hidden_site, logits_site = sites[layout.hidden], sites[layout.logits]
    clean = run(model, train_inputs, capture=[hidden_site, logits_site]).cache
    h_tr = layout.answer(clean[hidden_site]).double()
    M = _lstsq(_with_one(s_tr), h_tr)  # (1 + 2K, d_hidden)
    emb_sites = [sites[name] for name, _ in layout.embeds]

    def answer_features(x: Tensor, ctx: Context) -> Tensor:
        """Read cos/sin(w a), cos/sin(w b) off the embeddings; write c + sum_k cos/sin(w_k(a+b)) U_k, V_k."""
        fa, fb = [(_value(ctx.cache[site], pos).double() - tables[i][0]) @ readouts[i]
                  for i, (site, (_, pos)) in enumerate(zip(emb_sites, layout.embeds))]
        h = _with_one(angle_sum(fa, fb)) @ M
        return _put(x, h, layout.answer_position)

    hidden_part = Code(Component(layout.hidden, positions=_at(layout)), answer_features, needs=tuple(dict.fromkeys(emb_sites)),
                       numbers={"U_V": M}, fitted_on=f"training split ({len(a_tr)} pairs)",
                       helpers=(angle_sum, _put), name="angle_sum_features",
                       claim="the answer's features are cos and sin of w_k(a + b), by the angle-sum identities")

    # 3. the unembedding on the key frequencies of the answer
    logits_tr = layout.answer(clean[logits_site]).double()  # (n, p)
    W = _lstsq(_with_one(h_tr), logits_tr)  # (1 + d_hidden, p): the network's own linear read-out
    basis = _with_one(fourier_columns(numbers, p, freqs))  # (p, 1 + 2K) over the answer c
    R = W @ torch.linalg.pinv(basis).T  # (1 + d_hidden, 1 + 2K): W ~ R basis^T

    def unembed(x: Tensor, ctx: Context) -> Tensor:
        """score(c) = r_0 + sum_k x_k cos(w_k c) + y_k sin(w_k c), (r_0, x_k, y_k) read linearly off the features."""
        h = layout.answer(ctx.cache[hidden_site]).double()
        score = _with_one(h) @ R @ basis.T  # (n, p)
        return _put(x, score, layout.answer_position)

    logits_part = Code(Component(layout.logits, positions=_at(layout)), unembed, needs=(hidden_site,),
                       numbers={"read_out": R}, fitted_on=f"training split ({len(a_tr)} pairs)",
                       helpers=(_with_one,), name="fourier_unembed",
                       claim="the logit of c is sum_k r_k cos(w_k(a + b - c)) + const")
    return Hypothesis(f"modadd as code (key frequencies {list(freqs)})", (*parts, hidden_part, logits_part),
                      claim="embed -> Fourier features -> angle-sum identities -> unembed",
                      info={"key_frequencies": list(freqs), "p": p, "train_pairs": int(len(a_tr))})


def _at(layout: ModAddLayout) -> list[int] | None:
    return None if layout.answer_position is None else [layout.answer_position]


def _put(x: Tensor, value: Tensor, position: int | None) -> Tensor:
    """`value` (n, d) written at the answer position of `x` (or as all of `x`)."""
    if position is None:
        return value.to(x.dtype)
    new = x.clone()
    new[:, position] = value.to(x.dtype)
    return new


@torch.no_grad()
def answer_logits(model: Any, layout: ModAddLayout) -> tuple[Tensor, Tensor]:
    """The answer logits (p*p, p) over every pair (row a * p + b), and the labels (a + b) mod p."""
    model = wrap(model)
    inputs, a, b = layout.grid()
    site = resolve(model, layout.logits)
    return layout.answer(run(model, inputs, capture=[site]).cache[site]), (a + b) % layout.p
