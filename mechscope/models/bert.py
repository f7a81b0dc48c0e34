"""BERT encoders (BERT, MiniLM): post-LayerNorm blocks, bidirectional attention, no unembedding."""

from __future__ import annotations

from torch import nn

from ..core.site import Kind
from ..core.taps import layer_norm_scale
from .hf import In, Norm, Out, Spec, bias, heads_in, heads_out, linear_t, ln_params


def _block(block: nn.Module, model) -> dict:
    h = model.n_heads
    sa, so = block.attention.self, block.attention.output
    return {
        "W_Q": heads_in(linear_t(sa.query), h), "W_K": heads_in(linear_t(sa.key), h),
        "W_V": heads_in(linear_t(sa.value), h),
        "b_Q": sa.query.bias.view(h, -1), "b_K": sa.key.bias.view(h, -1), "b_V": sa.value.bias.view(h, -1),
        "W_O": heads_out(linear_t(so.dense), h), "b_O": bias(so.dense),
        "W_in": linear_t(block.intermediate.dense), "b_in": bias(block.intermediate.dense),
        "W_out": linear_t(block.output.dense), "b_out": bias(block.output.dense),
        # post-LN: ln1 normalises after attention's residual add, ln2 after the MLP's
        "ln1_w": ln_params(so.LayerNorm)[0], "ln1_b": ln_params(so.LayerNorm)[1],
        "ln2_w": ln_params(block.output.LayerNorm)[0], "ln2_b": ln_params(block.output.LayerNorm)[1],
    }


def _root(module: nn.Module, model) -> dict:
    emb = module.base_model.embeddings
    return {"W_E": emb.word_embeddings.weight, "W_pos": emb.position_embeddings.weight,
            "W_U": None, "b_U": None, "lnf_w": None, "lnf_b": None}


SPEC = Spec(
    model_types=("bert",),
    layers="encoder.layer",
    attention="attention.self",
    out_proj="attention.output.dense",
    root={Kind.EMBED: Out("embeddings.word_embeddings"), Kind.POS_EMBED: Out("embeddings.position_embeddings")},
    # post-LN: ln1 normalises resid_pre + attn_out, ln2 the MLP's output plus its input (TransformerLens's
    # names); only their scales are sites, their outputs are resid_mid and resid_post
    block={Kind.RESID_PRE: In(""), Kind.LN1_SCALE: Norm("attention.output.LayerNorm"),
           Kind.LN2_SCALE: Norm("output.LayerNorm"), Kind.ATTN_OUT: Out("attention.output.dense"),
           Kind.RESID_MID: Out("attention.output"), Kind.MLP_PRE: Out("intermediate.dense"),
           Kind.MLP_POST: In("output.dense"), Kind.MLP_OUT: Out("output.dense"), Kind.RESID_POST: Out("")},
    read_block=_block,
    read_root=_root,
    causal=False,
    post_ln=True,
    norm=layer_norm_scale,
)
