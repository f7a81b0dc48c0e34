"""Gemma 3 (text): the Gemma 2 block (`gemma2.py`: sandwich norms, 1 + weight gains, scaled
embedding, GeGLU, sliding-window layers) plus a per-head RMSNorm on queries and keys, as Qwen3.

- `attn.q`/`attn.k` are after the query/key norm and rotary; `q_norm_w`, `k_norm_w` hold the
  gains (1 + weight, one d_head vector shared by every head, repeated per head) and `QK` includes
  them. Scores are scaled by query_pre_attn_scalar^-0.5 and not soft-capped (the model does not
  pass `attn_logit_softcapping` to its attention function).
- Sliding-window and global layers have their own rotary bases.
- `final_logit_softcapping` is off in released Gemma 3 configs; when set, the `logits` site is
  before the cap, as for Gemma 2.
- `use_bidirectional_attention` (embedding variants) makes the model non-causal.
- Only the text model (`gemma3_text`); the multimodal `gemma3` checkpoints are not wrapped as Gemma.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from . import gemma2
from .gemma2 import gain
from .hf import per_head, repeat_kv


def _block(block: nn.Module, model) -> dict:
    att = block.self_attn
    rep = model.n_heads // model.n_kv_heads
    return {**gemma2.SPEC.read_block(block, model),
            "q_norm_w": per_head(gain(att.q_norm), model.n_heads),
            "k_norm_w": repeat_kv(per_head(gain(att.k_norm), model.n_kv_heads), rep)}


SPEC = replace(gemma2.SPEC, model_types=("gemma3_text",), read_block=_block,
               causal=lambda cfg: not getattr(cfg, "use_bidirectional_attention", False),
               norm=gemma2.rms_norm("Gemma3RMSNorm"))
