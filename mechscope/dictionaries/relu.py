"""ReLU sparse autoencoder with an L1 penalty weighted by decoder norms (Anthropic, April 2024 update).

    codes = ReLU(pre),  loss = ||x - x_hat||² + λ Σ_i codes_i ||W_dec,i||

Weighting by the decoder norm removes the shortcut of shrinking codes while growing decoder rows,
so the decoder is left unconstrained. Codes are dense tensors (any number of latents may fire).
Dead latents are handled by resampling in the trainer (`TrainConfig.resample_every`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import DictConfig, Dictionary, LossParts, mse_parts
from .target import check_target


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
    config: ReLUConfig

    def codes(self, x: Tensor) -> Tensor:
        """(batch, d_sae) dense codes: ReLU of the pre-activations."""
        return self.preactivations(x).relu()

    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        """The training loss on a batch: squared error plus λ Σ_i codes_i ||W_dec,i||."""
        codes = self.codes(x)
        recon = self.decode(codes)
        mse, fvu = mse_parts(recon, target)
        l1 = (codes * self.W_dec.norm(dim=-1)).sum(-1).mean()
        total = mse + sparsity_scale * self.config.l1_coefficient * l1
        return LossParts(total, {"mse": mse.detach(), "fvu": fvu, "l1": l1.detach()}, codes, recon)
