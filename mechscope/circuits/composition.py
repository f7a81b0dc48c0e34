"""QK/OV circuits in the weights: composition scores between heads and the OV copying score.

Conventions (row vectors, see mechscope.core.weights): a head's score between a query residual
x_q and a key residual x_k is x_q QK x_k^T with QK = W_Q W_K^T; what it writes for an attended
residual x is x OV with OV = W_V W_O. A head h1 in an earlier layer writes x OV1 into the
residual, so a later head h2 reads it through
    queries (Q-composition): OV1 QK2            keys (K-composition): QK2 OV1^T
    values (V-composition):  OV1 OV2
and the composition score is ||product||_F / (||first||_F ||second||_F) (Elhage et al. 2021).
Under grouped-query attention the weight views already hold one W_K / W_V per query head.
Norms that read a projection's output (per-head query/key norms, post-attention norms) enter with
their gains (`Weights.QK`, `Weights.OV`): the circuits are then the model's up to positive
per-token factors, which every score here is invariant to.
Norms come from the factored products; no d_model x d_model matrix is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.factored import FactoredMatrix
from ..models import wrap


@dataclass(frozen=True)
class Composition:
    """Scores (layer1, head1, layer2, head2); entries with layer1 >= layer2 are NaN.

    Example::

        from mechscope.circuits import composition_scores
        comp = composition_scores(ms.load("zoo:induction-quick"))
        comp.k[0, 2, 1, 1]                       # K-composition of L0H2 into L1H1; q, k, v (layer1, head1, layer2, head2)
    """

    q: Tensor
    k: Tensor
    v: Tensor


def composition_scores(model: Any, fold_ln: bool = True) -> Composition:
    """Q-, K- and V-composition between every pair of heads in different layers.

    Example::

        from mechscope.circuits import composition_scores
        comp = composition_scores(ms.load("zoo:induction-quick"))
        comp.k[0, :, 1, :]                       # (head1, head2): layer 0 -> layer 1 K-composition
    """
    w = wrap(model).weights(fold_ln=fold_ln)
    L, H = w.n_layers, w.n_heads
    qk, ov = w.QK, w.OV  # (layer, head, d_model, d_model), factored
    qk_n, ov_n = qk.norm(), ov.norm()  # (layer, head)
    out = {k: torch.full((L, H, L, H), float("nan")) for k in "qkv"}
    for l1 in range(L):
        for l2 in range(l1 + 1, L):
            for h1 in range(H):
                o1 = ov[l1, h1]
                # batch over the later layer's heads: (head2, d_model, d_model) products
                q2, o2 = qk[l2], ov[l2]
                out["q"][l1, h1, l2] = (o1 @ q2).norm() / (ov_n[l1, h1] * qk_n[l2])
                out["k"][l1, h1, l2] = (q2 @ o1.T).norm() / (ov_n[l1, h1] * qk_n[l2])
                out["v"][l1, h1, l2] = (o1 @ o2).norm() / (ov_n[l1, h1] * ov_n[l2])
    return Composition(out["q"], out["k"], out["v"])


def virtual_weights(model: Any, sender: tuple[int, int], receiver: tuple[int, int], kind: str,
                    fold_ln: bool = True) -> FactoredMatrix:
    """The head-to-head virtual weight through which `sender` (layer, head) feeds `receiver`.

    kind "q": OV_sender QK_receiver (the sender's output read as queries; (d_model, d_model),
    rows the sender's attended residual, columns the receiver's key residual); "k": QK_receiver
    OV_sender^T (rows the receiver's query residual, columns the sender's attended residual);
    "v": OV_sender OV_receiver. Kept factored; the composition score is its norm over the two
    factors' norms (`composition_scores`).

    Example::

        from mechscope.circuits import virtual_weights
        vw = virtual_weights(model, sender=(0, 2), receiver=(1, 1), kind="k")   # FactoredMatrix
        vw.norm()
    """
    (l1, h1), (l2, h2) = sender, receiver
    if l1 >= l2:
        raise ValueError(f"the sender (layer {l1}) must come before the receiver (layer {l2})")
    w = wrap(model).weights(fold_ln=fold_ln)
    ov1, qk2, ov2 = w.OV[l1, h1], w.QK[l2, h2], w.OV[l2, h2]
    if kind == "q":
        return ov1 @ qk2
    if kind == "k":
        return qk2 @ ov1.T
    if kind == "v":
        return ov1 @ ov2
    raise ValueError(f"kind must be 'q', 'k' or 'v', got {kind!r}")


def copying_scores(model: Any, fold_ln: bool = True) -> Tensor:
    """(layer, head): sum(re lambda) / sum(|lambda|) over the eigenvalues of W_E W_V W_O W_U (`full_OV`).

    Near 1: the head copies the tokens it attends to into the output; near -1: it suppresses them.
    The eigenvalues come from the d_head x d_head matrix W_O W_U W_E W_V. A head whose circuit is
    zero (all eigenvalues 0, e.g. a pruned head with W_O = 0) neither copies nor suppresses: its
    score is 0.

    Example::

        from mechscope.circuits import copying_scores
        copying_scores(ms.load("zoo:induction-quick"))   # (layer, head), in [-1, 1]
    """
    w = wrap(model).weights(fold_ln=fold_ln)
    if w.W_E is None or w.W_U is None:
        raise ValueError("copying scores need an embedding and an unembedding")
    # nonzero eigenvalues of (W_E W_V)(W_O W_U) are those of W_O (W_U W_E) W_V: never vocab x vocab
    ue = (w.W_U @ w.W_E).double()  # (d_model, d_model)
    small = w.W_O_written.double() @ ue @ w.W_V.double()  # (layer, head, d_head, d_head)
    lam = torch.linalg.eigvals(small)
    total = lam.abs().sum(-1)
    score = lam.real.sum(-1) / torch.where(total > 0, total, 1.0)  # a zero circuit: 0, not 0/0
    return score.float()
