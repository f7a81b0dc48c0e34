"""Direct logit attribution: how much each head, MLP, neuron and embedding writes to a logit direction.

Final-norm handling: the final norm is linear once its scale is fixed, so the scale is measured
from the run itself (one per prompt and position) and frozen; each component's write is centred
when the norm centres (LayerNorm, not RMSNorm), divided by that scale, multiplied by the norm's
weight and projected on the unembedding direction. With the norm's shift and the unembedding
bias (`bias` below), the attributions of all components add up to the logit difference exactly
(up to float rounding): tests check this. What it measures is the *direct* path only.

Post-norms (Gemma's sandwich norms, `ln1_post_w` / `ln2_post_w` in the weights): a head's result
and a neuron's write reach the residual through the norm on the attention (MLP) output. That norm's
scale is frozen the same way (measured per prompt and position from its input, the heads' summed
results plus b_O or the neurons' summed writes plus b_out, and its output attn_out or mlp_out), so
heads, neurons and biases still add up to what each block added to the residual.

Steps:
1. capture the embeddings, every head's result, every MLP's neurons and output, and the final
   residual and norm output (and attn_out when attention has a post-norm);
2. recover the frozen scale (and whether the norm centres) from the final residual and norm output,
   and each post-norm's from its input and output;
3. project each component on W_U[:, a] - W_U[:, b] (or W_U[:, a] alone) through the norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.run import run
from ..core.site import Kind, Site
from ..models import wrap


@dataclass(frozen=True)
class DirectLogitAttribution:
    """Contributions to `direction` at every position, (batch, pos) after the component axes.

    heads (layer, head, batch, pos); head_bias (layer, batch, pos): each attention output bias;
    mlps (layer, batch, pos), each MLP's whole output; neurons (layer, d_mlp, batch, pos) and
    mlp_bias (layer, batch, pos) split it (neurons summed plus mlp_bias equal mlps); embed
    (batch, pos) includes position embeddings; bias (batch, pos): the final norm's shift and the
    unembedding bias. `sum()` adds up to `total`.

    Example::

        from mechscope.circuits import direct_logit_attribution
        model = ms.load("smollm2-135m")
        tokens = model.to_tokens(["When Mary and John went to the store, John gave a drink to"])
        dla = direct_logit_attribution(model, tokens, token=5099, minus=2322)
        dla.heads[:, :, 0, -1]                   # heads (layer, head, batch, pos): each head at the last position
        dla.total                                # (batch, pos): the sum, equal to the logit difference
    """

    heads: Tensor
    head_bias: Tensor
    mlps: Tensor
    mlp_bias: Tensor
    neurons: Tensor | None
    embed: Tensor
    bias: Tensor
    total: Tensor  # the model's own logit difference, (batch, pos)
    norm: str = "final-norm scale measured per prompt and position, frozen"

    def sum(self) -> Tensor:
        """(batch, pos): every contribution added up; equals `total` up to rounding."""
        return (self.heads.sum((0, 1)) + self.head_bias.sum(0) + self.mlps.sum(0) + self.embed + self.bias)


def _frozen_scale(x: Tensor, y: Tensor, gamma: Tensor, beta: Tensor | None) -> tuple[Tensor, bool]:
    """Fit y = gamma * (x - mu) / s + beta per row for mu = mean(x) and mu = 0; keep the better fit."""
    target = y - (0 if beta is None else beta)
    best = None
    for centred in (True, False):
        u = (x - x.mean(-1, keepdim=True) if centred else x) * gamma  # (..., d_model)
        s = (u * u).sum(-1, keepdim=True) / (u * target).sum(-1, keepdim=True)  # least squares in 1/s
        err = ((u / s - target) ** 2).sum()
        if best is None or err < best[0]:
            best = (err, s, centred)
    return best[1], best[2]


@dataclass(frozen=True)
class _FrozenNorm:
    """A norm with its scale measured from one run and frozen: linear, x -> g (x - mean?) / scale."""

    gain: Tensor
    scale: Tensor  # (batch, pos, 1)
    centred: bool

    def __call__(self, x: Tensor) -> Tensor:  # (..., batch, pos, d_model)
        x = x - x.mean(-1, keepdim=True) if self.centred else x
        return x * self.gain / self.scale


def _post_norm(x: Tensor, y: Tensor, gain: Tensor) -> _FrozenNorm:
    """The norm that maps x (its input) to y (its output) with weight `gain`, its scale frozen."""
    scale, centred = _frozen_scale(x, y, gain, None)
    return _FrozenNorm(gain, scale, centred)


def direct_logit_attribution(model: Any, inputs: Any, token: int, minus: int | None = None,
                             neurons: bool = False) -> DirectLogitAttribution:
    """DLA of every component to logit[token] (minus logit[minus]) at every position.

    Example::

        from mechscope.circuits import direct_logit_attribution
        model = ms.load("smollm2-135m")
        tokens = model.to_tokens(["When Mary and John went to the store, John gave a drink to"])
        dla = direct_logit_attribution(model, tokens, token=5099, minus=2322)   # " Mary" - " John"
        dla.heads[..., 0, -1]                    # (layer, head) at the last position
    """
    model = wrap(model)
    w = model.weights()
    if w.W_U is None or w.lnf_w is None:
        raise ValueError(f"{model.name} has no final norm and unembedding")
    L = model.n_layers
    valid = set(model.sites())
    embeds = [s for s in (Site(Kind.EMBED), Site(Kind.POS_EMBED)) if s in valid]
    last = Site(Kind.RESID_POST, L - 1)
    sites = embeds + [Site(Kind.RESULT, l) for l in range(L)] + [Site(Kind.MLP_OUT, l) for l in range(L)] \
        + ([Site(Kind.MLP_POST, l) for l in range(L)] if neurons or w.ln2_post_w is not None else []) \
        + [last, Site(Kind.LN_FINAL)] \
        + ([Site(Kind.ATTN_OUT, l) for l in range(L)] if w.ln1_post_w is not None else [])
    res = run(model, inputs, capture=sites)
    with torch.no_grad():
        u = w.W_U[:, token] - (0 if minus is None else w.W_U[:, minus])  # (d_model,)
        g = w.lnf_w
        scale, centred = _frozen_scale(res.cache[last], res.cache[Site(Kind.LN_FINAL)], g, w.lnf_b)
        direction = g * u  # the norm's weight folded into the readout direction

        def through(c: Tensor) -> Tensor:  # (..., batch, pos, d_model) -> (..., batch, pos)
            c = c - c.mean(-1, keepdim=True) if centred else c
            return (c / scale) @ direction

        zeros = res.cache[last].new_zeros(res.cache[last].shape)
        b_O = [zeros + (w.b_O[l] if w.b_O is not None else 0) for l in range(L)]
        b_out = [zeros + (w.b_out[l] if w.b_out is not None else 0) for l in range(L)]
        results = [res.cache[Site(Kind.RESULT, l)].movedim(2, 0) for l in range(L)]  # (head, batch, pos, d_model)
        if w.ln1_post_w is not None:  # each head's share of the post-attention norm's output, its scale frozen
            post = [_post_norm(r.sum(0) + b, res.cache[Site(Kind.ATTN_OUT, l)], w.ln1_post_w[l])
                    for l, (r, b) in enumerate(zip(results, b_O))]
            results = [p(r) for p, r in zip(post, results)]
            b_O = [p(b) for p, b in zip(post, b_O)]
        heads = torch.stack([through(r) for r in results])  # (layer, head, batch, pos)
        head_bias = torch.stack([through(b) for b in b_O])
        mlps = torch.stack([through(res.cache[Site(Kind.MLP_OUT, l)]) for l in range(L)])
        mlp_post = [None] * L  # per layer, the post-MLP norm with its scale frozen
        if w.ln2_post_w is not None:
            mlp_post = [_post_norm(res.cache[Site(Kind.MLP_POST, l)] @ w.W_out[l] + b_out[l],
                                   res.cache[Site(Kind.MLP_OUT, l)], w.ln2_post_w[l]) for l in range(L)]
        mlp_bias = torch.stack([through(b if p is None else p(b)) for p, b in zip(mlp_post, b_out)])
        embed = sum(through(res.cache[s].expand_as(zeros)) for s in embeds)
        bias = torch.zeros_like(embed)
        if w.lnf_b is not None:
            bias = bias + w.lnf_b @ u
        if w.b_U is not None:
            bias = bias + w.b_U[token] - (0 if minus is None else w.b_U[minus])
        per_neuron = None
        if neurons:
            # neuron n writes post[n] * W_out[n]: its readout is post[n] * (centre(W_out[n]) @ direction)
            # (with a post-MLP norm: post[n] * g W_out[n] / s, s its frozen scale at the position)
            wo = w.W_out if w.ln2_post_w is None else w.W_out * w.ln2_post_w[:, None, :]  # (L, d_mlp, d_model)
            wo = wo - wo.mean(-1, keepdim=True) if centred else wo
            read = wo @ direction  # (L, d_mlp)
            per_neuron = torch.stack([res.cache[Site(Kind.MLP_POST, l)].movedim(-1, 0) * read[l, :, None, None]
                                      / scale.squeeze(-1)
                                      / (1 if mlp_post[l] is None else mlp_post[l].scale.squeeze(-1))
                                      for l in range(L)])  # (L, d_mlp, b, p)
        logits = res.logits
        total = logits[..., token] - (0 if minus is None else logits[..., minus])
    return DirectLogitAttribution(heads, head_bias, mlps, mlp_bias, per_neuron, embed, bias, total)
