"""Qwen3: the Llama block plus a per-head RMSNorm on queries and keys (`q_norm`, `k_norm`), applied
to each head's d_head vector after the projection and before rotary.

Sites are the Llama family's. `attn.q` and `attn.k` are taken as they enter the score: after the
per-head norm and rotary. `W_Q` and `W_K` are the raw projections (they give the queries and keys
before the norm exactly); the norms' gains are `q_norm_w` and `k_norm_w` (one d_head vector shared
by every head, repeated per head). Folding layer norms folds `input_layernorm` into W_Q and W_K as
for Llama and leaves the q/k norm gains where they are (the RMS is taken before the gain, so no
weight can absorb it); `QK` includes the gains (see `mechscope.core.weights`).
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from . import llama
from .hf import per_head, repeat_kv


def _block(block: nn.Module, model) -> dict:
    att = block.self_attn
    rep = model.n_heads // model.n_kv_heads
    return {**llama.SPEC.read_block(block, model),
            "q_norm_w": per_head(att.q_norm.weight, model.n_heads),
            "k_norm_w": repeat_kv(per_head(att.k_norm.weight, model.n_kv_heads), rep)}


SPEC = replace(llama.SPEC, model_types=("qwen3",), read_block=_block, norm=llama.rms_norm("Qwen3RMSNorm"))
