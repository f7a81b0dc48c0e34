"""Named components of a network's weights, for per-component LLC estimates.

`components(model)` maps a name to a `Component` (parameter name -> mask of its entries):

- the zoo's TinyTransformer: `embed` (token and position embeddings), per block `blocks.L.attn`
  (W_Q, W_K, W_V, W_O and their biases) and `blocks.L.mlp` (W_in, W_out), `blocks.L.norms` (its
  layer norms), `ln_final`, `unembed`; with `per_head=True` also `blocks.L.attn.H` for each head:
  its rows of W_Q, W_K, W_V (and their biases) and its columns of W_O (W_O's bias belongs to no head);
- a Hugging Face model with a mechscope Spec: the same block-level names, read from the Spec's
  paths (the attention module, the module whose output is mlp_out, the rest of the block as
  `norms`), `embed` (token and position embeddings), `unembed` (the output embedding; a tied one
  is the same parameter as the token embedding), `ln_final`;
- any other module: one component per top-level child that holds parameters.

Every parameter that requires grad belongs to some component except where noted (per-head
components overlap the block's `attn`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.site import Kind
from ..models.tiny import TinyTransformer
from .sgld import Component


def _params_of(sub: nn.Module | None, prefix_of: dict[int, str]) -> dict[str, None]:
    if sub is None:
        return {}
    return {prefix_of[id(p)]: None for p in sub.parameters() if id(p) in prefix_of}


def components(model: Any, per_head: bool = False) -> dict[str, Component]:
    """The named components of `model` (an adapter or an nn.Module), in forward order.

    Example::

        from mechscope.landscape import components
        comps = components(ms.load("zoo:induction-quick"), per_head=True)
        list(comps)                              # in forward order
    """
    module: nn.Module = getattr(model, "module", model)
    name_of = {id(p): n for n, p in module.named_parameters()}
    if isinstance(module, TinyTransformer):
        out = _tiny(module, name_of, per_head)
    elif getattr(model, "spec", None) is not None and hasattr(model, "blocks"):
        out = _spec(model, name_of)
    else:
        out = {}
        for child_name, child in module.named_children():
            ps = _params_of(child, name_of)
            if ps:
                out[child_name] = ps
        # parameters registered directly on the root module
        root_own = {name_of[id(p)]: None for p in module.parameters(recurse=False)}
        if root_own:
            out["root"] = root_own
    return {k: Component(k, v) for k, v in out.items() if v}


def _tiny(m: nn.Module, name_of: dict[int, str], per_head: bool) -> dict[str, dict]:
    out: dict[str, dict] = {}
    embed = _params_of(m.embed, name_of)
    if getattr(m, "pos_embed", None) is not None:
        embed.update(_params_of(m.pos_embed, name_of))
    out["embed"] = embed
    h, d = m.cfg.n_heads, m.cfg.d_head
    for i, block in enumerate(m.blocks):
        out[f"blocks.{i}.attn"] = _params_of(block.attn, name_of)
        if per_head:
            for head in range(h):
                rows = slice(head * d, (head + 1) * d)
                comp: dict[str, torch.Tensor] = {}
                for proj in (block.attn.W_Q, block.attn.W_K, block.attn.W_V):
                    mask = torch.zeros_like(proj.weight, dtype=torch.bool)
                    mask[rows] = True
                    comp[name_of[id(proj.weight)]] = mask
                    if proj.bias is not None:
                        bmask = torch.zeros_like(proj.bias, dtype=torch.bool)
                        bmask[rows] = True
                        comp[name_of[id(proj.bias)]] = bmask
                o = block.attn.W_O.weight  # (d_model, head*d_head): the head's columns
                omask = torch.zeros_like(o, dtype=torch.bool)
                omask[:, rows] = True
                comp[name_of[id(o)]] = omask
                out[f"blocks.{i}.attn.{head}"] = comp
        if getattr(block, "mlp", None) is not None:
            out[f"blocks.{i}.mlp"] = _params_of(block.mlp, name_of)
        norms = {}
        for ln in ("ln1", "ln2"):
            norms.update(_params_of(getattr(block, ln, None), name_of))
        out[f"blocks.{i}.norms"] = norms
    out["ln_final"] = _params_of(m.ln_final, name_of)
    out["unembed"] = _params_of(m.unembed, name_of)
    return out


def _spec(model: Any, name_of: dict[int, str]) -> dict[str, dict]:
    spec, module, base = model.spec, model.module, model.base

    def root_module(kind: Kind) -> nn.Module | None:
        where = spec.root.get(kind)
        if where is None:
            return None
        path = where.path
        try:
            return module.get_submodule(path[1:]) if path.startswith("^") else base.get_submodule(path)
        except AttributeError:
            return None

    out: dict[str, dict] = {}
    embed = _params_of(root_module(Kind.EMBED), name_of)
    embed.update(_params_of(root_module(Kind.POS_EMBED), name_of))
    out["embed"] = embed
    mlp_where = spec.block.get(Kind.MLP_OUT)
    for i, block in enumerate(model.blocks):
        attn = _params_of(block.get_submodule(spec.attention), name_of)
        mlp: dict[str, None] = {}
        if mlp_where is not None and type(mlp_where).__name__ == "Out" and mlp_where.path:
            mlp = _params_of(block.get_submodule(mlp_where.path), name_of)
        rest = {k: None for k in _params_of(block, name_of) if k not in attn and k not in mlp}
        out[f"blocks.{i}.attn"] = attn
        if mlp:
            out[f"blocks.{i}.mlp"] = mlp
        out[f"blocks.{i}.norms"] = rest
    out["ln_final"] = _params_of(root_module(Kind.LN_FINAL), name_of)
    get_out = getattr(module, "get_output_embeddings", None)
    out["unembed"] = _params_of(get_out() if callable(get_out) else None, name_of)
    return out


__all__ = ["components"]
