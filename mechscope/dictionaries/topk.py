"""TopK sparse autoencoder (Gao et al. 2024): keep each row's k largest pre-activations (after ReLU).

Sparsity is fixed by k, so the loss is the reconstruction error alone, plus an auxiliary-k term
that lets dead latents learn to explain the residual error. Codes are k-sparse and decoded sparsely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import DictConfig, Dictionary, LossParts, aux_k_loss, mse_parts
from .sparse import SparseCodes, dense_threads, topk_codes


@dataclass(frozen=True)
class TopKConfig(DictConfig):
    k: int = 32  # active latents per row
    aux_k: int | None = None  # dead latents used by the auxiliary loss; None: d_in // 2
    aux_coefficient: float = 1 / 32  # weight of the auxiliary-k loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.d_sae:
            raise ValueError(f"{type(self).__name__}.k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if self.aux_k is not None and self.aux_k < 1:
            raise ValueError(f"{type(self).__name__}.aux_k must be positive or None, got {self.aux_k}")
        if self.aux_coefficient < 0:
            raise ValueError(f"{type(self).__name__}.aux_coefficient must be >= 0, got {self.aux_coefficient}")

    @property
    def k_aux(self) -> int:
        return self.aux_k if self.aux_k is not None else max(1, self.d_in // 2)


class TopKSAE(Dictionary):
    architecture = "topk"
    uses_aux_k = True
    sparse_step = True
    config: TopKConfig

    def _pre_nograd(self, xc: Tensor) -> Tensor:
        with torch.no_grad(), dense_threads():  # the one large product of a step
            return torch.addmm(self.b_enc, xc, self.W_enc)

    def codes(self, x: Tensor) -> SparseCodes:
        xc = self._centre(x)
        return topk_codes(xc, self.W_enc, self.b_enc, self.config.k, self._pre_nograd(xc))

    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        xc = self._centre(x)
        pre = self._pre_nograd(xc)
        codes = self._training_codes(xc, pre)
        recon = self.decode(codes)
        mse, fvu = mse_parts(recon, target)
        total, parts = mse, {"mse": mse.detach(), "fvu": fvu}
        if self.config.aux_coefficient > 0:
            aux = aux_k_loss(self, x, pre, target - recon, dead, self.config.k_aux)
            if aux is not None:
                total = total + self.config.aux_coefficient * aux
                parts["aux"] = aux.detach()
        self._observe(codes)
        return LossParts(total, parts, codes, recon)

    def _training_codes(self, xc: Tensor, pre: Tensor) -> SparseCodes:
        """The codes of a training step (differentiable in their values)."""
        return topk_codes(xc, self.W_enc, self.b_enc, self.config.k, pre)

    def _observe(self, codes: SparseCodes) -> None:
        """Called with each training step's codes (running statistics of subclasses)."""
