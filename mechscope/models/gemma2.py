"""Gemma 2: Llama-like projections with sandwich norms, a scaled embedding and soft-capped scores.

What differs from Llama, and where the sites sit (Gemma 3, `gemma3.py`, adds query/key norms):
- Every norm is an RMSNorm that multiplies by (1 + weight): the weight views hold 1 + weight.
- The embedding output is multiplied by sqrt(d_model) (rounded to the weights' dtype): `embed` is
  after the scaling and `W_E` is the scaled table, so `W_E[ids]` is what enters the residual.
- Sandwich norms: the attention output goes through `post_attention_layernorm`, the MLP output
  through `post_feedforward_layernorm`, before each residual add. `attn_out` and `mlp_out` are
  those norms' outputs (what is added to the residual), so resid_mid = resid_pre + attn_out and
  resid_post = resid_mid + mlp_out exactly. `attn.result` is each head's output through its slice
  of W_O: the heads sum to the post-attention norm's *input*, not to attn_out (the norm divides
  their sum by its RMS). `ln2` is `pre_feedforward_layernorm`'s output, `mlp_in` its input.
  The post-norm gains are `ln1_post_w` and `ln2_post_w`; `OV` includes the attention one.
- Scores are scaled by query_pre_attn_scalar^-0.5 and soft-capped, softcap * tanh(s / softcap)
  (`attn_logit_softcapping`), before the mask; `attn.scores` is after the cap.
- GeGLU MLP (gelu_pytorch_tanh gate): `mlp.pre` is the gate, as for Llama.
- Sliding-window layers alternate with global ones; windows of positions are refused for them
  (`HFModel.window`): every position runs in one pass.
- A final logit soft cap (`final_logit_softcapping`, 30 in released Gemma 2 configs) is applied
  after the unembedding: the `logits` site is the unembedding's output, before the cap, and the
  model's logits (`RunResult.logits`) are after it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..core.site import Kind
from ..core.taps import NormScale
from . import llama
from .hf import HeadIn, In, Norm, Out, Spec, bias, linear_t, rms_norm_scale


def gain(norm: nn.Module) -> Tensor:
    """The multiplier of a Gemma RMSNorm: 1 + weight (computed in float32, as its forward does)."""
    return (1.0 + norm.weight.float()).to(norm.weight.dtype)


def _rms_output(module: nn.Module, x: Tensor, d: Tensor) -> Tensor:
    # Gemma's RMSNorm applies its gain 1 + weight in float32 and casts back after it
    return ((x.float() / d) * (1.0 + module.weight.float())).type_as(x)


def rms_norm(*classes: str) -> Callable[[nn.Module], NormScale | None]:
    """The scale tap of a Gemma RMSNorm, recognised by class name (one of `classes`): divisor
    sqrt(mean(x^2) + eps) of the float32 input, output ((x / divisor) * (1 + weight)) in float32,
    cast back to the input's dtype after the gain (Llama casts before it)."""
    return rms_norm_scale(classes, "eps", _rms_output)


def _block(block: nn.Module, model) -> dict:
    return {**llama.SPEC.read_block(block, model),
            "ln1_w": gain(block.input_layernorm), "ln2_w": gain(block.pre_feedforward_layernorm),
            "ln1_post_w": gain(block.post_attention_layernorm), "ln2_post_w": gain(block.post_feedforward_layernorm)}


def _root(module: nn.Module, model) -> dict:
    base = module.base_model
    emb = base.embed_tokens
    head = module.get_output_embeddings()
    return {"W_E": emb.weight * emb.embed_scale.to(emb.weight.dtype), "W_pos": None,
            "W_U": None if head is None else linear_t(head), "b_U": None if head is None else bias(head),
            "lnf_w": gain(base.norm), "lnf_b": None}


SPEC = Spec(
    model_types=("gemma2",),
    layers="layers",
    attention="self_attn",
    out_proj="self_attn.o_proj",
    root={Kind.EMBED: Out("embed_tokens"), Kind.LN_FINAL_SCALE: Norm("norm"), Kind.LN_FINAL: Out("norm"),
          Kind.LOGITS: Out("^lm_head")},
    block={Kind.RESID_PRE: In(""), Kind.LN1_SCALE: Norm("input_layernorm"), Kind.LN1: Out("input_layernorm"),
           Kind.ATTN_OUT: Out("post_attention_layernorm"),
           Kind.RESID_MID: In("pre_feedforward_layernorm", inplace=True),
           Kind.MLP_IN: In("pre_feedforward_layernorm", branch=True), Kind.LN2_SCALE: Norm("pre_feedforward_layernorm"),
           Kind.LN2: Out("pre_feedforward_layernorm"),
           Kind.MLP_PRE: Out("mlp.gate_proj"), Kind.MLP_POST: In("mlp.down_proj"),
           Kind.MLP_OUT: Out("post_feedforward_layernorm"), Kind.RESID_POST: Out("")},
    head_in={Kind.Q_IN: HeadIn("self_attn.q_proj"), Kind.K_IN: HeadIn("self_attn.k_proj"),
             Kind.V_IN: HeadIn("self_attn.v_proj")},
    read_block=_block,
    read_root=_root,
    n_kv_heads=llama.SPEC.n_kv_heads,
    d_head=llama.SPEC.d_head,
    post_norms=True,
    norm=rms_norm("Gemma2RMSNorm"),
)
