"""JumpReLU sparse autoencoder (Rajamanoharan et al. 2024) trained with straight-through estimators.

    codes = pre · H(pre - θ),   θ > 0 per latent
    loss  = ||x - x_hat||² + λ Σ_i H(pre_i - θ_i)          (an L0 penalty)

H has zero derivative almost everywhere, so θ learns through pseudo-derivatives with a rectangle
kernel K(u) = 1[|u| < 1/2] of bandwidth ε:
    ∂ codes_i / ∂θ_i   ≈ -(θ_i / ε) K((pre_i - θ_i) / ε)
    ∂ H(pre_i - θ_i) / ∂θ_i ≈ -(1 / ε) K((pre_i - θ_i) / ε)
codes pass the ordinary gradient to pre where they are open, and the L0 penalty passes none to
pre: the encoder learns from the reconstruction alone, θ from both. Decoder rows have unit norm.

As in the paper, θ is learned in log space (`log_threshold`, so Adam moves it by a factor, not by
an amount) with its own learning rate (`threshold_lr`), and it starts from the data: at the
start of training each θ_i is set to the quantile of latent i's pre-activations on the first
batch above which a share `initial_l0 / d_sae` of them lies, so about `initial_l0` latents fire
per row. The threshold used by the forward pass is the buffer `threshold` (the SAELens file
field), set to exp(log_threshold) after every optimizer step; a file's θ is therefore read and
written exactly.

At equilibrium a latent's θ sits where the reconstruction it loses by closing at pre = θ is worth
λ (θ · E[-∂mse/∂code | pre = θ] = λ): a larger λ raises every θ and lowers L0. With `target_l0`
the trainer adapts λ during training (`target.L0Controller`) until the batches' L0 is the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import DictConfig, Dictionary, LossParts, mse_parts
from .target import check_target


@dataclass(frozen=True)
class JumpReLUConfig(DictConfig):
    """Fields of a JumpReLU SAE: the L0 coefficient λ, the kernel bandwidth ε, θ's start and learning rate, an
    optional target L0.

    Example::

        from mechscope.dictionaries import JumpReLUConfig, build
        sae = build(JumpReLUConfig(d_in=576, d_sae=4608, target_l0=40.0))
    """

    l0_coefficient: float = 1.0  # λ, for inputs scaled to E||x||² = d_in; with target_l0 its starting value
    bandwidth: float = 0.05  # ε of the rectangle kernel, in pre-activation units (inputs scaled as above)
    initial_threshold: float | None = None  # θ at initialisation; None: from the first batch (see initial_l0)
    initial_l0: float | None = None  # latents firing per row after the data initialisation; None: target_l0 or 64
    threshold_lr: float = 0.05  # Adam learning rate of log θ (follows the trainer's warm-up and decay)
    target_l0: float | None = None  # adapt λ during training until L0 is this (see target.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coefficient < 0:
            raise ValueError(f"JumpReLUConfig.l0_coefficient must be >= 0, got {self.l0_coefficient}")
        if self.bandwidth <= 0 or self.threshold_lr <= 0:
            raise ValueError("JumpReLUConfig.bandwidth and threshold_lr must be positive, got "
                             f"{self.bandwidth} and {self.threshold_lr}")
        if self.initial_threshold is not None and self.initial_threshold <= 0:
            raise ValueError(f"JumpReLUConfig.initial_threshold must be positive or None, got {self.initial_threshold}")
        if self.initial_l0 is not None and not 0 < self.initial_l0 < self.d_sae:
            raise ValueError(f"JumpReLUConfig.initial_l0 must be in (0, d_sae={self.d_sae}) or None, "
                             f"got {self.initial_l0}")
        check_target(self, "l0_coefficient")

    @property
    def start_l0(self) -> float:
        """Latents per row the data initialisation of θ aims at."""
        if self.initial_l0 is not None:
            return self.initial_l0
        return self.target_l0 if self.target_l0 is not None else min(64.0, self.d_sae / 2)


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
    """JumpReLU sparse autoencoder: pre · H(pre - θ) with a learned threshold θ per latent; see the module
    docstring.

    Example::

        from mechscope.dictionaries import build
        sae = build("jumprelu", d_in=576, d_sae=4608, l0_coefficient=1.0)
        z = sae.codes(x)                         # x (batch, 576) -> (batch, 4608), zero below each θ
    """

    architecture = "jumprelu"
    config: JumpReLUConfig

    def __init__(self, config: JumpReLUConfig):
        super().__init__(config)
        # until the data initialisation (or a file) sets it, θ is initial_threshold or 1 (pre-activations
        # of inputs scaled to E||x||² = d_in have unit scale)
        theta = torch.full((config.d_sae,), float(config.initial_threshold or 1.0))
        self.log_threshold = nn.Parameter(theta.log())
        self.register_buffer("threshold", theta.clone())

    # --- θ ------------------------------------------------------------------------------------------
    def _threshold(self) -> Tensor:
        """θ for the forward pass: the buffer's value exactly, with the gradient routed to log θ."""
        if not torch.is_grad_enabled() or not self.log_threshold.requires_grad:
            return self.threshold
        e = self.log_threshold.exp()
        return self.threshold + (e - e.detach())

    @torch.no_grad()
    def set_threshold_(self, theta: Tensor) -> None:
        """Set θ (d_sae,) > 0 exactly, and log θ with it."""
        theta = theta.to(self.threshold.device, self.threshold.dtype).expand_as(self.threshold)
        if not bool((theta > 0).all()):
            raise ValueError("JumpReLU thresholds must be positive")
        self.threshold.copy_(theta)
        self.log_threshold.copy_(theta.log())

    @torch.no_grad()
    def constrain_(self, latents: slice = slice(None)) -> None:
        """The base class' constraints, then the buffer `threshold` of `latents` set to exp(log_threshold)."""
        super().constrain_(latents)
        self.threshold[latents] = self.log_threshold[latents].exp()

    @torch.no_grad()
    def refresh_(self) -> None:
        """Every latent's `threshold`: exp(log_threshold)."""
        self.threshold.copy_(self.log_threshold.exp())

    @torch.no_grad()
    def init_from_batch_(self, x: Tensor, y: Tensor) -> None:
        """θ_i: the (1 - start_l0 / d_sae) quantile of latent i's pre-activations on this batch (at
        least a small positive floor), unless the config fixes initial_threshold."""
        c = self.config
        if c.initial_threshold is not None:
            self.set_threshold_(torch.full_like(self.threshold, c.initial_threshold))
            return
        self.set_threshold_(self._data_thresholds(self.preactivations(x)))

    def _data_thresholds(self, pre: Tensor) -> Tensor:
        """Per column of pre (rows, latents): the value a share start_l0 / d_sae of rows exceeds."""
        c = self.config
        q = 1.0 - c.start_l0 / c.d_sae
        k = min(pre.shape[0], max(1, math.ceil(q * pre.shape[0])))  # kthvalue: the k-th smallest per latent
        return pre.kthvalue(k, dim=0).values.clamp_min(max(1e-3, c.bandwidth / 2))

    @torch.no_grad()
    def reinit_latents_(self, latents: Tensor, x: Tensor) -> list[tuple[Tensor, tuple]]:
        """Resampled latents get θ from the data as at the start: left at a θ above everything
        their new encoder columns produce, they would stay dead."""
        theta = self.threshold.clone()
        theta[latents] = self._data_thresholds(self.preactivations(x)[:, latents])
        self.set_threshold_(theta)
        return [(self.log_threshold, (latents,))]

    def optimizer_groups(self, lr: float) -> list[dict]:
        """Two Adam groups: every parameter but log θ at `lr`, and log θ at `threshold_lr`."""
        rest = [p for n, p in self.named_parameters() if n != "log_threshold"]
        return [{"params": rest, "lr": lr}, {"params": [self.log_threshold], "lr": self.config.threshold_lr}]

    def state(self) -> dict[str, Tensor]:
        """The file contents: θ itself (log θ is its training parameterisation)."""
        return {k: v for k, v in super().state().items() if k != "log_threshold"}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accept the file's fields (θ without log θ): log θ is derived from θ."""
        state = dict(state_dict)
        if "threshold" in state and "log_threshold" not in state:
            state["log_threshold"] = state["threshold"].clamp_min(torch.finfo(state["threshold"].dtype).tiny).log()
        return super().load_state_dict(state, strict=strict, assign=assign)

    # --- forward and loss -------------------------------------------------------------------------------
    def codes(self, x: Tensor) -> Tensor:
        """(batch, d_sae) dense codes: pre-activations where they exceed θ, else zero."""
        return _JumpReLU.apply(self.preactivations(x), self._threshold(), self.config.bandwidth)

    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        """The training loss on a batch: squared error plus λ times the L0 (through the pseudo-derivatives)."""
        pre = self.preactivations(x)
        theta = self._threshold()
        codes = _JumpReLU.apply(pre, theta, self.config.bandwidth)
        recon = self.decode(codes)
        mse, fvu = mse_parts(recon, target)
        l0 = _Step.apply(pre, theta, self.config.bandwidth).sum(-1).mean()
        total = mse + sparsity_scale * self.config.l0_coefficient * l0
        return LossParts(total, {"mse": mse.detach(), "fvu": fvu, "l0_penalty": l0.detach()}, codes, recon)
