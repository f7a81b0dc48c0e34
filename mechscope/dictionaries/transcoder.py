"""Transcoder (Dunefsky et al. 2024): a sparse dictionary from an MLP's input to that MLP's output.

It reads one site (the MLP's input, e.g. `ln2.L`) and reconstructs another (`mlp_out.L`), so each
latent is an input direction that triggers it and an output direction it writes: a sparse,
readable stand-in for the MLP. The activation is TopK (with the auxiliary-k loss); the decoder
bias is not subtracted from the input, whose space differs from the output's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class TranscoderConfig(TopKConfig):
    apply_b_dec_to_input: bool = False  # input and output live in different spaces

    def __post_init__(self) -> None:
        if self.d_out is None:
            raise ValueError("TranscoderConfig needs d_out, the width of the output site (mlp_out)")
        super().__post_init__()


class Transcoder(TopKSAE):
    architecture = "transcoder"
    config: TranscoderConfig
