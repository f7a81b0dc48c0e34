"""Attention internals of Hugging Face models: q, k, v, scores, pattern and z as tappable sites.

Transformers looks its attention function up by name (`config._attn_implementation`) at every
forward. mechscope registers one more, "mechscope": the eager computation written out step by
step, with a tap between the steps. A run that touches an attention-internal site switches the
model to it for the duration of the call; every other run leaves the model alone.

In float32 the function performs the same operations in the same order as the eager
implementations of GPT-2, GPT-NeoX, Llama, Qwen3, Gemma 2 and 3 and BERT, so capturing changes no
output bit (tests check it). Models loaded with another implementation (sdpa) get eager numerics
during such runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from ..core.site import Kind
from ..core.taps import Handler, Tap, value_of

NAME = "mechscope"
INTERNAL = {Kind.Q, Kind.K, Kind.V, Kind.SCORES, Kind.PATTERN, Kind.Z}

# module -> kind -> handlers, filled only while a run is in progress
_ACTIVE: dict[nn.Module, dict[Kind, list[Handler]]] = {}


def _apply(module: nn.Module, kind: Kind, x: Tensor) -> Tensor:
    for h in _ACTIVE.get(module, {}).get(kind, ()):
        if h.live:  # a run nested in another sees only its own handlers
            x = h(x)
    return x


def _repeat_heads(x: Tensor, n_rep: int) -> Tensor:
    # (batch, kv_head, pos, d_head) -> (batch, kv_head * n_rep, pos, d_head), each kv head repeated
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _per_query_head(x: Tensor, heads: int, groups: int) -> Tensor:
    """Keys or values (batch, kv_head or head, pos, d_head) with one head per query head.

    Keys widened by per-head inputs whose heads are still equal within each group (a capture with
    gradients, no head changed) take the repeated layout the unwidened keys would: a matrix product
    can round differently in another memory layout. Gradients still reach every widened head."""
    if x.shape[1] != heads:
        return _repeat_heads(x, heads // x.shape[1])
    if groups > 1:
        g = x.unflatten(1, (heads // groups, groups))
        if torch.equal(g, g[:, :, :1].expand_as(g)):
            return value_of(_repeat_heads(x[:, ::groups], groups), x, copy=False)  # only read below
    return x


def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
              attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
              softcap: float | None = None, **_: object) -> tuple[Tensor, Tensor]:
    """Eager attention with taps. query (batch, head, pos, d_head); key/value (batch, kv_head, kpos, d_head).

    `softcap` (Gemma 2) caps the scaled scores at +-softcap with softcap * tanh(scores / softcap),
    before the mask: `attn.scores` is after the cap."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if module in _ACTIVE:
        # site layout is (batch, pos, head, d_head)
        query = _apply(module, Kind.Q, query.transpose(1, 2)).transpose(1, 2)
        key = _apply(module, Kind.K, key.transpose(1, 2)).transpose(1, 2)
        value = _apply(module, Kind.V, value.transpose(1, 2)).transpose(1, 2)
    # grouping from shapes, separately: per-head inputs (attn.k_in, attn.v_in) may widen keys or
    # values alone to one head per query head
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _per_query_head(key, query.shape[1], groups), _per_query_head(value, query.shape[1], groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, head, pos, kpos)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask
    if module in _ACTIVE:
        scores = _apply(module, Kind.SCORES, scores)
    pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if module in _ACTIVE:
        pattern = _apply(module, Kind.PATTERN, pattern)
    pattern_d = nn.functional.dropout(pattern, p=dropout, training=module.training)
    z = torch.matmul(pattern_d, value).transpose(1, 2).contiguous()  # (batch, pos, head, d_head)
    if module in _ACTIVE:
        z = _apply(module, Kind.Z, z)
    return z, pattern


AttentionInterface.register(NAME, attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)


class _Handle:
    def __init__(self, module: nn.Module, kind: Kind, handler: Handler):
        self.module, self.kind, self.handler = module, kind, handler

    def remove(self) -> None:
        kinds = _ACTIVE.get(self.module)
        if kinds is None:
            return
        lst = kinds.get(self.kind, [])
        if self.handler in lst:
            lst.remove(self.handler)
        if not lst:
            kinds.pop(self.kind, None)
        if not kinds:
            _ACTIVE.pop(self.module, None)


@dataclass(frozen=True, eq=False)
class AttentionTap(Tap):
    """q, k, v, scores, pattern or z inside the attention function called by `module`."""

    module: nn.Module
    kind: Kind

    def install(self, handler: Handler) -> list:
        """Register `handler` with the tapped attention function for this module and kind; returns its handle."""
        _ACTIVE.setdefault(self.module, {}).setdefault(self.kind, []).append(handler)
        return [_Handle(self.module, self.kind, handler)]


@contextmanager
def exposed(configs: list) -> Iterator[None]:
    """Switch the given configs to the tapped attention function for the duration of a run."""
    saved = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = NAME
        yield
    finally:
        for c, s in zip(configs, saved):
            c._attn_implementation = s
