"""The Hugging Face adapter: a declarative `Spec` per family turned into sites, taps and weights.

A family file (gpt2.py, gpt_neox.py, llama.py, qwen3.py, gemma2.py, gemma3.py, bert.py) fills in
one `Spec`: module paths of each site relative to the model root or to one block, and a function
that reads one block's weights into mechscope's convention. Nothing here tests which architecture
it is looking at.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..core.protocol import Prepared, Window
from ..core.site import Kind, Site
from ..core.taps import HeadInput, HeadResult, ModuleInput, ModuleOutput, NormScale, Tap, rms_divisor
from ..core.weights import Weights
from . import hf_attention
from .base import ModelBase, without_first_blocks


@dataclass(frozen=True)
class Out:
    """Site = output of the module at `path` (element `index` of a tuple output)."""

    path: str
    index: int | None = None


@dataclass(frozen=True)
class In:
    """Site = first input of the module at `path`; `inplace` for a residual read by a norm,
    `branch` for the module's own read of it (see `ModuleInput`)."""

    path: str
    inplace: bool = False
    branch: bool = False


@dataclass(frozen=True)
class Norm:
    """Site = the divisor of the norm module at `path` (a scale site: ln1.scale, ln2.scale,
    ln_final.scale); offered only where the family's `Spec.norm` recognises the module."""

    path: str


@dataclass(frozen=True)
class HeadIn:
    """Where one of q, k, v leaves its projection: the module at block path `path`, whose output
    holds `parts` projections side by side, this one being `part`; `interleaved` if the output is
    per head [part 0 | part 1 | ...] (GPT-NeoX) rather than part by part (GPT-2)."""

    path: str
    part: int = 0
    parts: int = 1
    interleaved: bool = False


@dataclass(frozen=True)
class Spec:
    """How one Hugging Face family exposes its sites and weights.

    Root paths are relative to the loaded model; block paths are relative to one block
    (`layers[i]`). `""` is the block itself. A missing entry means the family has no such site.

    Example::

        from mechscope.models import spec_for
        spec = spec_for("qwen2")                 # the Llama family's Spec
        spec.layers, spec.attention              # where the blocks and their attention live
        spec.read_block(block, model)["W_Q"]     # one block's weights: W_Q (head, d_model, d_head)
    """

    model_types: tuple[str, ...]
    layers: str  # root path of the ModuleList of blocks
    attention: str  # block path of the module that calls the attention function
    out_proj: str  # block path of the attention output projection (its input is z)
    root: dict[Kind, Out | Norm] = field(default_factory=dict)  # embed, pos_embed, ln_final(.scale), logits
    block: dict[Kind, Out | In | Norm] = field(default_factory=dict)
    head_in: dict[Kind, HeadIn] = field(default_factory=dict)  # per-head inputs: q_in, k_in, v_in
    read_block: Callable[[nn.Module, Any], dict[str, Tensor | None]] | None = None
    read_root: Callable[[nn.Module, Any], dict[str, Tensor | None]] | None = None
    n_kv_heads: Callable[[Any], int] = lambda cfg: cfg.num_attention_heads
    d_head: Callable[[Any], int] = lambda cfg: cfg.hidden_size // cfg.num_attention_heads
    causal: bool | Callable[[Any], bool] = True  # or a function of the config (bidirectional variants)
    post_ln: bool = False
    # the attention and MLP outputs are normalised before the residual add (Gemma's sandwich norms):
    # the heads' results add up to the norm's input, not to what the block writes
    post_norms: bool = False
    unsupported: Callable[[Any], set[Kind]] = lambda cfg: set()  # kinds a config variant lacks
    # the scale tap of one of the family's norm modules (see `NormScale`), None for a module the
    # family file does not know: the `Norm` sites of such a model are not offered
    norm: Callable[[nn.Module], NormScale | None] = lambda module: None


