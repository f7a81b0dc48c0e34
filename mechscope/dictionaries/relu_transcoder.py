"""ReLU transcoder: a transcoder (MLP input -> MLP output, see transcoder.py) whose activation is a
ReLU with the decoder-norm-weighted L1 penalty of relu.py, instead of TopK.

    codes = ReLU((x - μ) W_enc + b_enc),  recon = codes W_dec + b_dec,
    loss  = ||y - recon||² + λ Σ_i codes_i ||W_dec,i||

Why a second activation: a transcoder's codes are a continuous function of its input only with a
ReLU. Under TopK a latent that leaves the top k drops from the k-th largest pre-activation to 0 at
once, so a small change upstream (removing one latent, say) can swap latents in every later layer
and move the output by far more than the linear effect an attribution graph reads. With a ReLU a
latent switches off only as its pre-activation passes 0, where its code already is 0, so the
replacement model responds to small perturbations as its linearisation says, up to the kinks it
crosses. The price: L0 is set by λ, not fixed; `target_l0` adapts λ during training (target.py),
and L0 varies from token to token.

The input is centred on μ during training and μ is folded into the encoder bias when training
ends, as for the TopK transcoder, so a saved ReLU transcoder reads raw MLP inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import CentredInput, require_output_width
from .relu import ReLUConfig, ReLUSAE


@dataclass(frozen=True)
class ReLUTranscoderConfig(ReLUConfig):
    """A ReLU config with d_out required (the output site's width); no decoder bias on the input.

    Example::

        from mechscope.dictionaries import ReLUTranscoderConfig, build
        tc = build(ReLUTranscoderConfig(d_in=576, d_sae=4608, d_out=576, target_l0=32))
    """

    apply_b_dec_to_input: bool = False  # input and output live in different spaces

    def __post_init__(self) -> None:
        require_output_width(self)
        super().__post_init__()


class ReLUTranscoder(CentredInput, ReLUSAE):
    """ReLU transcoder from an MLP's input (batch, d_in) to its output (batch, d_out); see the module
    docstring.

    Example::

        from mechscope.dictionaries import build
        tc = build("relu_transcoder", d_in=576, d_sae=4608, d_out=576, target_l0=32)
        y = tc(x)                                # MLP input x (batch, 576) -> MLP output (batch, 576)
    """

    architecture = "relu_transcoder"
    config: ReLUTranscoderConfig
