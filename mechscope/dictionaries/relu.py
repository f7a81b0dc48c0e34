"""ReLU sparse autoencoder with an L1 penalty weighted by decoder norms (Anthropic, April 2024 update).

    codes = ReLU(pre),  loss = ||x - x_hat||² + λ Σ_i codes_i ||W_dec,i||

Weighting by the decoder norm removes the shortcut of shrinking codes while growing decoder rows,
so the decoder is left unconstrained. Codes are dense tensors (any number of latents may fire).
Dead latents are handled by resampling in the trainer (`TrainConfig.resample_every`).

A training step computes the pre-activations densely once, without a graph, and keeps the positive
entries as compressed rows (any number per row): the decoder, the L1 term and every backward pass
then touch only those entries (sparse.py), as a TopK step does. Once λ has brought L0 down to tens of
latents this costs a fraction of the dense step (about a quarter at 4,608 latents of width 576 and L0
32); the loss and its gradients are the dense formula's, to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import DictConfig, Dictionary, LossParts, mse_parts
from .sparse import SparseCodes, dense_threads, selected_preactivations
from .target import check_target


DENSE_ABOVE = 0.05  # a training step keeps dense codes while more than this share of them is positive


@dataclass(frozen=True)
class ReLUConfig(DictConfig):
    """Fields of a ReLU SAE: the L1 coefficient λ, and an optional target L0 that adapts it.

    Example::

        from mechscope.dictionaries import ReLUConfig, build
        sae = build(ReLUConfig(d_in=576, d_sae=4608, l1_coefficient=3.0))
    """

    # λ, for inputs scaled to E||x||² = d_in (the trainer's default). 3 gives L0 in the tens after
    # 2M tokens (SmolLM2-135M resid_post.14: 34; the zoo's textlm: 60; see the README); λ = 1 kept
    # hundreds of latents on; with λ = 10 textlm's reconstruction was worse than its mean (FVU 1.02).
    # With target_l0: λ's starting value.
    l1_coefficient: float = 3.0
    target_l0: float | None = None  # adapt λ during training until L0 is this (see target.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coefficient < 0:
            raise ValueError(f"ReLUConfig.l1_coefficient must be >= 0, got {self.l1_coefficient}")
        check_target(self, "l1_coefficient")


class ReLUSAE(Dictionary):
    """ReLU sparse autoencoder with an L1 penalty weighted by decoder norms; see the module docstring.

    Example::

        from mechscope.dictionaries import build
        sae = build("relu", d_in=576, d_sae=4608, l1_coefficient=3.0)
        z = sae.codes(x)                         # x (batch, 576) -> (batch, 4608)
    """

    architecture = "relu"
    unit_norm_decoder = False
    sparse_step = True
    config: ReLUConfig

    def codes(self, x: Tensor) -> Tensor:
        """(batch, d_sae) dense codes: ReLU of the pre-activations."""
        return self.preactivations(x).relu()

    def training_codes(self, x: Tensor) -> Tensor | SparseCodes:
        """The positive pre-activations of rows `x` as compressed rows, differentiable in the weights
        (and in the decoder bias an autoencoder subtracts from its input): see the module docstring.
        While more than `DENSE_ABOVE` of the entries are positive (early in training, before λ has
        acted) the dense codes are cheaper and are returned instead."""
        with torch.no_grad():
            xc = self._centre(x)
            with dense_threads():
                pre = torch.addmm(self.b_enc, xc, self.W_enc)
            on = pre > 0
            dense = int(torch.count_nonzero(on)) > DENSE_ABOVE * on.numel()
        if dense:  # with the graph, outside no_grad
            return self.codes(x)
        with torch.no_grad():
            rows, latents = on.nonzero(as_tuple=True)  # row-major: entries grouped by row
            offsets = torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=x.shape[0]).cumsum(0)])
            values = pre[rows, latents]
        centre = self.b_dec if self.config.apply_b_dec_to_input else None
        values = selected_preactivations(xc, self.W_enc, self.b_enc, values, latents, offsets, centre)
        return SparseCodes(values, latents, offsets, self.config.d_sae)

    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        """The training loss on a batch: squared error plus λ Σ_i codes_i ||W_dec,i||."""
        codes = self.training_codes(x)
        recon = self.decode(codes)
        mse, fvu = mse_parts(recon, target)
        norms = self.W_dec.norm(dim=-1)
        if isinstance(codes, SparseCodes):
            l1 = (codes.values * norms[codes.latents]).sum() / max(1, x.shape[0])
        else:
            l1 = (codes * norms).sum(-1).mean()
        total = mse + sparsity_scale * self.config.l1_coefficient * l1
        return LossParts(total, {"mse": mse.detach(), "fvu": fvu, "l1": l1.detach()}, codes, recon)
