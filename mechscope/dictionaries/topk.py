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
    """A TopK SAE: the `k` largest pre-activations of each row are kept (Gao et al. 2024).

    Dead latents are revived by an auxiliary loss: the `aux_k` largest pre-activations among
    latents that have not fired for a while reconstruct the residual error, weighted by
    `aux_coefficient`.

    Example::

        from mechscope.dictionaries import TopKConfig, build
        sae = build(TopKConfig(d_in=576, d_sae=4608, k=32))
    """

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
        """The number of dead latents the auxiliary loss uses: `aux_k`, else d_in // 2."""
        return self.aux_k if self.aux_k is not None else max(1, self.d_in // 2)


class TopKSAE(Dictionary):
    """A sparse autoencoder whose codes are each row's top-k latents; decoded sparsely.

        sae = dl.build("topk", d_in=576, d_sae=4608, k=32)
        codes = sae.codes(x)          # SparseCodes: k (index, value) pairs per row
        x_hat = sae.decode(codes)     # (rows, d_in)

    Example::

        from mechscope.dictionaries import build
        sae = build("topk", d_in=576, d_sae=4608, k=32)
        codes = sae.codes(x)                     # x (batch, 576): 32 latents per row
    """

    architecture = "topk"
    uses_aux_k = True
    sparse_step = True
    config: TopKConfig

    _pre_buffer: Tensor | None = None

    def _pre_nograd(self, xc: Tensor) -> Tensor:
        """(batch, d_sae) pre-activations without a graph: the one large product of a step.

        While training, every step writes them into the same buffer: a fresh tensor this large is
        new memory from the operating system each step, and touching it first costs about a tenth
        of the product itself. (The caller must be done with one step's pre-activations before
        the next; the codes and the backward pass keep only the selected entries.)"""
        with torch.no_grad(), dense_threads():
            if not self.training:
                return torch.addmm(self.b_enc, xc, self.W_enc)
            shape = (xc.shape[0], self.W_enc.shape[1])
            buf = self._pre_buffer
            if buf is None or buf.shape != shape or buf.dtype != xc.dtype or buf.device != xc.device:
                buf = self._pre_buffer = torch.empty(shape, dtype=xc.dtype, device=xc.device)
            return torch.addmm(self.b_enc, xc, self.W_enc, out=buf)

    def train(self, mode: bool = True) -> "TopKSAE":
        """Switch training mode (nn.Module.train); leaving it drops the buffer the training steps reuse."""
        if not mode:
            self._pre_buffer = None  # outside training, the buffer is not kept
        return super().train(mode)

    def codes(self, x: Tensor) -> SparseCodes:
        """The sparse codes of `x` (..., d_in): the k largest pre-activations of each row."""
        xc = self._centre(x)
        return topk_codes(xc, self.W_enc, self.b_enc, self.config.k, self._pre_nograd(xc))

    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        """The training loss of one batch: reconstruction of `target`, plus the auxiliary-k loss on `dead` latents."""
        with torch.no_grad():
            xc = self._centre(x)
        pre = self._pre_nograd(xc)
        # an autoencoder's decoder bias, subtracted from the input, learns through the encoder too:
        # the selected entries give it its gradient (see selected_preactivations)
        codes = self._training_codes(xc, pre, self.b_dec if self.config.apply_b_dec_to_input else None)
        recon = self.reconstruct(x, codes)
        mse, fvu = mse_parts(recon, target)
        total, parts = mse, {"mse": mse.detach(), "fvu": fvu}
        if self.config.aux_coefficient > 0 and dead is not None:
            aux = aux_k_loss(self, x, pre, target - recon, dead, self.config.k_aux)
            if aux is not None:
                total = total + self.config.aux_coefficient * aux
                parts["aux"] = aux.detach()
        self._observe(codes)
        return LossParts(total, parts, codes, recon)

    def _training_codes(self, xc: Tensor, pre: Tensor, centre: Tensor | None = None) -> SparseCodes:
        """The codes of a training step (differentiable in their values); `xc` is the input already
        centred on `centre`."""
        return topk_codes(xc, self.W_enc, self.b_enc, self.config.k, pre, centre)

    def _observe(self, codes: SparseCodes) -> None:
        """Called with each training step's codes (running statistics of subclasses)."""