class HFModel(ModelBase):
    """A Hugging Face model seen through one family Spec.

    `tokenizer` is optional (tests use token ids); BOS and padding are explicit, see `to_tokens`.

    Example::

        model = ms.load("smollm2-135m")          # an HFModel with the Llama family's Spec
        model.spec.model_types
        ms.run(model, model.to_tokens(["Hello"]), capture=["attn.q.0"]).cache["attn.q.0"]  # (batch, pos, head, d_head)
    """

    def __init__(self, module: nn.Module, spec: Spec, tokenizer: Any = None, name: str | None = None):
        self.module = module
        self.spec = spec
        self.tokenizer = tokenizer
        self.name = name or type(module).__name__
        self.config = module.config
        self.base: nn.Module = module.base_model
        self.blocks: nn.ModuleList = self.base.get_submodule(spec.layers)
        self.n_layers = len(self.blocks)
        self.n_heads = int(self.config.num_attention_heads)
        self.n_kv_heads = int(spec.n_kv_heads(self.config))
        self.d_head = int(spec.d_head(self.config))
        self.d_model = int(self.config.hidden_size)
        self.causal = bool(spec.causal(self.config) if callable(spec.causal) else spec.causal)
        self.post_norms = spec.post_norms
        lacking = spec.unsupported(self.config)
        sites: list[Site] = []
        root = {k: w for k, w in spec.root.items() if self._has(w.path)
                and (not isinstance(w, Norm) or spec.norm(self._resolve(w.path)) is not None)}
        self._root = root
        for kind in (Kind.EMBED, Kind.POS_EMBED):
            if kind in root:
                sites.append(Site(kind))
        block_kinds = [k for k in Kind if k in spec.block or k in spec.head_in or k in hf_attention.INTERNAL
                       or k is Kind.RESULT]
        order = list(Kind)
        block_kinds.sort(key=order.index)
        block_kinds = [k for k in block_kinds if k not in lacking and self._norms_known(spec.block.get(k))]
        for layer in range(self.n_layers):
            sites += [Site(k, layer) for k in block_kinds]
        for kind in (Kind.LN_FINAL_SCALE, Kind.LN_FINAL, Kind.LOGITS):
            if kind in root:
                sites.append(Site(kind))
        self._sites = sites
        self._site_set = frozenset(sites)
        params = inspect.signature(module.forward).parameters
        self._takes_logits_to_keep = "logits_to_keep" in params
        # the key/value cache argument: `cache` in newer transformers, `past_key_values` before
        self._cache_arg = next((a for a in ("cache", "past_key_values") if a in params), None)
        self._exact_windows: bool | None = None

    def _norms_known(self, where: Out | In | Norm | None) -> bool:
        """Whether a block site's module, when it is a norm's scale, is a norm the family knows in every block."""
        if not isinstance(where, Norm):
            return True
        try:
            return all(self.spec.norm(b.get_submodule(where.path)) is not None for b in self.blocks)
        except AttributeError:
            return False

    def _has(self, path: str) -> bool:
        try:
            self._resolve(path)
            return True
        except AttributeError:
            return False

    def _resolve(self, path: str) -> nn.Module:
        # "^name" is relative to the loaded model (heads); other root paths to its base model
        if path.startswith("^"):
            return self.module.get_submodule(path[1:])
        return self.base.get_submodule(path) if path else self.base

    # --- the adapter protocol ---------------------------------------------------------------
    def sites(self) -> list[Site]:
        """Every whole site the family's Spec offers for this model, in forward order."""
        return list(self._sites)

    def n_heads_at(self, site: Site) -> int | None:
        """Query heads on a per-head site, key/value heads on `attn.k` and `attn.v` (grouped-query attention), else
        None."""
        if not site.per_head:
            return None
        return self.n_kv_heads if site.kind in (Kind.K, Kind.V) else self.n_heads

    def tap(self, site: Site) -> Tap:
        """How `run` reaches `site` in the Hugging Face module, from the family's Spec."""
        site = self.check(site)
        spec = self.spec
        if site.layer is None:
            where = self._root[site.kind]
            if isinstance(where, Norm):
                return spec.norm(self._resolve(where.path))
            return _tap(self._resolve(where.path), where, "")
        block = self.blocks[site.layer]
        if site.kind in hf_attention.INTERNAL:
            return hf_attention.AttentionTap(block.get_submodule(spec.attention), site.kind)
        if site.kind is Kind.RESULT:
            layer = site.layer
            return HeadResult(block.get_submodule(spec.out_proj), self.n_heads,
                              w_o=lambda: self._block_weights(layer)["W_O"],
                              bias=lambda: self._block_weights(layer)["b_O"])
        if site.kind in spec.head_in:
            return self._head_input(site)
        where = spec.block[site.kind]
        if isinstance(where, Norm):
            return spec.norm(block.get_submodule(where.path))
        return _tap(block, where, where.path)

    def _head_input(self, site: Site) -> HeadInput:
        block, where, layer = self.blocks[site.layer], self.spec.head_in[site.kind], site.layer
        ln = self.spec.block.get(Kind.LN1)
        reader = block.get_submodule(ln.path) if ln is not None else block.get_submodule(self.spec.attention)
        n = self.n_kv_heads if site.kind in (Kind.K_IN, Kind.V_IN) else self.n_heads
        d = self.d_head
        if where.interleaved:  # per head [part 0 | part 1 | ...]
            column = lambda h: (h * where.parts + where.part) * d  # noqa: E731
        else:  # part by part, each holding its heads in order
            column = lambda h: (where.part * n + h) * d  # noqa: E731
        key = {Kind.Q_IN: "Q", Kind.K_IN: "K", Kind.V_IN: "V"}[site.kind]

        def weight() -> tuple[Tensor, Tensor | None]:
            w = self._block_weights(layer)
            return w[f"W_{key}"], w[f"b_{key}"]

        return HeadInput(reader=reader, norm=reader.forward if ln is not None else None,
                         proj=block.get_submodule(where.path), heads=self.n_heads, out_heads=n, d_head=d,
                         column=column, weight=weight)

    def session(self, sites: set[Site]):
        # per-head key/value inputs may widen grouped keys to one per query head: the tapped
        # attention function infers the grouping from shapes
        """For attention-internal sites, the step-by-step eager attention for the call; else nothing."""
        if any(s.kind in hf_attention.INTERNAL or s.kind in self.spec.head_in for s in sites):
            return hf_attention.exposed([self.config])
        return nullcontext()

    def grad_entry(self) -> Tap | None:
        """The token embedding's output: gradients are switched on there for frozen weights."""
        if Kind.EMBED not in self._root:
            return None
        return _tap(self._resolve(self._root[Kind.EMBED].path), self._root[Kind.EMBED], "")

    def prepare(self, inputs: Any) -> Prepared:
        """Token ids (batch, pos), a dict of model inputs, or text (tokenized without special tokens), as the model's
        call."""
        if isinstance(inputs, Prepared):
            return inputs
        if isinstance(inputs, (str, list)) and (isinstance(inputs, str) or isinstance(inputs[0], str)):
            inputs = self.to_tokens(inputs)
        if isinstance(inputs, Tensor):
            if inputs.dtype not in (torch.long, torch.int32, torch.int64):
                raise TypeError(f"token ids must be integers, got {inputs.dtype}")
            ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
            return Prepared(args=(ids,), input_ids=ids)
        if isinstance(inputs, dict) or hasattr(inputs, "keys"):
            kw = dict(inputs)
            ids = kw.get("input_ids")
            return Prepared(kwargs=kw, input_ids=ids, attention_mask=kw.get("attention_mask"))
        raise TypeError(f"cannot run {self.name} on {type(inputs).__name__}: give token ids (batch, pos), "
                        "a dict of model inputs, or text")

    def forward(self, prepared: Prepared) -> Any:
        """Call the model (a window that ends at the final block's keys stops there and returns None)."""
        cache = prepared.past
        if isinstance(cache, _KeyCache) and cache.stop_at is not None:  # a window that ends at the final keys
            try:
                self.module(*prepared.args, **prepared.kwargs)
            except _KeysStored:
                return None
            raise RuntimeError(f"{self.name}: the forward pass ended without storing block {cache.stop_at}'s "
                               "keys and values in the cache it was given")
        if prepared.last_logits_only and self._takes_logits_to_keep:
            with self._only_columns(prepared.logit_columns):
                return self.module(*prepared.args, **{"use_cache": False, "logits_to_keep": 1, **prepared.kwargs})
        return self.module(*prepared.args, **prepared.kwargs)

    @contextmanager
    def _only_columns(self, columns: Tensor | None):
        """While active, a linear unembedding computes only `columns` of the logits; the rest are NaN."""
        head = self.unembed() if columns is not None else None
        if not isinstance(head, nn.Linear):
            yield
            return
        cols = columns.to(head.weight.device)
        w, b = head.weight[cols], None if head.bias is None else head.bias[cols]

        def few(x: Tensor) -> Tensor:
            out = x.new_full((*x.shape[:-1], head.out_features), float("nan"))
            out[..., cols] = F.linear(x, w, b)
            return out

        head.forward = few  # an instance attribute: hooks on the module still run around it
        try:
            yield
        finally:
            del head.forward

    def start_at(self, layer: int):
        """A context in which the forward pass skips blocks 0..layer-1."""
        path, _, attr = self.spec.layers.rpartition(".")
        return without_first_blocks(self._resolve(path), attr, layer)

    def window(self, prepared: Prepared, window: Window, sites: Iterable[Site]) -> Prepared | None:
        """`prepared` cut to `window`'s positions, reading earlier keys and values from
        `window.past` through the model's own key/value cache (see the protocol and `_KeyCache`).

        Every block keeps its keys and values in one `_KeyCache`, seeded before the run with the
        first `window.start` positions of the past's (layers the past does not hold, blocks the run
        skips, get placeholders of that length: the model reads how many positions it has already
        seen from its first layer). With `keys_only`, the cache ends the forward pass as soon as the
        final block has stored its keys and values (an exception raised from the cache's update,
        caught in `forward`).
        """
        ids, kwargs = prepared.input_ids, dict(prepared.kwargs)
        mask = kwargs.pop("attention_mask", None)
        kwargs.pop("input_ids", None)
        only_ids = not kwargs and (not prepared.args or len(prepared.args) == 1 and prepared.args[0] is ids)
        if (not self.causal or self._cache_arg is None or ids is None or ids.dim() != 2 or not only_ids
                or (mask is not None and not bool((mask == 1).all())) or not self._windows_exact()):
            return None  # encoders, other inputs, padding, sliding windows: every position in one pass
        if any(s.kind in _NOT_WINDOWED for s in sites):
            return None
        n = ids.shape[1]
        start, stop = window.start, n if window.stop is None else window.stop
        if not 0 <= start < stop <= n:
            raise ValueError(f"window {start}..{stop - 1} is not within the {n} positions")
        if start and not isinstance(window.past, _KeyCache):
            raise ValueError("a window that starts after position 0 needs the `past` of an earlier window run")
        cut = ids[:, start:stop]
        last = prepared.last_logits_only and stop == n
        out = Prepared(args=(cut,), input_ids=cut, last_logits_only=last,
                       logit_columns=prepared.logit_columns if last else None)
        if start or window.keep or window.keys_only:
            cache = _KeyCache(self.config, stop_at=self.n_layers - 1 if window.keys_only else None)
            if start:
                cache.seed(window.past, start, window.rows)
            out.kwargs = {self._cache_arg: cache, "use_cache": True}
            out.past = cache
        return out

    def _windows_exact(self) -> bool:
        """Whether every layer of this model's key/value cache keeps every position (a sliding
        window layer keeps only the last few, so a past could not be cut to its first positions),
        and positions are encoded the same whatever the length of the run (rotary scalings that
        change with the sequence length would encode a window's keys differently)."""
        if self._exact_windows is None:
            rope = getattr(self.config, "rope_parameters", None) or getattr(self.config, "rope_scaling", None) or {}
            per_type = [v for v in rope.values() if isinstance(v, dict)] if isinstance(rope, dict) else []
            types = {r.get("rope_type", r.get("type")) for r in [rope, *per_type] if isinstance(r, dict)}
            self._exact_windows = (not types & _LENGTH_DEPENDENT_ROPE and all(
                type(layer) is DynamicLayer for layer in DynamicCache(config=self.config).layers))
        return self._exact_windows

    def logits(self, output: Any) -> Tensor | None:
        """The output's `logits`, or None (an encoder without a head)."""
        return getattr(output, "logits", None)

    def final_norm(self) -> nn.Module | None:
        """The final norm module (what the ln_final site is the output of), if the model has one."""
        w = self._root.get(Kind.LN_FINAL)
        return None if w is None else self._resolve(w.path)

    def unembed(self) -> nn.Module | None:
        """The unembedding module (what the logits site is the output of), if the model has one."""
        w = self._root.get(Kind.LOGITS)
        return None if w is None else self._resolve(w.path)

    # --- weights -----------------------------------------------------------------------------
    def _block_weights(self, layer: int) -> dict[str, Tensor | None]:
        return self.spec.read_block(self.blocks[layer], self)

    @torch.no_grad()
    def weights(self, fold_ln: bool = False) -> Weights:
        """Weight views for every layer and head (see `mechscope.core.weights` for shapes)."""
        per = [self._block_weights(i) for i in range(self.n_layers)]
        stack = lambda k: None if per[0].get(k) is None else torch.stack([p[k].detach() for p in per])  # noqa: E731
        root = self.spec.read_root(self.module, self) if self.spec.read_root else {}
        # views of parameters: detached, so analyses never build graphs through the model's weights
        root = {k: None if v is None else v.detach() for k, v in root.items()}
        w = Weights(
            n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
            W_E=root.get("W_E"), W_pos=root.get("W_pos"),
            W_Q=stack("W_Q"), W_K=stack("W_K"), W_V=stack("W_V"), W_O=stack("W_O"),
            b_Q=stack("b_Q"), b_K=stack("b_K"), b_V=stack("b_V"), b_O=stack("b_O"),
            W_in=stack("W_in"), b_in=stack("b_in"), W_gate=stack("W_gate"),
            W_out=stack("W_out"), b_out=stack("b_out"), W_U=root.get("W_U"), b_U=root.get("b_U"),
            ln1_w=stack("ln1_w"), ln1_b=stack("ln1_b"), ln2_w=stack("ln2_w"), ln2_b=stack("ln2_b"),
            lnf_w=root.get("lnf_w"), lnf_b=root.get("lnf_b"), q_norm_w=stack("q_norm_w"), k_norm_w=stack("k_norm_w"),
            ln1_post_w=stack("ln1_post_w"), ln2_post_w=stack("ln2_post_w"), foldable=not self.spec.post_ln)
        return w.fold_layer_norm() if fold_ln else w


