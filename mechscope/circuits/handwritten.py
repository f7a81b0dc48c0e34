"""A two-layer attention-only induction model written by hand from theory (no trained weight is read).

The network is the zoo's `TinyTransformer` (attention-only, no layer norm, no biases, one head per
layer), so it loads through the same adapter as zoo models (`TinyModel`: canonical sites, weight
views, `mechscope.run`). Its residual stream is four orthogonal blocks of one-hot coordinates:

    TOK   [0, V)              the current token t_i           (written by the token embedding)
    POS   [V, V + T)          the position i                  (written by the position embedding)
    PREV  [V + T, 2V + T)     the previous token t_{i-1}      (written by the layer-0 head)
    OUT   [2V + T, 3V + T)    the predicted next token        (written by the layer-1 head)

Layer 0, head 0 (previous-token head). QK is positional: q_i = a * e_i (from POS), k_j = e_{j+1}
(from POS), so the score is a / sqrt(d_head) * [j = i - 1] * sqrt(d_head) = a for the previous
position and 0 for every other; with a = 20 the head puts all but ~i e^-20 of its attention on i - 1
(position 0 can only attend to itself). OV copies: v = e_{t_j} (from TOK), W_O writes it into PREV.

Layer 1, head 0 (induction head). K-composition with the previous-token head: queries read TOK
(q = b * e_{t_q}), keys read PREV (k = e_{t_{k-1}}), so the score is b where the token before key k
equals the current token and 0 elsewhere: the head attends (uniformly) to every position that
follows an earlier occurrence of the current token. Position 0 has no previous token (the layer-0
head can only attend to itself there, writing t_0 into PREV), so one more query/key coordinate
gives key 0 the score -b: every query has b on it (each query has exactly one token), key 0 has -1.
OV copies: v = e_{t_k} (from TOK), written into OUT; the unembedding reads OUT with gain s. Where
the token has not occurred before, all scores but key 0's tie and the head averages the tokens
seen since position 1. d_head = max(V, T) + 1.

Scale choices, from the softmax: a = b = 20 makes attention one-hot up to e^-20 per competitor;
s = 8 = ln(47 / 0.016) makes a unique, correct match cost about 0.016 nats against 47 wrong tokens,
while a wrong guess costs about s. Nothing was tuned on data.

Modular addition by hand was not attempted. The trained modadd network computes cos/sin of
w(a + b) from cos/sin of w a and w b with ReLU neurons (products via sums of ReLUs) and reads the
answer through cos(w(a + b - c)); writing that by hand needs a ReLU approximation of products of
trigonometric features whose accuracy must be engineered and checked per frequency — a separate
project. Within this issue's time the induction circuit, whose every weight follows from the
theory above, was done instead; `mechscope.circuits.explanations.modadd_fourier` scores the
Fourier explanation of the trained network's MLP.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..models.tiny import TinyConfig, TinyModel, TinyTransformer

# the zoo induction task's shapes (mechscope.zoo.recipes.induction)
VOCAB, N_CTX = 48, 64


def handwritten_config(d_vocab: int = VOCAB, n_ctx: int = N_CTX) -> TinyConfig:
    """Two attention-only layers, one head each, d_model = 3 * vocab + n_ctx, no norms or biases."""
    return TinyConfig(n_layers=2, d_model=3 * d_vocab + n_ctx, n_heads=1, d_head=max(d_vocab, n_ctx) + 1, d_mlp=None,
                      n_ctx=n_ctx, d_vocab=d_vocab, layer_norm=False, bias=False)


@torch.no_grad()
def handwritten_induction_module(d_vocab: int = VOCAB, n_ctx: int = N_CTX, *, attn_gain: float = 20.0,
                                 logit_gain: float = 8.0) -> TinyTransformer:
    """The TinyTransformer with the weights of the module docstring (eval mode)."""
    cfg = handwritten_config(d_vocab, n_ctx)
    V, T, dh = d_vocab, n_ctx, cfg.d_head
    TOK, POS, PREV, OUT = 0, V, V + T, 2 * V + T
    m = TinyTransformer(cfg)
    for p in m.parameters():
        p.zero_()
    tok, pos = torch.arange(V), torch.arange(T)
    m.embed.weight[tok, TOK + tok] = 1.0  # (vocab, d_model)
    m.pos_embed.weight[pos, POS + pos] = 1.0  # (n_ctx, d_model)
    g = attn_gain * math.sqrt(dh)  # the model divides scores by sqrt(d_head)

    a0 = m.blocks[0].attn  # nn.Linear weights are (out, in)
    a0.W_Q.weight[pos, POS + pos] = g  # q_i = g e_i
    a0.W_K.weight[pos[1:], POS + pos[:-1]] = 1.0  # k_j = e_{j+1}
    a0.W_V.weight[tok, TOK + tok] = 1.0  # v_j = e_{t_j}
    a0.W_O.weight[PREV + tok, tok] = 1.0  # -> PREV

    a1 = m.blocks[1].attn
    a1.W_Q.weight[tok, TOK + tok] = g  # q = g e_{t_q}
    a1.W_K.weight[tok, PREV + tok] = 1.0  # k = e_{t_{k-1}}
    # position 0 has no previous token (the layer-0 head could only attend to itself there): every query
    # carries g on the last coordinate (each has exactly one token), key 0 carries -1 there
    a1.W_Q.weight[dh - 1, TOK + tok] = g
    a1.W_K.weight[dh - 1, POS + 0] = -1.0
    a1.W_V.weight[tok, TOK + tok] = 1.0  # v = e_{t_k}
    a1.W_O.weight[OUT + tok, tok] = 1.0  # -> OUT

    m.unembed.weight[tok, OUT + tok] = logit_gain  # (vocab, d_model)
    return m.eval()


def handwritten_induction(d_vocab: int = VOCAB, n_ctx: int = N_CTX, **gains: float) -> TinyModel:
    """The hand-written induction model wrapped in the zoo's adapter (like `mechscope.load("zoo:...")`)."""
    return handwritten_induction_module(d_vocab, n_ctx, **gains).mechscope_adapter(name="handwritten:induction")


@torch.no_grad()
def evaluate_on_zoo_task(model: Any, n: int = 512, seed: int = 0,
                         hp: dict[str, Any] | None = None) -> dict[str, float]:
    """Loss, loss and accuracy on the repeated segment, on the zoo induction recipe's batch generator
    (the full recipe's shapes, or those of `hp`, a variant's hyperparameters)."""
    from ..zoo.recipes.induction import RECIPE, lm_losses, make_batch

    module = getattr(model, "module", model)
    hp = hp or RECIPE.variants[""]
    batch = make_batch(n, hp, torch.Generator().manual_seed(seed))
    loss, rep_loss, rep_acc = lm_losses(module(batch.ids), batch)
    return {"loss": float(loss), "repeat_loss": float(rep_loss), "repeat_acc": float(rep_acc), "n": n, "seed": seed}


def compare(trained: str | None = "induction", n: int = 512, seed: int = 0) -> dict[str, dict[str, float]]:
    """The hand-written model beside the trained zoo model `trained` (when it is trained) and a
    randomly initialised model of the same shape, on the same batch."""
    out = {"handwritten": evaluate_on_zoo_task(handwritten_induction(), n, seed)}
    torch.manual_seed(seed)
    out["random_init"] = evaluate_on_zoo_task(TinyTransformer(handwritten_config()).eval(), n, seed)
    if trained is not None:
        from .. import zoo

        if zoo.open_run(trained).done:
            out[f"zoo:{trained}"] = evaluate_on_zoo_task(zoo.load_zoo(trained), n, seed)
    return out
