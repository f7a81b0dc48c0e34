"""Equivariance: families of channels that are copies of each other under a rotation, reflection or colour change.

A channel j is *g-related* to channel i when j does to transformed images what i does to the originals:
j's response map to g(x) is g applied to i's response map to x (Olah et al. 2020, "Naturally occurring
equivariance"). Two kinds of evidence, both measured for every ordered pair (i, j) and every g:

- **responses**: the correlation, over the images and positions, of g(A_i(x)) with A_j(g(x)), where A is
  the layer's feature map (`layer`, any feature layer: a convolution, the ReLU after it, a pooling);
- **weights**: the cosine between g applied to channel i's incoming weights and channel j's incoming
  weights, read from a Conv2d (`conv`, by default `layer` itself when it is one, else the last Conv2d
  before it in module order). What "g applied to the weights" means, with W_i (in, kh, kw):
  * spatial part: each kernel W_i[a] is rotated / reflected like an image (exact for cross-correlation
    with symmetric padding: conv(g x, W_j) = g conv(x, W_i) when W_j = g W_i);
  * input channels: for a convolution that reads the image, colour permutations move the colour
    channels (W_j = W_i[:, p] for the image permutation x -> x[:, p]) and inversion x -> low + high - x
    negates the weights (W_j = -W_i; biases are not compared). For a convolution that reads an earlier
    feature layer, the input channels are moved by that layer's own channel map under g (`previous`: the
    result of this analysis at the layer the convolution reads): W_j[sigma(a)] = g W_i[a]. Only the input
    channels with a partner under g take part (the others have no prediction; `coverage` says how much
    of the weights that is; a transformation whose comparison covers less than `min_coverage` of them
    forms no relations, a match on a small part of the filters being weak evidence). Without `previous`,
    the input channels are compared in place, which assumes each of them is g-invariant (this is recorded
    in the result's `input_map`).

A relation between two different channels needs a score >= `threshold` and a score at least `margin`
above the two channels' *plain* similarity (the same score without g: the correlation of A_i(x) with
A_j(x), or the cosine of W_i with W_j), so two near-copies of one channel are not taken for a symmetry
(on dataset images, first-layer channels all follow the local brightness and correlate under every g;
noise images avoid that, and the null below shows how much of it remains). Relations are joined into
*families* (orbits, by union-find); each family lists its members, the transformation taking the first
member's channel to each member's, and the strength of the weakest relation on that path. A channel
related to itself under g is g-*invariant* (listed apart; it is part of the layer's channel map but forms
no family with others).

"How many parameters the symmetry accounts for": in each weight family of m members, each of the m - 1
members after the first is predicted by the member it joined from and that relation's g (`Family.links`):
its compared entries, (input channels with a partner under g) x kh x kw, are counted (all in x kh x kw for
a convolution reading the image; biases not counted); reported as a count and a fraction of the conv's
weights.

Null: the same analysis on the network with the conv's weight entries shuffled at random (seeded), which
keeps their distribution and destroys any structure; the result reports its families and parameters.

Transformations: "rot90", "rot180", "rot270" (counter-clockwise, as torch.rot90 on (height, width)),
"flip_h" (left-right), "flip_v" (up-down), "flip_diag", "flip_antidiag" (the diagonal reflections),
approximately "rot45", "rot135", "rot225", "rot315" (resampled bilinearly; responses compared inside the
maps' inscribed disc; weights not compared, a small kernel turned by 45 degrees being off the grid), and
for colour images "perm:2,1,0" (x -> x[:, (2, 1, 0)]) and "invert" (x -> low + high - x), or a
composition "rot90+perm:1,0,2+invert". Turns other than 180 degrees need square feature maps and kernels.

Shapes: images (n, C, H, W); response scores and weight scores (G, K, K) with [g, i, j] = how well j
matches g applied to i, for K channels and G transformations.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.progress import progress_bar
from ..models import wrap
from ._store import load_result, save_result
from .layers import FeatureLayer, ImageSpec, VisionInputError, channel_activations, feature_layer

SPATIAL = ("identity", "rot90", "rot180", "rot270", "flip_h", "flip_diag", "flip_v", "flip_antidiag")
# SPATIAL[4 * flip + k]: reflect left-right when flip, then rotate k quarter turns counter-clockwise;
# flip_diag is the transpose (height <-> width), flip_antidiag the reflection in the other diagonal
EIGHTHS = {1: "rot45", 3: "rot135", 5: "rot225", 7: "rot315"}  # approximate: resampled, see `Transform.map`


def _rotate(x: Tensor, degrees: float, fill: float) -> Tensor:
    """`x` (..., h, w) turned counter-clockwise about its centre (bilinear; `fill` outside the original)."""
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1]).double() - fill
    a = torch.tensor(degrees * torch.pi / 180, dtype=torch.float64)
    c, s = float(torch.cos(a)), float(torch.sin(a))
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float64, device=x.device)
    grid = torch.nn.functional.affine_grid(theta.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + fill).reshape(shape).to(x.dtype)


def disc(h: int, w: int) -> Tensor:
    """(h, w) bool: the positions of an h x w map that stay inside it under any rotation about its centre
    (the inscribed disc less a pixel's margin), where 45-degree turns are compared.

    Example::

        disc(28, 28).sum()   # the positions inside a 13-pixel radius
    """
    ys = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    return ys[:, None] ** 2 + xs[None, :] ** 2 <= (min(h, w) / 2 - 1) ** 2


@dataclass(frozen=True)
class Transform:
    """An element g of (symmetries of the square, plus approximate 45-degree turns) x (colour permutations)
    x (inversion), acting on images (n, C, H, W) and feature maps (n, K, h, w): first the left-right
    reflection (`flip`), then `turn` counter-clockwise eighth turns (an even number: exact quarter turns; an
    odd one: quarter turns and a 45-degree turn resampled bilinearly, approximate), with the colour
    channels permuted x -> x[:, perm] and inverted.

    Example::

        g = Transform.parse("rot90")
        g.image(x, spec)          # torch.rot90(x, 1, (-2, -1))
        g.compose(g).name         # 'rot180'
        Transform.parse("flip_h+rot45").exact   # False
    """

    turn: int = 0
    flip: bool = False
    perm: tuple[int, ...] | None = None
    invert: bool = False

    @property
    def name(self) -> str:
        """"rot90", "flip_h", "rot45", "flip_h+rot45", "perm:2,1,0", "invert", or parts joined by "+"
        (spatial parts applied in the order written); "identity" for none."""
        parts = [] if self.spatial == "identity" else [self.spatial]
        if self.perm is not None:
            parts.append("perm:" + ",".join(map(str, self.perm)))
        if self.invert:
            parts.append("invert")
        return "+".join(parts) or "identity"

    @property
    def spatial(self) -> str:
        """The name of the spatial part."""
        if self.turn % 2 == 0:
            return SPATIAL[4 * self.flip + self.turn // 2]
        return ("flip_h+" if self.flip else "") + EIGHTHS[self.turn]

    @property
    def exact(self) -> bool:
        """Whether the spatial part moves pixels onto pixels (no 45-degree turn)."""
        return self.turn % 2 == 0

    @property
    def colour(self) -> bool:
        """Whether it changes colours (a permutation or the inversion)."""
        return self.perm is not None or self.invert

    @classmethod
    def parse(cls, text: str) -> Transform:
        """The transform named `text` (see `name`); an error listing the valid names otherwise."""
        g = cls()
        named = {**{n: (2 * (i % 4), bool(i // 4)) for i, n in enumerate(SPATIAL)},
                 **{n: (t, False) for t, n in EIGHTHS.items()}}
        for part in text.strip().split("+"):
            if part in named:
                g = cls(*named[part]).compose(g)
            elif part == "invert":
                g = cls(invert=True).compose(g)
            elif part.startswith("perm:"):
                try:
                    perm = tuple(int(v) for v in part[5:].split(","))
                except ValueError:
                    perm = ()
                if sorted(perm) != list(range(len(perm))) or len(perm) < 2:
                    raise VisionInputError(f"{part!r} is not a permutation of the colour channels, e.g. perm:2,1,0")
                g = cls(perm=perm if perm != tuple(range(len(perm))) else None).compose(g)
            else:
                raise VisionInputError(f"unknown transformation {part!r} in {text!r}; use {', '.join(SPATIAL[1:])}, "
                                       f"{', '.join(EIGHTHS.values())} (approximate), perm:I,J,K (colour channels) "
                                       "or invert, joined by '+'")
        return g

    def map(self, x: Tensor, fill: float = 0.0) -> Tensor:
        """The spatial part applied to the last two dims (height, width) of `x`; a 45-degree turn resamples
        bilinearly and puts `fill` where the turned map does not reach (the corners)."""
        if self.flip:
            x = x.flip(-1)
        quarters, odd = divmod(self.turn, 2)
        if quarters:
            x = torch.rot90(x, quarters, (-2, -1))
        return _rotate(x, 45.0, fill) if odd else x

    def image(self, x: Tensor, spec: ImageSpec) -> Tensor:
        """g(x) for images (n, C, H, W) of `spec` (corners a 45-degree turn leaves empty are mid-grey)."""
        x = self.map(x, (spec.low + spec.high) / 2)
        if self.perm is not None:
            x = x[:, list(self.perm)]
        return spec.low + spec.high - x if self.invert else x

    def compose(self, first: Transform) -> Transform:
        """The transform `self` after `first` (apply `first`, then `self`): with R a turn and F the
        reflection, R^a F^b R^c F^d = R^(a + (-1)^b c) F^(b xor d)."""
        turn = (self.turn + (-first.turn if self.flip else first.turn)) % 8
        if self.perm is None or first.perm is None:
            perm = self.perm or first.perm
        else:
            perm = tuple(first.perm[p] for p in self.perm)  # (x[:, f])[:, s] = x[:, f[s]]
        if perm == tuple(range(len(perm or ()))):
            perm = None
        return Transform(turn, self.flip != first.flip, perm, self.invert != first.invert)


def _channel_perm(perm: tuple[int, ...]) -> list[int]:
    """The input-channel map sigma of an image permutation x -> x[:, perm]: channel a moves to sigma[a]."""
    sigma = [0] * len(perm)
    for b, a in enumerate(perm):
        sigma[a] = b
    return sigma


@dataclass(frozen=True)
class Family:
    """Channels related by transformations: for each member, the transform taking members[0]'s channel to
    its channel, the weakest relation's strength on the way (1.0 for members[0] itself), and the relation
    it joined the family by: the member it was reached from (`parents`, -1 for members[0]) and that
    relation's transformation (`links`: parent = g member or member = g parent; "" for members[0]).

    Example::

        Family(members=(0, 1, 2, 3), transforms=("identity", "rot90", "rot180", "rot270"),
               strengths=(1.0, 0.99, 0.98, 0.99), parents=(-1, 0, 1, 2), links=("", "rot90", "rot90", "rot90"))
    """

    members: tuple[int, ...]
    transforms: tuple[str, ...]
    strengths: tuple[float, ...]
    parents: tuple[int, ...]
    links: tuple[str, ...]


@dataclass(frozen=True)
class Symmetry:
    """One kind of evidence ("responses" or "weights") at a layer: scores (G, K, K), [g, i, j] = how well
    channel j matches g applied to channel i (correlation or cosine); `coverage` (G,) the fraction of the
    weights' norm compared (1 for responses); `plain` (K, K) the same score without g; the families and
    invariant channels found with `threshold` and `margin`.

    Example::

        sym = equivariance(model, "conv1", spec, images).responses
        sym.families[0].members, sym.channel_map("rot90")
    """

    kind: str
    transforms: tuple[str, ...]
    scores: Tensor
    coverage: Tensor
    plain: Tensor
    threshold: float
    margin: float
    min_coverage: float
    families: tuple[Family, ...]
    invariant: tuple[tuple[int, str], ...]

    def channel_map(self, transform: str) -> Tensor:
        """(K,) long: sigma[i] = the channel j best matching g applied to i (itself when invariant), or -1
        when no relation of i under g passes the threshold and margin."""
        scores = self.scores[self.transforms.index(Transform.parse(transform).name)]
        ok = _related(scores[None], self.plain, self.threshold, self.margin)[0]
        if float(self.coverage[self.transforms.index(Transform.parse(transform).name)]) < self.min_coverage:
            ok = torch.zeros_like(ok)
        best, j = torch.where(ok, scores, torch.full_like(scores, -torch.inf)).max(1)
        return torch.where(ok.any(1), j, torch.full_like(j, -1))


def _related(scores: Tensor, plain: Tensor, threshold: float, margin: float) -> Tensor:
    """(G, K, K) bool: scores >= threshold and, for i != j, scores - plain[i, j] >= margin."""
    k = plain.shape[0]
    other = ~torch.eye(k, dtype=torch.bool)
    return (scores >= threshold) & ~(other & (scores - plain < margin))


def _families(scores: Tensor, plain: Tensor, names: Sequence[str], threshold: float, margin: float,
              usable: Sequence[bool]) -> tuple[tuple[Family, ...], tuple[tuple[int, str], ...]]:
    """Orbits of the relations (`_related`, i != j, under the `usable` transforms), by union-find; and the
    invariant channels (i == j)."""
    k = scores.shape[1]
    edges: dict[tuple[int, int], tuple[float, str]] = {}  # (i, j) -> the best g with j ~ g i
    invariant = []
    for gi, name in enumerate(names):
        if not usable[gi]:
            continue
        for i, j in torch.nonzero(_related(scores[gi:gi + 1], plain, threshold, margin)[0]).tolist():
            s = float(scores[gi, i, j])
            if i == j:
                invariant.append((i, name))
            elif (i, j) not in edges or s > edges[(i, j)][0]:
                edges[(i, j)] = (s, name)
    parent = list(range(k))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in edges:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for c in range(k):
        groups.setdefault(root(c), []).append(c)
    parsed = {n: Transform.parse(n) for n in names}
    families = []
    for members in sorted(g for g in groups.values() if len(g) > 1):
        # breadth-first from the first member along relations either way (b ~ g a, so a ~ g^-1 b)
        found: dict[int, tuple[Transform, float, int, str]] = {members[0]: (Transform(), 1.0, -1, "")}
        todo = [members[0]]
        while todo:
            i = todo.pop(0)
            gi, si = found[i][:2]
            for (a, b), (s, name) in sorted(edges.items()):
                if a == i and b not in found:
                    found[b] = (parsed[name].compose(gi), min(si, s), i, name)
                    todo.append(b)
                elif b == i and a not in found:
                    found[a] = (_inverse(parsed[name]).compose(gi), min(si, s), i, name)
                    todo.append(a)
        families.append(Family(tuple(members), tuple(found[m][0].name for m in members),
                               tuple(found[m][1] for m in members), tuple(found[m][2] for m in members),
                               tuple(found[m][3] for m in members)))
    return tuple(families), tuple(sorted(invariant))


def _is_identity(g: Transform) -> bool:
    return g.turn == 0 and not g.flip and g.perm is None and not g.invert


def _group(colours: int) -> list[Transform]:
    perms = [None] + [p for p in itertools.permutations(range(colours)) if p != tuple(range(colours))]
    return [Transform(t, f, p, inv) for f in (False, True) for t in range(8) for p in perms for inv in (False, True)]


def _inverse(g: Transform) -> Transform:
    colours = len(g.perm) if g.perm is not None else 3
    return next(h for h in _group(colours) if _is_identity(h.compose(g)))


def response_scores(model: Any, layer: FeatureLayer, spec: ImageSpec, images: Tensor,
                    transforms: Sequence[Transform], batch: int = 128) -> Tensor:
    """Scores (G, K, K): [g, i, j] = correlation over images and positions of g(A_i(x)) and A_j(g(x))
    (for a 45-degree turn, over the positions of `disc`: the turned map's corners are not data).

    Example::

        layer = feature_layer(model, "relu1", spec)
        response_scores(model, layer, spec, images, [Transform.parse("rot90")]).shape   # (1, K, K)
    """
    stats = [_Moments() for _ in transforms]
    with torch.no_grad():  # one batch at a time, so a large layer never holds every image's maps at once
        for s in range(0, len(images), batch):
            x = images[s:s + batch]
            base = channel_activations(model, x, layer)
            inside = disc(base.shape[-2], base.shape[-1]).to(base.device)
            for g, m in zip(transforms, stats):
                m.add(g.map(base), channel_activations(model, g.image(x, spec), layer), None if g.exact else inside)
    return torch.stack([m.correlations() for m in stats])


class _Moments:
    """Running sums for the (K, K) correlation of a[:, i] with b[:, j], maps (n, K, h, w), over images and
    positions (values shifted by the first batch's channel means, in float64, against cancellation)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: tuple[Tensor, Tensor] | None = None
        self.sums: list[Tensor] = []

    def add(self, a: Tensor, b: Tensor, where: Tensor | None = None) -> None:
        if where is not None:  # only these positions (h, w) count
            a, b = a[..., where], b[..., where]
        a = a.transpose(0, 1).reshape(a.shape[1], -1).double()
        b = b.transpose(0, 1).reshape(b.shape[1], -1).double()
        if self.shift is None:
            self.shift = (a.mean(1, keepdim=True), b.mean(1, keepdim=True))
        a, b = a - self.shift[0], b - self.shift[1]
        parts = [a.sum(1), b.sum(1), a.pow(2).sum(1), b.pow(2).sum(1), a @ b.T]
        self.sums = parts if not self.sums else [t + p for t, p in zip(self.sums, parts)]
        self.n += a.shape[1]

    def correlations(self) -> Tensor:
        """(K, K) float32 on the CPU; 0 for a channel that never varies."""
        sa, sb, saa, sbb, sab = self.sums
        n = self.n
        va, vb = saa - sa * sa / n, sbb - sb * sb / n
        # a variance that is rounding error of the sum of squares means a constant channel
        va = torch.where(va > 1e-12 * saa.clamp_min(1e-300), va, torch.zeros_like(va))
        vb = torch.where(vb > 1e-12 * sbb.clamp_min(1e-300), vb, torch.zeros_like(vb))
        cov = sab - sa[:, None] * sb[None, :] / n
        den = (va[:, None] * vb[None, :]).sqrt()
        return torch.where(den > 0, cov / den.clamp_min(1e-300), torch.zeros_like(cov)).float().cpu()


def _input_map(g: Transform, conv: nn.Conv2d, reads_image: bool, previous: Symmetry | None
               ) -> tuple[list[int], float]:
    """sigma (in,) (-1 = no partner) and the sign the incoming weights take under g."""
    n = conv.in_channels
    if _is_identity(g):
        return list(range(n)), 1.0
    if reads_image:
        sigma = _channel_perm(g.perm) if g.perm is not None else list(range(n))
        return sigma, -1.0 if g.invert else 1.0
    if previous is None:
        return list(range(n)), 1.0
    sigma = previous.channel_map(g.name).tolist()
    counts: dict[int, int] = {}
    for b in sigma:
        counts[b] = counts.get(b, 0) + 1
    return [b if b >= 0 and counts[b] == 1 else -1 for b in sigma], 1.0  # a shared partner predicts nothing


def weight_scores(conv: nn.Conv2d, transforms: Sequence[Transform], reads_image: bool,
                  previous: Symmetry | None = None, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Scores (G, K, K): [g, i, j] = cosine of g applied to W_i and W_j over the input channels with a partner
    under g; and coverage (G,): the fraction of the weights' squared norm on those channels (45-degree
    turns are not compared: scores 0, coverage 0).

    Example::

        scores, coverage = weight_scores(model.conv1, [Transform.parse("rot90")], reads_image=True)
    """
    w = (conv.weight if weight is None else weight).detach().float().cpu()  # (K, in, kh, kw)
    out, cover = [], []
    for g in transforms:
        if not g.exact:  # a 45-degree turn of a small kernel is no filter of the network: not compared
            out.append(torch.zeros(w.shape[0], w.shape[0]))
            cover.append(0.0)
            continue
        sigma, sign = _input_map(g, conv, reads_image, previous)
        src = [a for a, b in enumerate(sigma) if b >= 0]
        dst = [sigma[a] for a in src]
        moved = sign * g.map(w[:, src])  # (K, m, kh, kw): g W_i[a], to be compared with W_j[sigma(a)]
        target = w[:, dst]
        pred = moved.reshape(w.shape[0], -1)
        pred = pred / pred.norm(dim=1, keepdim=True).clamp_min(1e-12)
        tgt = target.reshape(w.shape[0], -1)
        tgt = tgt / tgt.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out.append(pred @ tgt.T)
        total = float(w.pow(2).sum())
        cover.append(float(w[:, src].pow(2).sum()) / total if total > 0 else 0.0)
    return torch.stack(out), torch.tensor(cover)


@dataclass(frozen=True)
class EquivarianceResult:
    """Families of channels at a layer by responses and by weights, the parameters the symmetry accounts for,
    and the shuffled-weights null.

    `params_determined` = sum over weight families of (members - 1) x compared entries per channel;
    `params_total` = the conv's weight entries. `null_*` are the same figures for the network with the
    conv's weights shuffled (seeded by `seed`). `input_map` says how the conv's input channels were moved:
    "image", "previous" or "in place".

    Example::

        res = equivariance(model, "relu1", spec, images)
        for fam in res.weights.families: print(fam.members, fam.transforms)
        res.params_determined, res.params_fraction, res.null_families
        res.save("out/eq"); EquivarianceResult.load("out/eq")
    """

    layer: str
    conv: str | None
    transforms: tuple[str, ...]
    threshold: float
    margin: float
    seed: int
    input_map: str
    responses: Symmetry | None
    weights: Symmetry | None
    params_determined: int
    params_total: int
    null_responses: Symmetry | None
    null_weights: Symmetry | None
    null_params_determined: int

    @property
    def params_fraction(self) -> float:
        """params_determined / params_total (0 without weights)."""
        return self.params_determined / self.params_total if self.params_total else 0.0

    @property
    def null_families(self) -> int:
        """Families found on the shuffled network (by weights, else by responses)."""
        sym = self.null_weights or self.null_responses
        return len(sym.families) if sym is not None else 0

    def save(self, path: str | Path) -> Path:
        """Write the result into directory `path` (safetensors + JSON); `EquivarianceResult.load` reads it."""
        tensors, syms = {}, {}
        for name in ("responses", "weights", "null_responses", "null_weights"):
            s = getattr(self, name)
            if s is None:
                continue
            tensors[f"{name}.scores"] = s.scores
            tensors[f"{name}.coverage"] = s.coverage
            tensors[f"{name}.plain"] = s.plain
            syms[name] = {"kind": s.kind, "transforms": list(s.transforms), "threshold": s.threshold,
                          "margin": s.margin, "min_coverage": s.min_coverage,
                          "families": [[list(f.members), list(f.transforms), list(f.strengths), list(f.parents),
                                        list(f.links)] for f in s.families],
                          "invariant": [list(v) for v in s.invariant]}
        fields = {"layer": self.layer, "conv": self.conv, "transforms": list(self.transforms),
                  "threshold": self.threshold, "margin": self.margin, "seed": self.seed, "input_map": self.input_map,
                  "params_determined": self.params_determined, "params_total": self.params_total,
                  "null_params_determined": self.null_params_determined, "symmetries": syms}
        return save_result(path, "equivariance", tensors, fields)

    @classmethod
    def load(cls, path: str | Path) -> EquivarianceResult:
        """The result `save` wrote into directory `path`."""
        tensors, f = load_result(path, "equivariance")

        def sym(name: str) -> Symmetry | None:
            s = f["symmetries"].get(name)
            if s is None:
                return None
            fams = tuple(Family(*(tuple(v) for v in fam)) for fam in s["families"])
            return Symmetry(s["kind"], tuple(s["transforms"]), tensors[f"{name}.scores"],
                            tensors[f"{name}.coverage"], tensors[f"{name}.plain"], s["threshold"], s["margin"],
                            s["min_coverage"], fams,
                            tuple((int(c), str(g)) for c, g in s["invariant"]))
        return cls(f["layer"], f["conv"], tuple(f["transforms"]), f["threshold"], f["margin"], f["seed"],
                   f["input_map"],
                   sym("responses"), sym("weights"), f["params_determined"], f["params_total"],
                   sym("null_responses"), sym("null_weights"), f["null_params_determined"])


def _module(model: Any) -> nn.Module:
    module = getattr(wrap(model), "module", None)
    if not isinstance(module, nn.Module):
        raise VisionInputError("equivariance reads a plain nn.Module network (ms.wrap(module))")
    return module


def _find_conv(module: nn.Module, layer: str, conv: str | None) -> str | None:
    """`conv` checked, or `layer` when it is a Conv2d, or the last Conv2d before it in module order."""
    mods = dict(module.named_modules())
    convs = [p for p, m in mods.items() if p and isinstance(m, nn.Conv2d)]
    if conv is not None:
        if not isinstance(mods.get(conv), nn.Conv2d) or not conv:
            raise VisionInputError(f"{conv!r} is not a Conv2d of the network; its Conv2d layers: "
                                   f"{', '.join(convs) or '(none)'}")
        return conv
    before = []
    for p, m in mods.items():
        if p and isinstance(m, nn.Conv2d):
            before.append(p)
        if p == layer:
            break
    return before[-1] if before else None


def _default_transforms(spec: ImageSpec, square: bool) -> list[str]:
    names = (["rot90", "rot180", "rot270"] if square else ["rot180"]) + ["flip_h", "flip_v"]
    if spec.channels == 3:
        names += ["perm:" + ",".join(map(str, p)) for p in itertools.permutations(range(3)) if p != (0, 1, 2)]
        names.append("invert")
    return names


def equivariance(model: Any, layer: str, spec: ImageSpec, images: Tensor | None = None, *,
                 conv: str | None = None, transforms: Sequence[str] | None = None, threshold: float = 0.9,
                 margin: float = 0.2, min_coverage: float = 0.5,
                 previous: EquivarianceResult | None = None, null: bool = True, seed: int = 0,
                 batch: int = 128, progress: bool = True) -> EquivarianceResult:
    """Channel families at `layer` related by `transforms`, by responses to `images` (n, C, H, W) (skipped
    when None) and by the incoming weights of `conv`; parameters the symmetry accounts for; shuffled null.

    `transforms`: names (see `Transform`); default rotations by 90/180/270 degrees (180 only for
    non-square maps), left-right and up-down reflections, and for 3-channel images the colour permutations
    and inversion. `threshold`: the correlation / cosine a relation needs; `margin`: how far above the two
    channels' plain similarity it must be (see the module's notes); `min_coverage`: the fraction of the
    conv's weights (squared norm) a transformation's weight comparison must cover to form relations.
    `previous`: this analysis at the feature layer `conv` reads, to move its input channels (see the
    module's notes). `null`: also analyse the network with `conv`'s weight entries shuffled (seeded by
    `seed`). `batch`: images per forward pass.

    Example::

        import mechscope as ms
        from mechscope.vision import ImageSpec
        from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist
        model = ms.load("zoo:fmnist-cnn")
        spec = ImageSpec(channels=1, height=28, width=28)
        images = as_input(fashion_mnist("test")[0][:200])
        first = equivariance(model, "relu1", spec, images)
        second = equivariance(model, "relu2", spec, images, previous=first)
        second.weights.families, second.params_determined, second.null_families
    """
    if not 0 < threshold <= 1:
        raise VisionInputError(f"threshold must be in (0, 1], got {threshold}")
    if not 0 <= min_coverage <= 1:
        raise VisionInputError(f"min_coverage must be in [0, 1], got {min_coverage}")
    if not 0 <= margin <= 2:
        raise VisionInputError(f"margin must be in [0, 2], got {margin}")
    module = _module(model)
    feat = feature_layer(model, layer, spec)
    square = feat.height == feat.width and spec.height == spec.width
    names = list(transforms) if transforms is not None else _default_transforms(spec, square)
    gs = [Transform.parse(n) for n in names]
    for g in gs:
        if g.turn % 4 and not square:
            raise VisionInputError(f"{g.name} needs square images and feature maps; {layer!r} is "
                                   f"{feat.height} x {feat.width} on {spec.height} x {spec.width} images")
        if g.perm is not None and len(g.perm) != spec.channels:
            raise VisionInputError(f"{g.name} permutes {len(g.perm)} colour channels; the images have {spec.channels}")
        if _is_identity(g):
            raise VisionInputError("the identity relates every channel to itself; leave it out of transforms")
    names = [g.name for g in gs]
    conv_path = _find_conv(module, layer, conv)
    cmod = dict(module.named_modules())[conv_path] if conv_path is not None else None
    if cmod is not None and cmod.groups != 1:
        raise VisionInputError(f"{conv_path!r} is a grouped convolution (groups={cmod.groups}); the weight "
                               "comparison reads ordinary convolutions (groups=1) only: pass conv= another layer")
    if cmod is not None and cmod.kernel_size[0] != cmod.kernel_size[1] and any(g.turn % 4 for g in gs):
        raise VisionInputError(f"turns other than 180 degrees need square kernels; {conv_path!r} has "
                               f"{tuple(cmod.kernel_size)}")
    if images is not None and (images.dim() != 4 or tuple(images.shape[1:]) != spec.shape):
        raise VisionInputError(f"images must be (n, {', '.join(map(str, spec.shape))}) for this spec, "
                               f"got {tuple(images.shape)}")

    reads_image = cmod is not None and _reads_image(module, conv_path, spec)
    prev_sym = None
    if previous is not None:
        prev_sym = previous.responses or previous.weights
        if cmod is not None and prev_sym is not None and prev_sym.scores.shape[1] != cmod.in_channels:
            raise VisionInputError(f"previous was measured at {previous.layer!r} ({prev_sym.scores.shape[1]} "
                                   f"channels) but {conv_path!r} reads {cmod.in_channels}")
        missing = [n for n in names if n not in previous.transforms]
        if missing:
            raise VisionInputError(f"previous has no channel map for {', '.join(missing)}; measure it with "
                                   "the same transforms")
    if cmod is not None and not reads_image and prev_sym is None and any(g.colour for g in gs):
        raise VisionInputError(f"{conv_path!r} does not read the image: colour transformations of its input "
                               "channels need previous= (this analysis at the layer it reads)")
    input_map = "image" if reads_image else ("previous" if prev_sym is not None else "in place")

    null = null and cmod is not None
    steps = (images is not None) + (cmod is not None)
    bar = progress_bar(total=steps * (2 if null else 1), desc=f"equivariance {layer}", unit="analysis",
                       disable=not progress)

    def analyse(net: nn.Module, weight: Tensor | None) -> tuple[Symmetry | None, Symmetry | None, int]:
        resp = wsym = None
        if images is not None:
            sc = response_scores(net, feature_layer(net, layer, spec), spec, images, [Transform(), *gs], batch)
            fam, inv = _families(sc[1:], sc[0], names, threshold, margin, [True] * len(gs))
            resp = Symmetry("responses", tuple(names), sc[1:], torch.ones(len(gs)), sc[0], threshold, margin,
                            min_coverage, fam, inv)
            bar.update(1)
        params = 0
        if cmod is not None:
            sc, cov = weight_scores(cmod, [Transform(), *gs], reads_image, prev_sym, weight)
            usable = (cov[1:] >= min_coverage).tolist()
            fam, inv = _families(sc[1:], sc[0], names, threshold, margin, usable)
            wsym = Symmetry("weights", tuple(names), sc[1:], cov[1:], sc[0], threshold, margin, min_coverage, fam,
                            inv)
            params = _determined(wsym, cmod, reads_image, prev_sym)
            bar.update(1)
        return resp, wsym, params

    with bar:
        resp, wsym, params = analyse(module, None)
        null_resp = null_w = None
        null_params = 0
        if null:
            gen = torch.Generator().manual_seed(seed)
            flat = cmod.weight.detach().reshape(-1)
            shuffled = flat[torch.randperm(flat.numel(), generator=gen).to(flat.device)].reshape(cmod.weight.shape)
            twin = copy.deepcopy(module) if images is not None else module
            if images is not None:
                with torch.no_grad():
                    dict(twin.named_modules())[conv_path].weight.copy_(shuffled)
            null_resp, null_w, null_params = analyse(twin, shuffled)
    total = int(cmod.weight.numel()) if cmod is not None else 0
    return EquivarianceResult(layer, conv_path, tuple(names), threshold, margin, seed, input_map, resp, wsym, params,
                              total, null_resp, null_w, null_params)


def _reads_image(module: nn.Module, conv_path: str, spec: ImageSpec) -> bool:
    """Whether `conv_path` is the first Conv2d in module order and takes the image's channels."""
    first = next(p for p, m in module.named_modules() if p and isinstance(m, nn.Conv2d))
    return first == conv_path and dict(module.named_modules())[conv_path].in_channels == spec.channels


def _determined(sym: Symmetry, conv: nn.Conv2d, reads_image: bool, previous: Symmetry | None) -> int:
    """(members - 1) x the weight entries compared for each, summed over the weight families."""
    per_input = conv.kernel_size[0] * conv.kernel_size[1]
    total = 0
    for fam in sym.families:
        for t in fam.links[1:]:  # each member but the first is predicted from its parent by its link's g
            sigma, _ = _input_map(Transform.parse(t), conv, reads_image, previous)
            total += sum(b >= 0 for b in sigma) * per_input
    return total
