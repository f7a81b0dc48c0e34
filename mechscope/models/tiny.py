"""A small, readable transformer for the zoo, with an identity hook module at every site.

Each `hook_*` is an `nn.Identity`, so the core's `ModuleOutput` tap reaches every site and a
run with nothing to capture or change is the bare forward pass. Module layout (TransformerLens
names in brackets):

    embed, hook_embed [hook_embed]          pos_embed, hook_pos_embed [hook_pos_embed]
    blocks[L]: hook_resid_pre, ln1, attn (W_Q W_K W_V W_O, hook_q/k/v/scores/pattern/z),
               hook_attn_out, hook_resid_mid, ln2, mlp (W_in, hook_pre, hook_post, W_out),
               hook_mlp_out, hook_resid_post
    ln_final, unembed, hook_logits

An attention-only model (`d_mlp=None`) has no resid_mid, ln2 or MLP sites; a model without layer
norm has no ln1, ln2 or ln_final sites. With layer norm, each norm's divisor is a site too
(ln1.scale, ln2.scale, ln_final.scale), tapped on the norm module itself. The adapter, `TinyModel`,
is the declarative table at the end of the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks

from ..core.protocol import Prepared
from ..core.site import Kind, Site
from ..core.taps import HeadInput, HeadResult, ModuleInput, ModuleOutput, Tap, layer_norm_scale
from ..core.weights import Weights
from .base import ModelBase, without_first_blocks


@dataclass(frozen=True)
class TinyConfig:
    """Shape and options of a TinyTransformer (stored as JSON next to zoo checkpoints)."""

    n_layers: int  # transformer blocks
    d_model: int  # residual-stream width
    n_heads: int  # attention heads per block
    d_head: int  # width of one head's q, k, v and z
    d_mlp: int | None  # MLP hidden width; None for an attention-only model
    n_ctx: int  # longest sequence (rows of the learned position embedding)
    d_vocab: int  # input vocabulary
    d_vocab_out: int | None = None  # output vocabulary (defaults to d_vocab)
    act: Literal["relu", "gelu"] = "relu"  # MLP nonlinearity
    layer_norm: bool = False  # pre-LayerNorm before attention, MLP and unembedding
    pos_embed: bool = True  # learned absolute position embedding
    # biases on the attention, MLP and unembedding projections; "mlp": on the MLP alone (the grokking
    # model of Nanda et al. 2023)
    bias: bool | Literal["mlp"] = True
    causal: bool = True  # queries attend only to keys at or before their position
    init_std: float | None = None  # normal init std of every weight matrix (default 0.8/sqrt(d_model))
    unembed_std: float | None = None  # the unembedding's own init std (default init_std)

    def __post_init__(self) -> None:
        for f in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"TinyConfig.{f} must be positive, got {getattr(self, f)}")
        if self.d_mlp is not None and self.d_mlp < 1:
            raise ValueError(f"TinyConfig.d_mlp must be positive or None, got {self.d_mlp}")
        if self.bias not in (True, False, "mlp"):
            raise ValueError(f"TinyConfig.bias must be True, False or 'mlp', got {self.bias!r}")
        if self.act not in ("relu", "gelu"):
            raise ValueError(f"TinyConfig.act must be 'relu' or 'gelu', got {self.act!r}")

    @property
    def vocab_out(self) -> int:
        """The number of output classes: `d_vocab_out`, else `d_vocab`."""
        return self.d_vocab if self.d_vocab_out is None else self.d_vocab_out

    @property
    def mlp_bias(self) -> bool:
        """Whether the MLP has biases (`bias` True or "mlp")."""
        return bool(self.bias)

    @property
    def other_bias(self) -> bool:  # attention and unembedding
        """Whether attention and the unembedding have biases (`bias` True only)."""
        return self.bias is True

    @property
    def attn_only(self) -> bool:
        """Whether the blocks have no MLP (`d_mlp` None)."""
        return self.d_mlp is None

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (what a zoo run stores)."""
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TinyConfig":
        """A config from `to_dict`'s dict."""
        return TinyConfig(**d)


