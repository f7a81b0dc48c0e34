"""Site: where inside a network an activation lives, as a frozen hashable value.

Axis glossary used throughout mechscope (shapes are written with these names):

    batch   prompts in a batch                  pos     token positions (queries for patterns)
    kpos    key positions of an attention score head    attention heads (query heads)
    d_model residual-stream width               d_head  width of one head's q/k/v/z
    d_mlp   MLP hidden width (neurons)          vocab   vocabulary size
    1       a kept axis of length one: a layer norm's scale is (batch, pos, 1), one number per position

Every site kind has a fixed *layout*: the tensor's axes in order. Interventions use the layout to
find the position, head and unit axes, so no code outside this file needs to know them.

String names enter only at the edges: `Site.parse("blocks.3.attn.hook_z")` accepts
TransformerLens-style names and mechscope's own short names (`attn.z.3`, `resid_post.11`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from enum import Enum

from .errors import SiteError


class Kind(str, Enum):
    """The kinds of site. The value is mechscope's short name.

    Example::

        ms.Kind.RESID_PRE.value                  # "resid_pre", the short name
        ms.Site(ms.Kind.PATTERN, 1)              # (batch, head, pos, kpos) of block 1
    """

    EMBED = "embed"  # token embedding output                       (batch, pos, d_model)
    POS_EMBED = "pos_embed"  # learned absolute position embedding       (batch, pos, d_model)
    RESID_PRE = "resid_pre"  # residual stream entering a block          (batch, pos, d_model)
    # each query head's own residual input to its queries, keys, values (before the norm); equal to
    # resid_pre unless changed per head (edge-level work). Keys/values: one per *query* head.
    Q_IN = "attn.q_in"  #                                                  (batch, pos, head, d_model)
    K_IN = "attn.k_in"  #                                                  (batch, pos, head, d_model)
    V_IN = "attn.v_in"  #                                                  (batch, pos, head, d_model)
    # the divisor a layer norm normalises each position by (TransformerLens's `hook_scale`):
    # sqrt(var + eps) of the input for LayerNorm (variance over d_model, of the centred input),
    # sqrt(mean(x^2) + eps) for RMSNorm; float32. Changing it recomputes the norm's output with the
    # new divisor. Positions only: no head or unit axis.
    LN1_SCALE = "ln1.scale"  # the attention-side norm's scale                (batch, pos, 1)
    LN1 = "ln1"  # output of the attention-side layer norm                   (batch, pos, d_model)
    Q = "attn.q"  # queries as they enter the score (after rotary)          (batch, pos, head, d_head)
    K = "attn.k"  # keys, one per key/value head under grouped attention    (batch, pos, head, d_head)
    V = "attn.v"  # values, one per key/value head                          (batch, pos, head, d_head)
    SCORES = "attn.scores"  # scaled (Gemma 2: capped), masked, pre-softmax  (batch, head, pos, kpos)
    PATTERN = "attn.pattern"  # attention probabilities                        (batch, head, pos, kpos)
    Z = "attn.z"  # pattern-weighted values, per head                       (batch, pos, head, d_head)
    RESULT = "attn.result"  # each head's write to the residual (no bias)     (batch, pos, head, d_model)
    ATTN_OUT = "attn_out"  # attention block output                        (batch, pos, d_model)
    RESID_MID = "resid_mid"  # residual stream between attention and MLP      (batch, pos, d_model)
    MLP_IN = "mlp_in"  # the residual the MLP alone reads (before its norm)  (batch, pos, d_model)
    LN2_SCALE = "ln2.scale"  # the MLP-side norm's scale                     (batch, pos, 1)
    LN2 = "ln2"  # output of the MLP-side layer norm                           (batch, pos, d_model)
    MLP_PRE = "mlp.pre"  # neuron pre-activations                            (batch, pos, d_mlp)
    MLP_POST = "mlp.post"  # neuron activations (input of the out-projection) (batch, pos, d_mlp)
    MLP_OUT = "mlp_out"  # MLP block output                                  (batch, pos, d_model)
    RESID_POST = "resid_post"  # residual stream leaving a block               (batch, pos, d_model)
    LN_FINAL_SCALE = "ln_final.scale"  # the final norm's scale              (batch, pos, 1)
    LN_FINAL = "ln_final"  # output of the final layer norm                    (batch, pos, d_model)
    LOGITS = "logits"  # unembedding output                                    (batch, pos, vocab)
    MODULE = "module"  # output of any named submodule (generic adapter)       (module-defined)


@dataclass(frozen=True)
class Layout:
    """Which axis of a site's tensor holds positions, heads and units (None: no such axis).

    Example::

        ms.Site(ms.Kind.Z, 3).layout             # Layout(pos=1, head=2, unit=-1): (batch, pos, head, d_head)
    """

    pos: int | None = 1
    head: int | None = None
    unit: int | None = -1


_PER_LAYER = {
    Kind.RESID_PRE, Kind.Q_IN, Kind.K_IN, Kind.V_IN, Kind.MLP_IN,
    Kind.LN1_SCALE, Kind.LN1, Kind.Q, Kind.K, Kind.V, Kind.SCORES, Kind.PATTERN, Kind.Z,
    Kind.RESULT, Kind.ATTN_OUT, Kind.RESID_MID, Kind.LN2_SCALE, Kind.LN2, Kind.MLP_PRE, Kind.MLP_POST,
    Kind.MLP_OUT, Kind.RESID_POST,
}
_PER_HEAD = {Kind.Q, Kind.K, Kind.V, Kind.SCORES, Kind.PATTERN, Kind.Z, Kind.RESULT,
             Kind.Q_IN, Kind.K_IN, Kind.V_IN}

LAYOUTS: dict[Kind, Layout] = {k: Layout() for k in Kind}
for _k in (Kind.Q, Kind.K, Kind.V, Kind.Z, Kind.RESULT, Kind.Q_IN, Kind.K_IN, Kind.V_IN):
    LAYOUTS[_k] = Layout(pos=1, head=2, unit=-1)
for _k in (Kind.SCORES, Kind.PATTERN):
    LAYOUTS[_k] = Layout(pos=2, head=1, unit=None)  # positions select query rows
LAYOUTS[Kind.MODULE] = Layout(pos=None, head=None, unit=None)
for _k in (Kind.LN1_SCALE, Kind.LN2_SCALE, Kind.LN_FINAL_SCALE):
    LAYOUTS[_k] = Layout(pos=1, head=None, unit=None)  # (batch, pos, 1): the last axis is not a unit axis

# TransformerLens-style hook names <-> kinds.
_TL_BLOCK = {
    "hook_resid_pre": Kind.RESID_PRE, "hook_resid_mid": Kind.RESID_MID,
    "hook_resid_post": Kind.RESID_POST, "hook_attn_out": Kind.ATTN_OUT,
    "hook_mlp_out": Kind.MLP_OUT, "attn.hook_q": Kind.Q, "attn.hook_k": Kind.K,
    "attn.hook_v": Kind.V, "attn.hook_attn_scores": Kind.SCORES, "attn.hook_pattern": Kind.PATTERN,
    "attn.hook_z": Kind.Z, "attn.hook_result": Kind.RESULT, "mlp.hook_pre": Kind.MLP_PRE,
    "mlp.hook_post": Kind.MLP_POST, "ln1.hook_normalized": Kind.LN1, "ln2.hook_normalized": Kind.LN2,
    "ln1.hook_scale": Kind.LN1_SCALE, "ln2.hook_scale": Kind.LN2_SCALE,
    "hook_q_input": Kind.Q_IN, "hook_k_input": Kind.K_IN, "hook_v_input": Kind.V_IN, "hook_mlp_in": Kind.MLP_IN,
}
_TL_GLOBAL = {"hook_embed": Kind.EMBED, "hook_pos_embed": Kind.POS_EMBED,
              "ln_final.hook_normalized": Kind.LN_FINAL, "ln_final.hook_scale": Kind.LN_FINAL_SCALE,
              "unembed": Kind.LOGITS,
              "logits": Kind.LOGITS}
_TL_NAME = {v: k for k, v in _TL_BLOCK.items()} | {
    Kind.EMBED: "hook_embed", Kind.POS_EMBED: "hook_pos_embed",
    Kind.LN_FINAL: "ln_final.hook_normalized", Kind.LN_FINAL_SCALE: "ln_final.hook_scale",
    Kind.LOGITS: "logits"}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SHORT_RE = re.compile(r"^([a-z_][a-z0-9_.]*?)\.(\d+)(?:\.h(\d+))?$")  # kinds may hold digits: ln1.0
_HEAD_SUFFIX = re.compile(r"^(.*)\[(?:head=)?(\d+)\]$")


@dataclass(frozen=True, order=True)
class Site:
    """Where an activation lives: kind, layer, optionally one head, or a module path.

    `Site(Kind.Z, 3)` is the per-head output of block 3's attention, shape
    (batch, pos, head, d_head); `Site(Kind.Z, 3, head=5)` is head 5 only, (batch, pos, d_head).
    `Site.module("features.3")` is the output of submodule `features.3` of any nn.Module.

    Example::

        ms.Site(ms.Kind.Z, 3, head=5).name       # "blocks.3.attn.hook_z[5]"
        ms.Site.parse("resid_pre.2")             # Site(resid_pre.2)
        ms.Site.module("features.3")             # any nn.Module's submodule output
    """

    kind: Kind
    layer: int | None = None
    head: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind):
            object.__setattr__(self, "kind", Kind(self.kind))
        if self.kind in _PER_LAYER and self.layer is None:
            raise SiteError(f"site kind {self.kind.value!r} needs a layer")
        if self.kind not in _PER_LAYER and self.layer is not None:
            raise SiteError(f"site kind {self.kind.value!r} has no layer (got layer={self.layer})")
        if self.head is not None and self.kind not in _PER_HEAD:
            raise SiteError(f"site kind {self.kind.value!r} has no head axis; "
                            f"per-head kinds are {sorted(k.value for k in _PER_HEAD)}")
        if (self.kind is Kind.MODULE) != (self.path is not None):
            raise SiteError("a module site needs a path and only module sites have one")

    # constructors -------------------------------------------------------------------------
    @staticmethod
    def module(path: str) -> "Site":
        """The site of the output of submodule `path` of a plain module (the generic adapter's sites)."""
        return Site(Kind.MODULE, path=path)

    def with_head(self, head: int | None) -> "Site":
        """The same site restricted to head `head` (None: every head)."""
        return Site(self.kind, self.layer, head, self.path)

    @property
    def whole(self) -> "Site":
        """The same site with every head (drops a head restriction)."""
        return self.with_head(None)

    @property
    def layout(self) -> Layout:
        """Which axes of the site's tensor are positions, heads and units (a head-restricted site has no head axis)."""
        lay = LAYOUTS[self.kind]
        if self.head is None or lay.head is None:
            return lay
        # A head-restricted site has lost its head axis: shift later axes down by one.
        shift = lambda a: None if a is None else (a - 1 if a > lay.head else a)  # noqa: E731
        return Layout(pos=shift(lay.pos), head=None, unit=lay.unit if lay.unit == -1 else shift(lay.unit))

    @property
    def per_head(self) -> bool:
        """Whether the site's tensor has a head axis (q, k, v, scores, pattern, z, result and the per-head inputs)."""
        return self.kind in _PER_HEAD

    # names --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """TransformerLens-style name, e.g. `blocks.3.attn.hook_z`; `[h]` marks one head."""
        if self.kind is Kind.MODULE:
            return str(self.path)
        base = _TL_NAME[self.kind]
        if self.layer is not None:
            base = f"blocks.{self.layer}.{base}"
        return base if self.head is None else f"{base}[{self.head}]"

    @property
    def short(self) -> str:
        """mechscope's short name, e.g. `attn.z.3` or `attn.z.3.h5`."""
        if self.kind is Kind.MODULE:
            return str(self.path)
        s = self.kind.value if self.layer is None else f"{self.kind.value}.{self.layer}"
        return s if self.head is None else f"{s}.h{self.head}"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Site({self.short})"

    @staticmethod
    def parse(name: "str | Site", valid: "list[Site] | None" = None) -> "Site":
        """Parse a TransformerLens-style or short name into a Site.

        With `valid` (a model's sites), the result must be one of them; otherwise the error lists
        the nearest valid names.
        """
        if isinstance(name, Site):
            site = name
        else:
            site = _parse(name.strip(), valid)
        if valid is not None and site.whole not in set(valid):
            raise SiteError(f"site {name!s} does not exist in this model" + _suggest(str(name), valid))
        return site


def _parse(text: str, valid: "list[Site] | None") -> Site:
    if valid is not None and Site.module(text) in set(valid):  # a submodule may be called `embed`, `ln1.0`
        return Site.module(text)
    head = None
    m = _HEAD_SUFFIX.match(text)
    if m:
        text, head = m.group(1), int(m.group(2))
    m = _BLOCK_RE.match(text)
    if m and m.group(2) in _TL_BLOCK:
        return Site(_TL_BLOCK[m.group(2)], int(m.group(1)), head)
    if text in _TL_GLOBAL:
        return Site(_TL_GLOBAL[text], None, head)
    m = _SHORT_RE.match(text)
    if m:
        try:
            kind = Kind(m.group(1))
        except ValueError:
            kind = None
        if kind is not None and kind in _PER_LAYER:
            h = m.group(3)
            return Site(kind, int(m.group(2)), int(h) if h is not None else head)
    try:
        kind = Kind(text)
        if kind not in _PER_LAYER and kind is not Kind.MODULE:
            return Site(kind, None, head)
    except ValueError:
        pass
    if valid is not None and any(s.kind is Kind.MODULE for s in valid):
        raise SiteError(f"unknown site {text!r}" + _suggest(text, valid))
    raise SiteError(f"unknown site name {text!r}" + _suggest(text, valid or _examples()))


def _examples() -> list[Site]:
    return [Site(k, 0) if k in _PER_LAYER else Site(k) for k in Kind if k is not Kind.MODULE]


def _suggest(text: str, valid: list[Site]) -> str:
    names = [s.name for s in valid] + [s.short for s in valid if s.kind is not Kind.MODULE]
    close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
    if not close:
        close = names[:5]
    return "; nearest valid names: " + ", ".join(close)
