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

from .sparse import SparseCodes, batch_topk_codes
from .topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """A TopK config plus the momentum of the running mean that estimates the inference threshold θ.

    Example::

        from mechscope.dictionaries import BatchTopKConfig, build
        sae = build(BatchTopKConfig(d_in=576, d_sae=4608, k=32))
    """

    threshold_momentum: float = 0.99  # running-mean momentum of the inference threshold

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum < 1:
            raise ValueError(f"BatchTopKConfig.threshold_momentum must be in [0, 1), got {self.threshold_momentum}")


class BatchTopKSAE(TopKSAE):
    """BatchTopK sparse autoencoder: the batch's B·k largest activations while training, a global threshold θ
    after.

    Example::

        from mechscope.dictionaries import build
        sae = build("batchtopk", d_in=576, d_sae=4608, k=32)   # a BatchTopKSAE
        codes = sae.codes(x)                     # x (batch, 576): SparseCodes, the threshold after training
    """

    architecture = "batchtopk"
    uses_aux_k = True
    sparse_step = True
    config: BatchTopKConfig

    def __init__(self, config: BatchTopKConfig):
        super().__init__(config)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def codes(self, x: Tensor) -> SparseCodes:
        """Sparse codes of rows `x` (batch, d_in): batch top-k while training or before θ is estimated, else the
        threshold."""
        xc = self._centre(x)
        pre = self._pre_nograd(xc)
        if self.training or float(self.threshold) < 0:
            return batch_topk_codes(xc, self.W_enc, self.b_enc, self.config.k, pre)
        return self.threshold_codes(pre)

    def threshold_codes(self, pre: Tensor) -> SparseCodes:
        """Codes by the global threshold (inference): pre where pre > θ (not differentiable)."""
        return SparseCodes.from_dense(pre * (pre > self.threshold.clamp_min(0)))

    def _training_codes(self, xc: Tensor, pre: Tensor, centre: Tensor | None = None) -> SparseCodes:
        return batch_topk_codes(xc, self.W_enc, self.b_enc, self.config.k, pre, centre)

    @torch.no_grad()
    def _observe(self, codes: SparseCodes) -> None:
        """Move θ towards the smallest activation this batch kept."""
        positive = codes.values.detach()
        positive = positive[positive > 0]
        if positive.numel() == 0:
            return
        low = positive.min()
        m = self.config.threshold_momentum
        self.threshold.copy_(low if float(self.threshold) < 0 else m * self.threshold + (1 - m) * low)

    @torch.no_grad()
    def calibrate_(self, batches: list[Tensor]) -> None:
        """Set θ from the final weights: the mean over `batches` of the smallest activation batch
        top-k keeps. The running mean lags the weights while they move, and a lagging θ keeps fewer
        than k latents per row at inference; after this it keeps about k."""
        lows = []
        for x in batches:
            pre = self._pre_nograd(self._centre(x)).clamp_min(0)
            n = min(pre.numel(), x.shape[0] * self.config.k)
            low = pre.flatten().topk(n).values[-1]
            if low > 0:
                lows.append(low)
        if lows:
            self.threshold.copy_(torch.stack(lows).mean())

    @torch.no_grad()
    def fold_scale_(self, s_in: float, s_out: float) -> None:
        """As `Dictionary.fold_scale_`; the pre-activations do not change, so θ stays as it is."""
        super().fold_scale_(s_in, s_out)  # pre-activations do not change, and neither does θ
