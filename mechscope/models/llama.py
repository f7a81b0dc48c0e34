"""Llama family (Llama, Qwen2, SmolLM2, Mistral): grouped-query attention, RMSNorm, gated MLP, rotary."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..core.site import Kind
from ..core.taps import NormScale
from .hf import HeadIn, In, Norm, Out, Spec, bias, heads_in, heads_out, linear_t, ln_params, repeat_kv, rms_norm_scale


def _rms_output(module: nn.Module, x: Tensor, d: Tensor) -> Tensor:
    # Llama's RMSNorm computes in float32 and casts back before its gain
    return module.weight * (x.float() / d).to(x.dtype)


def rms_norm(*classes: str) -> Callable[[nn.Module], NormScale | None]:
    """The scale tap of a Llama-style RMSNorm, recognised by class name (one of `classes`).

    Such a norm computes in float32 and casts back before its gain: weight * (x / divisor).to(dtype),
    with the divisor sqrt(mean(x^2) + eps) of the float32 input.
    """
    return rms_norm_scale(classes, "variance_epsilon", _rms_output)


def _block(block: nn.Module, model) -> dict:
    h, kv = model.n_heads, model.n_kv_heads
    att, mlp = block.self_attn, block.mlp
    rep = h // kv

    def kv_bias(m):
        b = bias(m)
        return None if b is None else repeat_kv(b.view(kv, -1), rep)

    ln1_w, _ = ln_params(block.input_layernorm)
    ln2_w, _ = ln_params(block.post_attention_layernorm)
    return {
        "W_Q": heads_in(linear_t(att.q_proj), h),
        "W_K": repeat_kv(heads_in(linear_t(att.k_proj), kv), rep),
        "W_V": repeat_kv(heads_in(linear_t(att.v_proj), kv), rep),
        "b_Q": None if bias(att.q_proj) is None else att.q_proj.bias.view(h, -1),
        "b_K": kv_bias(att.k_proj), "b_V": kv_bias(att.v_proj),
        "W_O": heads_out(linear_t(att.o_proj), h), "b_O": bias(att.o_proj),
        "W_in": linear_t(mlp.up_proj), "b_in": bias(mlp.up_proj), "W_gate": linear_t(mlp.gate_proj),
        "W_out": linear_t(mlp.down_proj), "b_out": bias(mlp.down_proj),
        "ln1_w": ln1_w, "ln1_b": None, "ln2_w": ln2_w, "ln2_b": None,
    }


def _root(module: nn.Module, model) -> dict:
    base = module.base_model
    head = module.get_output_embeddings()
    return {"W_E": base.embed_tokens.weight, "W_pos": None,
            "W_U": None if head is None else linear_t(head), "b_U": None if head is None else bias(head),
            "lnf_w": base.norm.weight, "lnf_b": None}


SPEC = Spec(
    model_types=("llama", "qwen2", "mistral"),  # Qwen3 adds per-head q/k norms: qwen3.py
    layers="layers",
    attention="self_attn",
    out_proj="self_attn.o_proj",
    root={Kind.EMBED: Out("embed_tokens"), Kind.LN_FINAL_SCALE: Norm("norm"), Kind.LN_FINAL: Out("norm"),
          Kind.LOGITS: Out("^lm_head")},
    block={Kind.RESID_PRE: In(""), Kind.LN1_SCALE: Norm("input_layernorm"), Kind.LN1: Out("input_layernorm"),
           Kind.ATTN_OUT: Out("self_attn", 0),
           Kind.RESID_MID: In("post_attention_layernorm", inplace=True), Kind.MLP_IN: In("post_attention_layernorm", branch=True),
           Kind.LN2_SCALE: Norm("post_attention_layernorm"), Kind.LN2: Out("post_attention_layernorm"),
           Kind.MLP_PRE: Out("mlp.gate_proj"), Kind.MLP_POST: In("mlp.down_proj"), Kind.MLP_OUT: Out("mlp"),
           Kind.RESID_POST: Out("")},
    head_in={Kind.Q_IN: HeadIn("self_attn.q_proj"), Kind.K_IN: HeadIn("self_attn.k_proj"),
             Kind.V_IN: HeadIn("self_attn.v_proj")},
    read_block=_block,
    read_root=_root,
    n_kv_heads=lambda cfg: cfg.num_key_value_heads or cfg.num_attention_heads,
    d_head=lambda cfg: getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
    norm=rms_norm("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm"),
)
