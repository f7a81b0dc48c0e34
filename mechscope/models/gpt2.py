"""GPT-2: fused qkv Conv1D projections ((in, out) weights), learned positions, pre-LayerNorm."""

from __future__ import annotations

from torch import nn

from ..core.site import Kind
from ..core.taps import layer_norm_scale
from .hf import HeadIn, In, Norm, Out, Spec, heads_in, heads_out, ln_params


def _block(block: nn.Module, model) -> dict:
    h, d = model.n_heads, model.d_model
    w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # (d_model, 3*d_model): q | k | v
    ln1_w, ln1_b = ln_params(block.ln_1)
    ln2_w, ln2_b = ln_params(block.ln_2)
    return {
        "W_Q": heads_in(w[:, :d], h), "W_K": heads_in(w[:, d:2 * d], h), "W_V": heads_in(w[:, 2 * d:], h),
        "b_Q": b[:d].view(h, -1), "b_K": b[d:2 * d].view(h, -1), "b_V": b[2 * d:].view(h, -1),
        "W_O": heads_out(block.attn.c_proj.weight, h), "b_O": block.attn.c_proj.bias,
        "W_in": block.mlp.c_fc.weight, "b_in": block.mlp.c_fc.bias,
        "W_out": block.mlp.c_proj.weight, "b_out": block.mlp.c_proj.bias,
        "ln1_w": ln1_w, "ln1_b": ln1_b, "ln2_w": ln2_w, "ln2_b": ln2_b,
    }


def _root(module: nn.Module, model) -> dict:
    base = module.base_model
    head = module.get_output_embeddings()
    lnf_w, lnf_b = ln_params(base.ln_f)
    return {"W_E": base.wte.weight, "W_pos": base.wpe.weight,
            "W_U": None if head is None else head.weight.T,
            "b_U": None if head is None else head.bias, "lnf_w": lnf_w, "lnf_b": lnf_b}


SPEC = Spec(
    model_types=("gpt2",),
    layers="h",
    attention="attn",
    out_proj="attn.c_proj",
    root={Kind.EMBED: Out("wte"), Kind.POS_EMBED: Out("wpe"), Kind.LN_FINAL_SCALE: Norm("ln_f"),
          Kind.LN_FINAL: Out("ln_f"), Kind.LOGITS: Out("^lm_head")},
    block={Kind.RESID_PRE: In(""), Kind.LN1_SCALE: Norm("ln_1"), Kind.LN1: Out("ln_1"), Kind.ATTN_OUT: Out("attn", 0),
           Kind.RESID_MID: In("ln_2", inplace=True), Kind.MLP_IN: In("ln_2", branch=True),
           Kind.LN2_SCALE: Norm("ln_2"), Kind.LN2: Out("ln_2"),
           Kind.MLP_PRE: Out("mlp.c_fc"), Kind.MLP_POST: In("mlp.c_proj"), Kind.MLP_OUT: Out("mlp"),
           Kind.RESID_POST: Out("")},
    head_in={Kind.Q_IN: HeadIn("attn.c_attn", 0, 3), Kind.K_IN: HeadIn("attn.c_attn", 1, 3),
             Kind.V_IN: HeadIn("attn.c_attn", 2, 3)},
    read_block=_block,
    read_root=_root,
    d_head=lambda cfg: cfg.n_embd // cfg.n_head,
    norm=layer_norm_scale,
)
