"""GPT-NeoX (Pythia): fused qkv interleaved per head, partial rotary, optional parallel residual."""

from __future__ import annotations

from torch import nn

from ..core.site import Kind
from ..core.taps import layer_norm_scale
from .hf import HeadIn, In, Norm, Out, Spec, bias, heads_out, linear_t, ln_params


def _block(block: nn.Module, model) -> dict:
    h = model.n_heads
    att = block.attention
    w = linear_t(att.query_key_value)  # (d_model, head*3*d_head): per head [q | k | v]
    w = w.unflatten(-1, (h, 3, -1)).permute(2, 1, 0, 3)  # (3, head, d_model, d_head)
    qkv_b = att.query_key_value.bias  # None with attention_bias=False
    b = (None,) * 3 if qkv_b is None else qkv_b.view(h, 3, -1).transpose(0, 1)  # (3, head, d_head)
    ln1_w, ln1_b = ln_params(block.input_layernorm)
    ln2_w, ln2_b = ln_params(block.post_attention_layernorm)
    return {
        "W_Q": w[0], "W_K": w[1], "W_V": w[2], "b_Q": b[0], "b_K": b[1], "b_V": b[2],
        "W_O": heads_out(linear_t(att.dense), h), "b_O": bias(att.dense),
        "W_in": linear_t(block.mlp.dense_h_to_4h), "b_in": bias(block.mlp.dense_h_to_4h),
        "W_out": linear_t(block.mlp.dense_4h_to_h), "b_out": bias(block.mlp.dense_4h_to_h),
        "ln1_w": ln1_w, "ln1_b": ln1_b, "ln2_w": ln2_w, "ln2_b": ln2_b,
    }


def _root(module: nn.Module, model) -> dict:
    base = module.base_model
    head = module.get_output_embeddings()
    lnf_w, lnf_b = ln_params(base.final_layer_norm)
    return {"W_E": base.embed_in.weight, "W_pos": None,
            "W_U": None if head is None else linear_t(head), "b_U": None if head is None else bias(head),
            "lnf_w": lnf_w, "lnf_b": lnf_b}


SPEC = Spec(
    model_types=("gpt_neox",),
    layers="layers",
    attention="attention",
    out_proj="attention.dense",
    # the unembedding is `lm_head` in transformers 5 (it was `embed_out` before)
    root={Kind.EMBED: Out("embed_in"), Kind.LN_FINAL_SCALE: Norm("final_layer_norm"),
          Kind.LN_FINAL: Out("final_layer_norm"), Kind.LOGITS: Out("^lm_head")},
    block={Kind.RESID_PRE: In(""), Kind.LN1_SCALE: Norm("input_layernorm"), Kind.LN1: Out("input_layernorm"),
           Kind.ATTN_OUT: Out("attention", 0),
           Kind.RESID_MID: In("post_attention_layernorm", inplace=True), Kind.MLP_IN: In("post_attention_layernorm", branch=True),
           Kind.LN2_SCALE: Norm("post_attention_layernorm"), Kind.LN2: Out("post_attention_layernorm"),
           Kind.MLP_PRE: Out("mlp.dense_h_to_4h"), Kind.MLP_POST: In("mlp.dense_4h_to_h"),
           Kind.MLP_OUT: Out("mlp"), Kind.RESID_POST: Out("")},
    head_in={Kind.Q_IN: HeadIn("attention.query_key_value", 0, 3, interleaved=True),
             Kind.K_IN: HeadIn("attention.query_key_value", 1, 3, interleaved=True),
             Kind.V_IN: HeadIn("attention.query_key_value", 2, 3, interleaved=True)},
    read_block=_block,
    read_root=_root,
    norm=layer_norm_scale,
    # with a parallel residual, attention and MLP both read resid_pre: there is no resid_mid
    unsupported=lambda cfg: {Kind.RESID_MID} if cfg.use_parallel_residual else set(),
)
