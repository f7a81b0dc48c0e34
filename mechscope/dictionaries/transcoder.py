"""Transcoder (Dunefsky et al. 2024): a sparse dictionary from an MLP's input to that MLP's output.

It reads one site (the MLP's input, e.g. `ln2.L`) and reconstructs another (`mlp_out.L`), so each
latent is an input direction that triggers it and an output direction it writes: a sparse,
readable stand-in for the MLP. The activation is TopK (with the auxiliary-k loss); the decoder
bias is not subtracted from the input, whose space differs from the output's.

The input is centred instead: during training the encoder reads x - μ, μ the mean input of the
first batch, the trainer scales that centred input to E||(x - μ) s||² = d_in, and at the end μ is
folded into the encoder bias (b_enc - μ W_enc), so a saved transcoder reads raw inputs. An MLP's
input is far from centred (in SmolLM2-135M the mean of `ln2.14` carries a third of its energy):
read raw, a latent whose encoder direction points away from the mean never reaches the top k, and
its auxiliary-k pre-activations sit below zero too, so nothing revives it; and scaled by the raw
energy, the varying part of the input is small next to the encoder biases Adam moves.

With `skip=True` the transcoder also has a learned linear skip connection (Paulo et al. 2025,
"Transcoders beat sparse autoencoders"): recon = codes W_dec + b_dec + x W_skip, W_skip (d_in, d_out)
starting at zero and reading the raw input. The linear part of the MLP then needs no latents, and
the latents are left for what is not linear. Scales fold into it as W_skip s_in / s_out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import CentredInput, Codes, require_output_width
from .topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class TranscoderConfig(TopKConfig):
    """A TopK config with d_out required (the output site's width) and an optional linear skip connection.

    Example::

        from mechscope.dictionaries import TranscoderConfig, build
        tc = build(TranscoderConfig(d_in=576, d_sae=4608, d_out=576, k=32, skip=True))
    """

    apply_b_dec_to_input: bool = False  # input and output live in different spaces
    skip: bool = False  # a learned linear skip connection x W_skip added to the reconstruction

    def __post_init__(self) -> None:
        require_output_width(self)
        super().__post_init__()


class Transcoder(CentredInput, TopKSAE):
    """TopK transcoder from an MLP's input (batch, d_in) to its output (batch, d_out); see the module
    docstring.

    Example::

        from mechscope.dictionaries import build
        tc = build("transcoder", d_in=576, d_sae=4608, d_out=576, k=32)
        y = tc(x)                                # MLP input x (batch, 576) -> MLP output (batch, 576)
    """

    architecture = "transcoder"
    config: TranscoderConfig

    def __init__(self, config: TranscoderConfig):
        super().__init__(config)
        self.W_skip = nn.Parameter(torch.zeros(config.in_width, config.out_width)) if config.skip else None

    def reconstruct(self, x: Tensor, codes: Codes) -> Tensor:
        """(batch, d_out): the decoded codes, plus x W_skip with a skip connection."""
        recon = self.decode(codes)
        return recon if self.W_skip is None else torch.addmm(recon, x, self.W_skip)

    @torch.no_grad()
    def fold_scale_(self, s_in: float, s_out: float) -> None:
        """Scale the skip connection (W_skip s_in / s_out), then fold μ and the scales (CentredInput)."""
        if self.W_skip is not None:
            self.W_skip.mul_(s_in / s_out)
        super().fold_scale_(s_in, s_out)
