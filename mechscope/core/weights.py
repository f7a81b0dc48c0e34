"""Weights: read-only per-layer, per-head weight views in one convention, and layer-norm folding.

Convention (row vectors, x @ W):
    W_E    (vocab, d_model)            W_pos  (n_ctx, d_model) or None
    W_Q    (layer, head, d_model, d_head)   b_Q (layer, head, d_head)
    W_K    (layer, head, d_model, d_head)   b_K  -- one per *query* head: under grouped-query
    W_V    (layer, head, d_model, d_head)   b_V     attention key/value heads are repeated
    W_O    (layer, head, d_head, d_model)   b_O (layer, d_model)
    W_in   (layer, d_model, d_mlp)     b_in   (layer, d_mlp)
    W_gate (layer, d_model, d_mlp) or None (gated MLPs: post = act(x W_gate) * (x W_in))
    W_out  (layer, d_mlp, d_model)     b_out  (layer, d_model)
    W_U    (d_model, vocab)            b_U    (vocab,)
    ln1_w, ln1_b, ln2_w, ln2_b (layer, d_model); lnf_w, lnf_b (d_model,)  -- b None for RMSNorm
    q_norm_w, k_norm_w (layer, head, d_head) or None   per-head query/key RMSNorm gains (Qwen3, Gemma 3)
    ln1_post_w, ln2_post_w (layer, d_model) or None    RMSNorm gains on the attention / MLP output
                                                       before the residual add (Gemma's sandwich norms)
Queries and keys here are before any rotary position embedding. Norm gains are the effective
multipliers (Gemma's norms scale by 1 + weight: the views hold 1 + weight).

Norms that no matrix can hold. A per-head query/key norm divides each head's query (key) by its
own RMS and then multiplies by its gain; a post-norm does the same to the attention (MLP) output.
The RMS is taken *before* the gain, so the gain cannot be folded into W_Q, W_K or W_O: W_Q, W_K
and W_O stay the raw projections (they recompute the pre-norm queries, keys and head outputs
exactly) and the gains stay in their own fields, folded or not. The circuit views `QK`, `OV`,
`full_QK` and `full_OV` include the gains, which makes them the model's maps up to a positive
factor per token (pair) -- 1 / (rms(q) rms(k)) for scores before rotary, 1 / rms(attention output)
at a position for OV -- that cancels in composition and copying scores and in any sign or
direction read off them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from .factored import FactoredMatrix


@dataclass(frozen=True, eq=False)
class Weights:
    """A model's weights in this module's convention (row vectors, x @ W), stacked over layers.

    Keys and values are repeated to one per query head (`W_K_grouped`, `W_V_grouped` undo it);
    None where the model has no such weight.

    Example::

        w = model.weights()
        w.W_Q.shape                              # (layer, head, d_model, d_head)
        w.OV[1, 3].svd()                         # head L1H3's OV circuit, kept factored
        w.fold_layer_norm().W_in                 # (layer, d_model, d_mlp)
    """

    n_heads: int
    n_kv_heads: int
    W_E: Tensor | None
    W_pos: Tensor | None
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor | None
    b_K: Tensor | None
    b_V: Tensor | None
    b_O: Tensor | None
    W_in: Tensor | None
    b_in: Tensor | None
    W_gate: Tensor | None
    W_out: Tensor | None
    b_out: Tensor | None
    W_U: Tensor | None
    b_U: Tensor | None
    ln1_w: Tensor | None = None
    ln1_b: Tensor | None = None
    ln2_w: Tensor | None = None
    ln2_b: Tensor | None = None
    lnf_w: Tensor | None = None
    lnf_b: Tensor | None = None
    q_norm_w: Tensor | None = None
    k_norm_w: Tensor | None = None
    ln1_post_w: Tensor | None = None
    ln2_post_w: Tensor | None = None
    ln_folded: bool = False
    foldable: bool = True  # False for post-LN models (BERT), where norms sit after the residual add

    def to(self, device: str | torch.device) -> "Weights":
        """These weights with every tensor on `device` (the same object when they are all there)."""
        moved = {f.name: v.to(device) for f in fields(self)
                 if isinstance(v := getattr(self, f.name), Tensor) and v.device != torch.device(device)}
        return replace(self, **moved) if moved else self

    @property
    def n_layers(self) -> int:
        """The number of blocks."""
        return int(self.W_Q.shape[0])

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def W_K_grouped(self) -> Tensor:
        """Keys per key/value head: (layer, kv_head, d_model, d_head)."""
        return self.W_K[:, :: self.group_size]

    @property
    def W_V_grouped(self) -> Tensor:
        """Values per key/value head: (layer, kv_head, d_model, d_head)."""
        return self.W_V[:, :: self.group_size]

    @property
    def W_Q_scored(self) -> Tensor:
        """W_Q with the per-head query norm's gain on its output columns (W_Q without such a norm)."""
        return self.W_Q if self.q_norm_w is None else self.W_Q * self.q_norm_w.unsqueeze(-2)

    @property
    def W_K_scored(self) -> Tensor:
        """W_K with the per-head key norm's gain on its output columns (W_K without such a norm)."""
        return self.W_K if self.k_norm_w is None else self.W_K * self.k_norm_w.unsqueeze(-2)

    @property
    def W_O_written(self) -> Tensor:
        """W_O with the post-attention norm's gain on its output columns: what each head writes to
        the residual, up to the norm's RMS division (W_O without a post-norm)."""
        if self.ln1_post_w is None:
            return self.W_O
        return self.W_O * self.ln1_post_w[:, None, None, :]

    @property
    def QK(self) -> FactoredMatrix:
        """Bilinear attention score form per (layer, head): x_q W_Q W_K^T x_k^T, (d_model, d_model).

        With per-head query/key norms, their gains are included and the form is the score up to
        the positive factor 1 / (rms(x_q W_Q) rms(x_k W_K)) (see the module docstring)."""
        return FactoredMatrix(self.W_Q_scored, self.W_K_scored.transpose(-1, -2))

    @property
    def OV(self) -> FactoredMatrix:
        """What each head writes per attended residual vector: x W_V W_O, (d_model, d_model).

        With a post-attention norm, its gain is included and the write is exact up to the positive
        factor 1 / rms(attention output) at the position (the same for every head there)."""
        return FactoredMatrix(self.W_V, self.W_O_written)

    @property
    def full_OV(self) -> FactoredMatrix:
        """Token to logit through each head: W_E W_V W_O W_U, (layer, head, vocab, d_vocab_out).

        Row t: what attending to token t adds to every logit along the direct path (embedding ->
        the head's values -> its output -> unembedding), kept factored through d_head.
        """
        if self.W_E is None or self.W_U is None:
            raise ValueError("the full OV circuit needs an embedding and an unembedding")
        return FactoredMatrix(self.W_E @ self.W_V, self.W_O_written @ self.W_U)

    @property
    def full_QK(self) -> FactoredMatrix:
        """Query token to key token through each head: W_E W_Q W_K^T W_E^T, (layer, head, vocab, vocab).

        The direct token path only (positional embeddings and earlier layers left out), factored.
        """
        if self.W_E is None:
            raise ValueError("the full QK circuit needs an embedding")
        return FactoredMatrix(self.W_E @ self.W_Q_scored, (self.W_E @ self.W_K_scored).transpose(-1, -2))

    def fold_layer_norm(self) -> "Weights":
        """Fold each norm's scale (and shift) into the weights that read its output.

        After folding, ln*_w are ones and ln*_b zeros: the norm only centres (LayerNorm) and
        divides by its RMS. The results of the model are unchanged. Norms that read a projection's
        output (per-head query/key norms, post-norms) keep their gains: the RMS they divide by is
        taken before the gain, so no weight can absorb it (see the module docstring).
        """
        if self.ln_folded:
            return self
        if not self.foldable:
            raise ValueError("this model normalises after the residual add (post-LN); "
                             "its layer norms cannot be folded into the next weights")

        def fold(w: Tensor | None, b: Tensor | None, g: Tensor | None, beta: Tensor | None):
            # w: ([layer,] [head,] d_model, out); g, beta: ([layer,] d_model) act on w's input rows
            if w is None or g is None:
                return w, b
            mid = w.dim() - g.dim() - 1  # number of head axes between layer and d_model
            lead = g.shape[:-1]
            view = lambda t: t.reshape(*lead, *([1] * mid), t.shape[-1])  # noqa: E731
            w2 = w * view(g).unsqueeze(-1)
            if beta is not None:
                shift = (view(beta).unsqueeze(-2) @ w).squeeze(-2)  # ([layer,] [head,] out)
                b = shift if b is None else b + shift
            return w2, b

        W_Q, b_Q = fold(self.W_Q, self.b_Q, self.ln1_w, self.ln1_b)
        W_K, b_K = fold(self.W_K, self.b_K, self.ln1_w, self.ln1_b)
        W_V, b_V = fold(self.W_V, self.b_V, self.ln1_w, self.ln1_b)
        W_in, b_in = fold(self.W_in, self.b_in, self.ln2_w, self.ln2_b)
        W_gate, _ = fold(self.W_gate, None, self.ln2_w, None)
        W_U, b_U = fold(self.W_U, self.b_U, self.lnf_w, self.lnf_b)
        if self.W_gate is not None and self.ln2_b is not None:
            raise ValueError("gated MLP after a LayerNorm with a shift: the gate bias has no slot")
        ones = lambda t: None if t is None else torch.ones_like(t)  # noqa: E731
        zeros = lambda t: None if t is None else torch.zeros_like(t)  # noqa: E731
        return replace(self, W_Q=W_Q, b_Q=b_Q, W_K=W_K, b_K=b_K, W_V=W_V, b_V=b_V, W_in=W_in,
                       b_in=b_in, W_gate=W_gate, W_U=W_U, b_U=b_U, ln1_w=ones(self.ln1_w),
                       ln1_b=zeros(self.ln1_b), ln2_w=ones(self.ln2_w), ln2_b=zeros(self.ln2_b),
                       lnf_w=ones(self.lnf_w), lnf_b=zeros(self.lnf_b), ln_folded=True)