# Sites a window cannot cut by position: keys and values reach attention through the cache (a
# window reads the earlier positions' as the cache holds them, before the attention function's
# taps; per-head key and value inputs may widen grouped keys in one run only), scores and patterns
# have a key position axis, and a module site has no known position axis.
_NOT_WINDOWED = {Kind.K, Kind.V, Kind.K_IN, Kind.V_IN, Kind.SCORES, Kind.PATTERN, Kind.MODULE}
# rotary scalings that depend on how many positions a run holds
_LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}


class _KeysStored(Exception):
    """Raised by a `_KeyCache` once the final block has stored its keys and values."""


class _KeyCache(DynamicCache):
    """A key/value cache that records every layer's keys and values as attention reads them
    (earlier positions and this run's), for later windows to read; with `stop_at`, it ends the
    forward pass once that block has stored its own."""

    def __init__(self, config: Any, stop_at: int | None = None):
        super().__init__(config=config)
        self.stop_at = stop_at
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (keys, values), (batch, kv_head, pos, d_head)

    def seed(self, past: "_KeyCache", length: int, rows: Tensor | None) -> None:
        """Every layer starts with the first `length` positions of `past`'s keys and values (rows
        picked by `rows`), or with placeholders of that length where `past` has fewer."""
        if not past.kv:
            raise ValueError("the past holds no keys and values: run it first")
        placeholder = next(iter(past.kv.values()))[0].new_zeros(1, 1, length, 1)
        for i in range(len(self.layers)):
            k, v = past.kv.get(i, (placeholder, placeholder))
            if k.shape[-2] < length:
                # a block the past did not run this far: the run must skip it too (reading the
                # placeholder would fail on its shape)
                DynamicCache.update(self, placeholder, placeholder, i)
                continue
            k, v = k[..., :length, :], v[..., :length, :]
            if rows is not None:
                k, v = k.index_select(0, rows.to(k.device)), v.index_select(0, rows.to(v.device))
            self.kv[i] = DynamicCache.update(self, k, v, i)

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self.kv[layer_idx] = (keys, values)
        if layer_idx == self.stop_at:
            self.stop_at = None
            raise _KeysStored
        return keys, values