class Attention(nn.Module):
    """Multi-head attention with an identity hook module at every internal tensor (q, k, v, scores, pattern, z)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        inner = cfg.n_heads * cfg.d_head
        self.cfg = cfg
        self.W_Q = nn.Linear(cfg.d_model, inner, bias=cfg.other_bias)
        self.W_K = nn.Linear(cfg.d_model, inner, bias=cfg.other_bias)
        self.W_V = nn.Linear(cfg.d_model, inner, bias=cfg.other_bias)
        self.W_O = nn.Linear(inner, cfg.d_model, bias=cfg.other_bias)
        for name in ("q", "k", "v", "scores", "pattern", "z"):
            setattr(self, f"hook_{name}", nn.Identity())
        self.fused = False  # set by `fused_attention`: one fused kernel where nothing observes the pattern

    def forward(self, x: Tensor, n_queries: int | None = None) -> Tensor:
        """Attention of the last `n_queries` positions (default: all) over every position of x."""
        cfg = self.cfg
        n = x.shape[1]
        nq = n if n_queries is None else n_queries
        # (batch, pos, head*d_head) -> (batch, pos, head, d_head); queries only for the last nq
        q = self.hook_q(self.W_Q(x[:, n - nq:]).unflatten(-1, (cfg.n_heads, cfg.d_head)))
        k = self.hook_k(self.W_K(x).unflatten(-1, (cfg.n_heads, cfg.d_head)))
        v = self.hook_v(self.W_V(x).unflatten(-1, (cfg.n_heads, cfg.d_head)))
        if self.fused and nq == n and not (_observed(self.hook_scores) or _observed(self.hook_pattern)):
            # (batch, head, pos, d_head) each; the scale is 1/sqrt(d_head), the causal mask the one below
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=cfg.causal).transpose(1, 2)
            return self.W_O(self.hook_z(z).flatten(-2))  # (batch, pos, head, d_head) -> (batch, pos, d_model)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.d_head)  # (batch, head, pos, kpos)
        if cfg.causal:
            future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)[n - nq:]  # (pos, kpos)
            # the most negative finite value, not -inf: mean ablations of scores stay finite
            scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
        scores = self.hook_scores(scores)
        pattern = self.hook_pattern(scores.softmax(-1))  # (batch, head, pos, kpos)
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))  # (batch, pos, head, d_head)
        return self.W_O(z.flatten(-2))  # (batch, pos, head*d_head) -> (batch, pos, d_model)


def _observed(module: nn.Module) -> bool:
    """Whether a hook reads or changes `module`'s output: its own forward hooks, or global ones."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _module_hooks._global_forward_hooks
                or _module_hooks._global_forward_pre_hooks)


@contextmanager
def fused_attention(module: nn.Module) -> Iterator[None]:
    """A context in which every attention of `module` whose scores and pattern no hook observes runs
    as one fused kernel (`F.scaled_dot_product_attention`) instead of the explicit scores, mask,
    softmax and weighted sum. The result is the same function, equal to the explicit path up to float
    rounding (about 1e-7 relative), not bit for bit, so it is off unless asked for: runs that need
    bit-identical comparisons (an identity intervention against none) keep the explicit path. Work that
    never looks inside attention and runs the network many times (SGLD chains) asks for it.

    Example::

        from mechscope.models.tiny import fused_attention
        with fused_attention(net):               # net: a TinyTransformer
            logits = net(ids)                    # ids (batch, pos) -> (batch, pos, vocab)
    """
    attns = [m for m in module.modules() if isinstance(m, Attention)]
    before = [a.fused for a in attns]
    for a in attns:
        a.fused = True
    try:
        yield
    finally:
        for a, was in zip(attns, before):
            a.fused = was


class MLP(nn.Module):
    """W_out(act(W_in x)), with hook modules before and after the activation function."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        assert cfg.d_mlp is not None
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.mlp_bias)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.mlp_bias)
        self.act = nn.ReLU() if cfg.act == "relu" else nn.GELU()
        self.hook_pre = nn.Identity()
        self.hook_post = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(batch, pos, d_model) -> (batch, pos, d_model)."""
        return self.W_out(self.hook_post(self.act(self.hook_pre(self.W_in(x)))))


