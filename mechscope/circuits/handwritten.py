"""A two-layer attention-only induction model written by hand from theory (no trained weight is read).

The network is the zoo's `TinyTransformer` (attention-only, no layer norm, no biases, one head per
layer; two with `match=2`, last section), so it loads through the same adapter as zoo models
(`TinyModel`: canonical sites, weight views, `mechscope.run`). Its residual stream is four orthogonal
blocks of one-hot coordinates:

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

Two-token match (`match=2`). On the zoo task (64 random tokens over 48, so the current token has often
occurred by chance before) matching one token leaves the head split between the true earlier
occurrence and chance ones; by counting, that rule predicts the repeat with accuracy ~0.64. The trained
network does better (0.95) and the tools show how: besides its previous-token head it has layer-0 heads
that attend two tokens back, and its induction heads Q-compose with the previous-token head. The
`match=2` model does the same by hand: a second layer-0 head attends two back (q_i = a e_i, k_j =
e_{j+2}) and writes t_{i-2} into a fifth block PREV2 [3V + T, 4V + T); the induction head's query adds
(b/2) e_{t_{q-1}} read from PREV and its key e_{t_{k-2}} read from PREV2 on V more coordinates, so a key
whose two preceding tokens both match scores 3b/2, one matching only the current token b, one
matching only the older token b/2. Keys 0 and 1 have no token two back; query 1's second head
attends to position 0, so key 1 carries t_0 in PREV2 (a spurious half-match there at most). The
second layer-1 head is all zeros. d_head = max(2V, T) + 1.

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


def handwritten_config(d_vocab: int = VOCAB, n_ctx: int = N_CTX, match: int = 1) -> TinyConfig:
    """Two attention-only layers, no norms or biases; one head per layer and d_model = 3 * vocab + n_ctx
    for `match=1`, two heads per layer and d_model = 4 * vocab + n_ctx for `match=2`."""
    if match not in (1, 2):
        raise ValueError(f"match must be 1 or 2 (tokens compared per earlier occurrence), got {match}")
    return TinyConfig(n_layers=2, d_model=(2 + match) * d_vocab + n_ctx, n_heads=match,
                      d_head=max(match * d_vocab, n_ctx) + 1, d_mlp=None, n_ctx=n_ctx, d_vocab=d_vocab,
                      layer_norm=False, bias=False)


@torch.no_grad()
def handwritten_induction_module(d_vocab: int = VOCAB, n_ctx: int = N_CTX, *, match: int = 1,
                                 attn_gain: float = 20.0, logit_gain: float = 8.0) -> TinyTransformer:
    """The TinyTransformer with the weights of the module docstring (eval mode); `match=2` adds the
    two-token match of the docstring's last section."""
    cfg = handwritten_config(d_vocab, n_ctx, match)
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

    if match == 2:
        PREV2, h = 3 * V + T, dh  # the second head's rows (Q, K, V) and columns (O) start at d_head
        a0.W_Q.weight[h + pos, POS + pos] = g  # q_i = g e_i
        a0.W_K.weight[h + pos[2:], POS + pos[:-2]] = 1.0  # k_j = e_{j+2}
        a0.W_K.weight[h + 1, POS + 0] = 1.0  # query 1 has no position two back: key 0 instead
        a0.W_V.weight[h + tok, TOK + tok] = 1.0  # v_j = e_{t_j}
        a0.W_O.weight[PREV2 + tok, h + tok] = 1.0  # -> PREV2
        # the induction head's second half: the query's previous token (PREV) against the key's token two
        # back (PREV2), at half the gain of the first-token match
        a1.W_Q.weight[V + tok, PREV + tok] = g / 2
        a1.W_K.weight[V + tok, PREV2 + tok] = 1.0

    m.unembed.weight[tok, OUT + tok] = logit_gain  # (vocab, d_model)
    return m.eval()


def handwritten_induction(d_vocab: int = VOCAB, n_ctx: int = N_CTX, *, match: int = 1, **gains: float) -> TinyModel:
    """The hand-written induction model wrapped in the zoo's adapter (like `mechscope.load("zoo:...")`);
    `match=2` compares the two tokens before each earlier position (module docstring).

    Example::

        from mechscope.circuits import handwritten_induction
        model = handwritten_induction(d_vocab=48, n_ctx=64)
        mechscope.circuits.head_roles(model).top("induction", k=1)
    """
    module = handwritten_induction_module(d_vocab, n_ctx, match=match, **gains)
    return module.mechscope_adapter(name="handwritten:induction" + ("" if match == 1 else "-2"))


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
    """The hand-written models (one- and two-token match) beside the trained zoo model `trained` (when it
    is trained) and a randomly initialised model of the one-token shape, on the same batch."""
    out = {"handwritten": evaluate_on_zoo_task(handwritten_induction(), n, seed),
           "handwritten_two_token": evaluate_on_zoo_task(handwritten_induction(match=2), n, seed)}
    torch.manual_seed(seed)
    out["random_init"] = evaluate_on_zoo_task(TinyTransformer(handwritten_config()).eval(), n, seed)
    if trained is not None:
        from .. import zoo

        if zoo.open_run(trained).done:
            out[f"zoo:{trained}"] = evaluate_on_zoo_task(zoo.load_zoo(trained), n, seed)
    return out
