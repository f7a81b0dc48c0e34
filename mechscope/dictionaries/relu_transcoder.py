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

Training from scratch on a short budget trains badly: with the L1 term, half the latents fire at
first, and by the time λ has shut most of them, most are dead (SmolLM2 layer 12, 4,608 latents,
323 steps of 1,024 rows, target L0 20: FVU 0.92 with 71% dead). `from_topk` starts from a trained
TopK transcoder instead: same weights, the encoder bias lowered by one threshold t, the median over
rows of the k-th largest pre-activation, so that codes = ReLU(pre - t) fire on about k latents per
row, as the TopK did, and then λ's fine-tuning (`TrainConfig(initialise=False)`) sets the
L0 (the same layer: FVU 0.68, 31% dead, where the TopK itself had 0.72).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .base import CentredInput, DictConfig, Dictionary, require_output_width
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


@torch.no_grad()
def from_topk(topk: Dictionary, x: Tensor, *, l1_coefficient: float = 3.0, target_l0: float | None = None
              ) -> ReLUTranscoder:
    """A ReLU transcoder with the weights of the trained TopK transcoder `topk` and its encoder bias
    lowered by t, the median over MLP-input rows `x` (rows, d_in) of the k-th largest pre-activation:
    codes ReLU(pre - t), about k per row (see the module docstring). `target_l0` defaults to k.

    Example::

        from mechscope.dictionaries import TrainConfig, train
        from mechscope.dictionaries.relu_transcoder import from_topk
        relu = from_topk(topk, x_rows)           # then fine-tune λ on the same rows:
        train(relu, batches, TrainConfig(tokens=300_000, lr=3e-4, initialise=False))
    """
    if topk.architecture != "transcoder" or getattr(topk.config, "skip", False):
        raise ValueError(f"from_topk needs a TopK transcoder without a skip connection, got {topk.architecture}")
    c = topk.config
    if x.ndim != 2 or x.shape[1] != c.d_in or x.shape[0] < 1:
        raise ValueError(f"from_topk needs MLP-input rows (rows, {c.d_in}), got {tuple(x.shape)}")
    shared = {f.name: getattr(c, f.name) for f in fields(DictConfig) if f.name != "apply_b_dec_to_input"}
    relu = ReLUTranscoder(ReLUTranscoderConfig(**shared, l1_coefficient=l1_coefficient,
                                                target_l0=float(c.k) if target_l0 is None else target_l0))
    relu.load_state_dict(topk.state_dict())
    relu.to(topk.W_enc.device)
    pre = topk.preactivations(x.to(topk.W_enc.device, topk.W_enc.dtype))
    relu.b_enc.sub_(pre.topk(c.k, dim=-1).values[:, -1].median())
    return relu
