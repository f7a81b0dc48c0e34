"""Crosscoder (Lindsey et al. 2024): one dictionary over several sources read side by side.

The sources are the same token's activations in two models (model diffing) or at several layers
of one. Every latent has one encoder row and one decoder direction per source:

    pre   = Σ_s (x_s - b_dec,s) W_enc,s + b_enc          x: (batch, n_sources, d_in)
    codes = TopK(pre) or BatchTopK(pre)                   shared by all sources
    x̂_s   = codes W_dec,s + b_dec,s                        W_dec: (d_sae, n_sources, d_in)

Weights are stored flat (W_enc (n_sources·d_in, d_sae), W_dec (d_sae, n_sources·d_in)), so the
TopK machinery, sparse decoding and the auxiliary-k loss apply unchanged; each decoder row (all
sources together) has unit norm. `decoder_norms()` gives each latent's norm per source: for two
models, a latent whose norm sits almost entirely in one of them is specific to that model.

`BatchTopKCrosscoder` ("batchtopk-crosscoder") is the same crosscoder with BatchTopK's activation
(`batchtopk.py`: the batch's B·k largest pre-activations while training, one calibrated threshold
outside it), as Minder et al. (2025) train it: a row keeps as many latents as it needs, so tokens
where the models differ can use more than k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class CrosscoderConfig(TopKConfig):
    """A TopK config for `n_sources` sources of width d_in each; the crosscoder reconstructs its own sources.

    Example::

        from mechscope.dictionaries import CrosscoderConfig, build
        cc = build(CrosscoderConfig(d_in=128, d_sae=1024, k=16, n_sources=2))
    """

    n_sources: int = 2  # models or layers read side by side; d_in is one source's width

    def __post_init__(self) -> None:
        if self.n_sources < 2:
            raise ValueError(f"CrosscoderConfig.n_sources must be >= 2, got {self.n_sources}")
        if self.d_out is not None:
            raise ValueError("a crosscoder reconstructs its own sources: leave d_out unset")
        super().__post_init__()

    @property
    def in_width(self) -> int:
        """n_sources · d_in: the sources side by side."""
        return self.n_sources * self.d_in


class Crosscoder(TopKSAE):
    """TopK crosscoder: one dictionary over several sources, inputs (batch, n_sources, d_in); see the module
    docstring.

    Example::

        from mechscope.dictionaries import build
        cc = build("crosscoder", d_in=128, d_sae=1024, k=16, n_sources=2)
        cc.relative_norms()                      # (d_sae,): how much each latent decodes to source 1
    """

    architecture = "crosscoder"
    config: CrosscoderConfig

    @property
    def in_shape(self) -> tuple[int, ...]:
        """(n_sources, d_in): one vector per source."""
        return (self.config.n_sources, self.config.d_in)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The same as `in_shape`: each source is reconstructed."""
        return self.in_shape

    def split_batch(self, batch: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """One tensor (batch, n_sources, d_in), or one tensor (batch, d_in) per source."""
        if isinstance(batch, (tuple, list)) and len(batch) == self.config.n_sources:
            batch = torch.stack(list(batch), dim=1)
        elif isinstance(batch, (tuple, list)) and len(batch) == 1:
            batch = batch[0]
        if not isinstance(batch, Tensor):
            raise ValueError(f"a crosscoder trains on (batch, {self.config.n_sources}, d_in) tensors or "
                             f"{self.config.n_sources} tensors (batch, d_in), got {len(batch)} tensors")
        x = self._flat(batch)
        return x, x

    def decoder_norms(self) -> Tensor:
        """(d_sae, n_sources): the norm of each latent's decoder direction in each source."""
        c = self.config
        return self.W_dec.detach().reshape(c.d_sae, c.n_sources, c.d_in).norm(dim=-1)

    def relative_norms(self, a: int = 0, b: int = 1) -> Tensor:
        """(d_sae,) ||W_dec,b|| / (||W_dec,a|| + ||W_dec,b||): 0 only in source a, 1 only in b, 0.5 shared."""
        n = self.decoder_norms()
        return n[:, b] / (n[:, a] + n[:, b]).clamp_min(1e-12)


@dataclass(frozen=True)
class BatchTopKCrosscoderConfig(CrosscoderConfig, BatchTopKConfig):
    """A crosscoder's sources with BatchTopK's threshold settings.

    Example::

        from mechscope.dictionaries import BatchTopKCrosscoderConfig, build
        cc = build(BatchTopKCrosscoderConfig(d_in=128, d_sae=1024, k=16, n_sources=2))
    """


class BatchTopKCrosscoder(BatchTopKSAE, Crosscoder):
    """A crosscoder whose codes are BatchTopK's: BatchTopKSAE's activation, threshold and
    calibration, Crosscoder's sources and decoder norms.

    Example::

        from mechscope.dictionaries import build
        cc = build("batchtopk-crosscoder", d_in=128, d_sae=1024, k=16, n_sources=2)
        x_hat = cc(x)                            # x (batch, 2, d_in) -> (batch, 2, d_in)
    """

    architecture = "batchtopk-crosscoder"
    config: BatchTopKCrosscoderConfig