def _norm(cfg: TinyConfig) -> nn.Module | None:
    return nn.LayerNorm(cfg.d_model) if cfg.layer_norm else None


class Block(nn.Module):
    """One transformer block: attention and (unless attention-only) an MLP, each with an optional pre-norm, added to
    the residual stream."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.hook_resid_pre = nn.Identity()
        self.ln1 = _norm(cfg)
        self.attn = Attention(cfg)
        self.hook_attn_out = nn.Identity()
        if not cfg.attn_only:
            self.hook_resid_mid = nn.Identity()
            self.ln2 = _norm(cfg)
            self.mlp = MLP(cfg)
            self.hook_mlp_out = nn.Identity()
        self.hook_resid_post = nn.Identity()

    def forward(self, resid: Tensor, n_queries: int | None = None) -> Tensor:
        """The block's output at the last `n_queries` positions (default: all)."""
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(resid if self.ln1 is None else self.ln1(resid), n_queries))
        if n_queries is not None:
            resid = resid[:, resid.shape[1] - n_queries:]  # (batch, n_queries, d_model)
        if not hasattr(self, "mlp"):
            return self.hook_resid_post(resid + attn_out)
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(resid if self.ln2 is None else self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)


class TinyTransformer(nn.Module):
    """Token ids (batch, pos) -> logits (batch, pos, vocab_out)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = nn.Identity()
        if cfg.pos_embed:
            self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
            self.hook_pos_embed = nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = _norm(cfg)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_out, bias=cfg.other_bias)
        self.hook_logits = nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weight matrices ~ N(0, init_std²) (the unembedding's N(0, unembed_std²)), biases zero, norms
        the identity."""
        std = self.cfg.init_std or 0.8 / math.sqrt(self.cfg.d_model)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=(self.cfg.unembed_std or std) if mod is self.unembed else std)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, ids: Tensor, last_only: bool = False) -> Tensor:
        """Logits (batch, pos, vocab_out); with `last_only`, those of the last position only
        (batch, 1, vocab_out), computed without the work no other output needs (for training)."""
        if ids.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {ids.shape[-1]} tokens is longer than n_ctx={self.cfg.n_ctx}")
        resid = self.hook_embed(self.embed(ids))  # (batch, pos, d_model)
        if self.cfg.pos_embed:
            pos = torch.arange(ids.shape[-1], device=ids.device)
            resid = resid + self.hook_pos_embed(self.pos_embed(pos)).expand_as(resid)
        for i, block in enumerate(self.blocks):
            resid = block(resid, 1 if last_only and i == len(self.blocks) - 1 else None)
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        return self.hook_logits(self.unembed(resid))  # (batch, pos, vocab_out)

    def mechscope_adapter(self, name: str | None = None, tokenizer: Any = None) -> "TinyModel":
        """The adapter `mechscope.wrap` uses for this module."""
        return TinyModel(self, name=name, tokenizer=tokenizer)


# --- the adapter: which hook module is each site -------------------------------------------------

_ROOT: dict[Kind, str] = {Kind.EMBED: "hook_embed", Kind.POS_EMBED: "hook_pos_embed",
                          Kind.LN_FINAL: "ln_final", Kind.LOGITS: "hook_logits"}
_BLOCK: dict[Kind, str] = {
    Kind.RESID_PRE: "hook_resid_pre", Kind.LN1: "ln1", Kind.Q: "attn.hook_q", Kind.K: "attn.hook_k",
    Kind.V: "attn.hook_v", Kind.SCORES: "attn.hook_scores", Kind.PATTERN: "attn.hook_pattern",
    Kind.Z: "attn.hook_z", Kind.ATTN_OUT: "hook_attn_out", Kind.RESID_MID: "hook_resid_mid",
    Kind.LN2: "ln2", Kind.MLP_PRE: "mlp.hook_pre", Kind.MLP_POST: "mlp.hook_post",
    Kind.MLP_OUT: "hook_mlp_out", Kind.RESID_POST: "hook_resid_post",
}

