"""BatchTopK sparse autoencoder (Bussmann et al. 2024): the batch's B·k largest activations, anywhere.

Training keeps the B·k largest pre-activations of the whole batch, so a row may use more or fewer
than k latents. Outside training a row cannot see its batch: a latent then fires where its
pre-activation exceeds one global threshold θ, estimated during training as a running mean of the
smallest kept activation. Dead latents train through the auxiliary-k loss, as for TopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Dictionary, LossParts, aux_k_loss, mse_parts
from .sparse import SparseCodes, batch_topk_codes, dense_threads
from .topk import TopKConfig


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    threshold_momentum: float = 0.99  # running-mean momentum of the inference threshold

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum < 1:
            raise ValueError(f"BatchTopKConfig.threshold_momentum must be in [0, 1), got {self.threshold_momentum}")


class BatchTopKSAE(Dictionary):
    architecture = "batchtopk"
    uses_aux_k = True
    sparse_step = True
    config: BatchTopKConfig

    def __init__(self, config: BatchTopKConfig):
        super().__init__(config)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def _pre_nograd(self, xc: Tensor) -> Tensor:
        with torch.no_grad(), dense_threads():
            return torch.addmm(self.b_enc, xc, self.W_enc)

    def codes(self, x: Tensor) -> SparseCodes:
        xc = self._centre(x)
        pre = self._pre_nograd(xc)
        if self.training or float(self.threshold) < 0:
            return batch_topk_codes(xc, self.W_enc, self.b_enc, self.config.k, pre)
        return self.threshold_codes(pre)

    def threshold_codes(self, pre: Tensor) -> SparseCodes:
        """Codes by the global threshold (inference): pre where pre > θ (not differentiable)."""
        return SparseCodes.from_dense(pre * (pre > self.threshold.clamp_min(0)))

    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        xc = self._centre(x)
        pre = self._pre_nograd(xc)
        codes = batch_topk_codes(xc, self.W_enc, self.b_enc, self.config.k, pre)
        recon = self.decode(codes)
        mse, fvu = mse_parts(recon, target)
        total, parts = mse, {"mse": mse.detach(), "fvu": fvu}
        if self.config.aux_coefficient > 0:
            aux = aux_k_loss(self, x, pre, target - recon, dead, self.config.k_aux)
            if aux is not None:
                total = total + self.config.aux_coefficient * aux
                parts["aux"] = aux.detach()
        self._update_threshold(codes)
        return LossParts(total, parts, codes, recon)

    @torch.no_grad()
    def _update_threshold(self, codes: SparseCodes) -> None:
        positive = codes.values.detach()
        positive = positive[positive > 0]
        if positive.numel() == 0:
            return
        low = positive.min()
        m = self.config.threshold_momentum
        self.threshold.copy_(low if float(self.threshold) < 0 else m * self.threshold + (1 - m) * low)

    @torch.no_grad()
    def fold_scale_(self, s_in: float, s_out: float) -> None:
        super().fold_scale_(s_in, s_out)  # pre-activations do not change, and neither does θ