def _tap(root: nn.Module, where: Out | In, path: str) -> Tap:
    mod = root.get_submodule(path) if path else root
    if isinstance(where, Out):
        return ModuleOutput(mod, where.index)
    return ModuleInput(mod, inplace=where.inplace, kwarg="hidden_states", branch=where.branch)


# --- helpers the family files share ---------------------------------------------------------------
def heads_in(w: Tensor, n: int) -> Tensor:
    """(d_model, n*d_head) -> (n, d_model, d_head): split a projection's output columns by head."""
    return w.unflatten(-1, (n, -1)).permute(1, 0, 2)


def heads_out(w: Tensor, n: int) -> Tensor:
    """(n*d_head, d_model) -> (n, d_head, d_model): split an output projection's rows by head."""
    return w.unflatten(0, (n, -1))


def repeat_kv(w: Tensor | None, n_rep: int) -> Tensor | None:
    """Repeat key/value heads (axis 0) so there is one per query head, as attention does."""
    return w if w is None or n_rep == 1 else w.repeat_interleave(n_rep, dim=0)


def per_head(gain: Tensor, heads: int) -> Tensor:
    """A norm gain shared by every head, (d_head,) -> (head, d_head)."""
    return gain.expand(heads, -1)


def linear_t(m: nn.Module) -> Tensor:
    """An nn.Linear's weight as (in, out), the x @ W convention."""
    return m.weight.T


def bias(m: nn.Module) -> Tensor | None:
    """A module's bias, or None when it has none."""
    return getattr(m, "bias", None)


def rms_norm_scale(classes: tuple[str, ...], eps: str,
                   output: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> Callable[[nn.Module], NormScale | None]:
    """A family's `Spec.norm` for its RMSNorm, recognised by class name (one of `classes`): the divisor
    is `rms_divisor` of the input with the module's attribute `eps`; `output(module, x, d)` is the
    module's output for input x normalised by d (where the family casts and applies its gain)."""

    def norm(module: nn.Module) -> NormScale | None:
        if type(module).__name__ not in classes:
            return None
        e = getattr(module, eps)
        return NormScale(module, lambda x: rms_divisor(x, e), lambda x, d: output(module, x, d))

    return norm


def ln_params(m: nn.Module | None) -> tuple[Tensor | None, Tensor | None]:
    """A norm's (weight, bias), each None when missing (and both for no norm)."""
    if m is None:
        return None, None
    return getattr(m, "weight", None), getattr(m, "bias", None)