# norm scale sites: the norm module each one is the divisor of
_NORM: dict[Kind, str] = {Kind.LN1_SCALE: "ln1", Kind.LN2_SCALE: "ln2", Kind.LN_FINAL_SCALE: "ln_final"}

# per-head input sites: the projection each one feeds
_HEAD_IN: dict[Kind, str] = {Kind.Q_IN: "W_Q", Kind.K_IN: "W_K", Kind.V_IN: "W_V"}


def _present(root: nn.Module, path: str) -> bool:
    try:
        return root.get_submodule(path) is not None
    except AttributeError:
        return False


class TinyModel(ModelBase):
    """The adapter of a TinyTransformer: canonical sites, taps on its hook modules, weight views."""

    def __init__(self, module: TinyTransformer, name: str | None = None, tokenizer: Any = None):
        self.module = module
        self.cfg = module.cfg
        self.name = name or "TinyTransformer"
        self.tokenizer = tokenizer
        self.n_layers, self.n_heads = self.cfg.n_layers, self.cfg.n_heads
        self._blocks = tuple(module.blocks)  # taps find block L even while start_at shortens the loop
        block0 = module.blocks[0]
        order = list(Kind)
        kinds = [k for k, p in _BLOCK.items() if _present(block0, p)] + [Kind.RESULT, *_HEAD_IN]
        kinds += [k for k, p in _NORM.items() if k is not Kind.LN_FINAL_SCALE and _present(block0, p)]
        kinds = sorted(kinds + ([Kind.MLP_IN] if hasattr(block0, "mlp") else []), key=order.index)
        sites = [Site(k) for k in (Kind.EMBED, Kind.POS_EMBED) if _present(module, _ROOT[k])]
        for layer in range(self.n_layers):
            sites += [Site(k, layer) for k in kinds]
        if _present(module, _NORM[Kind.LN_FINAL_SCALE]):
            sites.append(Site(Kind.LN_FINAL_SCALE))
        sites += [Site(k) for k in (Kind.LN_FINAL, Kind.LOGITS) if _present(module, _ROOT[k])]
        self._sites = sites

    def sites(self) -> list[Site]:
        """Every whole site of the network, in forward order (the adapter protocol)."""
        return list(self._sites)

    def n_heads_at(self, site: Site) -> int | None:
        """`n_heads` on a per-head site, else None."""
        return self.n_heads if site.per_head else None

    def tap(self, site: Site) -> Tap:
        """How `run` reaches `site`: a hook module's output, a head's slice of W_O, a norm's scale, ..."""
        site = self.check(site)
        if site.kind in _NORM:
            parent = self.module if site.layer is None else self._blocks[site.layer]
            return layer_norm_scale(parent.get_submodule(_NORM[site.kind]))
        if site.layer is None:
            return ModuleOutput(self.module.get_submodule(_ROOT[site.kind]))
        block = self._blocks[site.layer]
        if site.kind is Kind.RESULT:
            o = block.attn.W_O
            return HeadResult(o, self.n_heads, w_o=lambda: _heads_out(o.weight, self.n_heads),
                              bias=lambda: o.bias)
        if site.kind in _HEAD_IN:
            proj = getattr(block.attn, _HEAD_IN[site.kind])
            h, d = self.n_heads, self.cfg.d_head
            return HeadInput(reader=block.attn if block.ln1 is None else block.ln1,
                             norm=None if block.ln1 is None else block.ln1.forward, proj=proj, heads=h,
                             out_heads=h, d_head=d, column=lambda i: i * d,
                             weight=lambda: (_heads_in(proj.weight, h),
                                             None if proj.bias is None else proj.bias.view(h, -1)))
        if site.kind is Kind.MLP_IN:  # the input of the MLP's norm (or of the MLP), changed for it alone
            return ModuleInput(block.mlp if block.ln2 is None else block.ln2, branch=True)
        return ModuleOutput(block.get_submodule(_BLOCK[site.kind]))

    def prepare(self, inputs: Any) -> Prepared:
        """Token ids (batch, pos), a list of them or a dict with "input_ids", as the network's call."""
        if isinstance(inputs, Prepared):
            return inputs
        if isinstance(inputs, dict):
            inputs = inputs["input_ids"]
        if isinstance(inputs, (list, tuple)):
            inputs = torch.as_tensor(inputs)
        if not isinstance(inputs, Tensor) or inputs.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"cannot run {self.name} on {type(inputs).__name__}: give integer token ids "
                            "(batch, pos)")
        ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        return Prepared(args=(ids,), input_ids=ids)

    def forward(self, prepared: Prepared) -> Any:
        """Run the network; its output is the logits."""
        return self.module(*prepared.args)

    def logits(self, output: Any) -> Tensor | None:
        """The output itself: the network returns logits."""
        return output

    def session(self, sites: set[Site]):
        """Nothing to switch: every internal tensor already has a hook module."""
        return nullcontext()

    def start_at(self, layer: int):
        """A context in which the forward pass skips blocks 0..layer-1 (patching sweeps start at a layer)."""
        return without_first_blocks(self.module, "blocks", layer)

    def fused(self):
        """A context in which attention nothing observes runs as one fused kernel (`fused_attention`)."""
        return fused_attention(self.module)

    def grad_entry(self) -> Tap | None:
        """The token embedding's hook: gradients are switched on there for frozen weights."""
        return ModuleOutput(self.module.hook_embed)

    @torch.no_grad()
    def weights(self, fold_ln: bool = False) -> Weights:
        """Weight views in mechscope's convention (see `mechscope.core.weights`)."""
        m, h = self.module, self.n_heads
        blocks = list(m.blocks)
        stack = lambda f: torch.stack([f(b) for b in blocks])  # noqa: E731
        opt = lambda f: None if f(blocks[0]) is None else stack(f)  # noqa: E731
        mlp = not self.cfg.attn_only
        w = Weights(
            n_heads=h, n_kv_heads=h,
            W_E=m.embed.weight, W_pos=m.pos_embed.weight if self.cfg.pos_embed else None,
            W_Q=stack(lambda b: _heads_in(b.attn.W_Q.weight, h)),
            W_K=stack(lambda b: _heads_in(b.attn.W_K.weight, h)),
            W_V=stack(lambda b: _heads_in(b.attn.W_V.weight, h)),
            W_O=stack(lambda b: _heads_out(b.attn.W_O.weight, h)),
            b_Q=opt(lambda b: None if b.attn.W_Q.bias is None else b.attn.W_Q.bias.view(h, -1)),
            b_K=opt(lambda b: None if b.attn.W_K.bias is None else b.attn.W_K.bias.view(h, -1)),
            b_V=opt(lambda b: None if b.attn.W_V.bias is None else b.attn.W_V.bias.view(h, -1)),
            b_O=opt(lambda b: b.attn.W_O.bias),
            W_in=stack(lambda b: b.mlp.W_in.weight.T) if mlp else None,
            b_in=opt(lambda b: b.mlp.W_in.bias) if mlp else None,
            W_gate=None,
            W_out=stack(lambda b: b.mlp.W_out.weight.T) if mlp else None,
            b_out=opt(lambda b: b.mlp.W_out.bias) if mlp else None,
            W_U=m.unembed.weight.T, b_U=m.unembed.bias,
            ln1_w=opt(lambda b: b.ln1.weight if b.ln1 is not None else None),
            ln1_b=opt(lambda b: b.ln1.bias if b.ln1 is not None else None),
            ln2_w=opt(lambda b: b.ln2.weight if mlp and b.ln2 is not None else None),
            ln2_b=opt(lambda b: b.ln2.bias if mlp and b.ln2 is not None else None),
            lnf_w=None if m.ln_final is None else m.ln_final.weight,
            lnf_b=None if m.ln_final is None else m.ln_final.bias)
        return w.fold_layer_norm() if fold_ln else w


def _heads_in(weight: Tensor, n: int) -> Tensor:
    # nn.Linear weight (head*d_head, d_model) -> (head, d_model, d_head)
    return weight.T.unflatten(-1, (n, -1)).permute(1, 0, 2)


def _heads_out(weight: Tensor, n: int) -> Tensor:
    # nn.Linear weight (d_model, head*d_head) -> (head, d_head, d_model)
    return weight.T.unflatten(0, (n, -1))

