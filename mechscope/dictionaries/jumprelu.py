"""JumpReLU sparse autoencoder (Rajamanoharan et al. 2024) trained with straight-through estimators.

    codes = pre · H(pre - θ),   θ > 0 per latent (kept positive by `constrain_`)
    loss  = ||x - x_hat||² + λ Σ_i H(pre_i - θ_i)          (an L0 penalty)

H has zero derivative almost everywhere, so θ learns through pseudo-derivatives with a rectangle
kernel K(u) = 1[|u| < 1/2] of bandwidth ε:
    ∂ codes_i / ∂θ_i   ≈ -(θ_i / ε) K((pre_i - θ_i) / ε)
    ∂ H(pre_i - θ_i) / ∂θ_i ≈ -(1 / ε) K((pre_i - θ_i) / ε)
and codes pass the ordinary gradient to pre where they are open. Decoder rows have unit norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import DictConfig, Dictionary, LossParts, mse_parts


@dataclass(frozen=True)
class JumpReLUConfig(DictConfig):
    l0_coefficient: float = 1.0  # λ, for inputs scaled to E||x||² = d_in
    bandwidth: float = 0.05  # ε of the rectangle kernel, in pre-activation units
    initial_threshold: float = 0.01  # θ at initialisation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coefficient < 0:
            raise ValueError(f"JumpReLUConfig.l0_coefficient must be >= 0, got {self.l0_coefficient}")
        if self.bandwidth <= 0 or self.initial_threshold <= 0:
            raise ValueError("JumpReLUConfig.bandwidth and initial_threshold must be positive, got "
                             f"{self.bandwidth} and {self.initial_threshold}")


def _kernel(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        g_pre = g * (pre > threshold)
        g_thr = -(threshold / eps) * _kernel((pre - threshold) / eps) * g
        return g_pre, g_thr.sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        g_thr = -(1.0 / eps) * _kernel((pre - threshold) / eps) * g
        return None, g_thr.sum(0), None


class JumpReLUSAE(Dictionary):
    architecture = "jumprelu"
    config: JumpReLUConfig

    def __init__(self, config: JumpReLUConfig):
        super().__init__(config)
        # θ itself is the parameter (the SAELens file layout); `constrain_` keeps it above zero
        self.threshold = nn.Parameter(torch.full((config.d_sae,), float(config.initial_threshold)))

    @torch.no_grad()
    def constrain_(self) -> None:
        super().constrain_()
        self.threshold.clamp_(min=1e-6)

    def codes(self, x: Tensor) -> Tensor:
        return _JumpReLU.apply(self.preactivations(x), self.threshold, self.config.bandwidth)

    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        pre = self.preactivations(x)
        codes = _JumpReLU.apply(pre, self.threshold, self.config.bandwidth)
        recon = self.decode(codes)
        mse, fvu = mse_parts(recon, target)
        l0 = _Step.apply(pre, self.threshold, self.config.bandwidth).sum(-1).mean()
        total = mse + sparsity_scale * self.config.l0_coefficient * l0
        return LossParts(total, {"mse": mse.detach(), "fvu": fvu, "l0_penalty": l0.detach()}, codes, recon)
