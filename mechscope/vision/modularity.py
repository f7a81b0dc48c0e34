"""Modularity: do a network's units split into clusters that talk mostly among themselves?

The method of Filan et al. 2021 ("Clusterability in neural networks"): turn the network into a graph,
split the graph by spectral clustering into `k` clusters, and measure how cleanly it splits by the
*normalised cut* of the partition,

    n-cut = sum over clusters C of  cut(C, rest) / vol(C),

where cut(C, rest) is the total weight of the edges leaving C and vol(C) the total degree of C's nodes
(0 for a partition with no edge between clusters, up to k when every edge leaves its cluster). A low
n-cut alone says little (it depends on the graph's size and degrees), so the same is done on networks
whose weights are *shuffled*: each named layer's weight entries permuted at random, which keeps every
layer's weight distribution and destroys any structure. The p-value is
(1 + #{shuffled n-cut <= ours}) / (1 + n_shuffles) and the z-score (ours - mean) / std of the shuffles.

Two graphs, both over the units of the layers the user names (Conv2d and Linear modules, in forward
order, e.g. ``["conv1", "conv2", "fc1", "fc2"]``):

- the **weight graph**: nodes are the first layer's inputs and every layer's outputs (channels of a
  convolution, features of a linear layer); the edge between input unit a and output unit b of a layer is
  the L1 (or L2) norm of the weights from a to b (a convolution's whole kernel). A linear layer after a
  convolution reads its flattened feature map (channel-major, as nn.Flatten of (C, H, W)): its inputs are
  grouped by channel, so its edges go to the convolution's channels.
- the **co-activation graph**: nodes are the units of the named layers' outputs (or of `act_layers`,
  e.g. the ReLUs); the edge between two units is the absolute correlation, over the images of `data`, of
  their activations (a channel's activation on an image is its mean over positions). Its shuffled
  baseline runs the same images through the shuffled networks.

Shapes: weight-graph nodes n = inputs of the first layer + outputs of every layer; affinity (n, n);
labels (n,); shuffled n-cuts (n_shuffles,).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.progress import progress_bar
from ..core.run import run
from ..core.site import Site
from ..models import wrap
from ._store import load_result, save_result
from .layers import ImageSpec, VisionInputError, evaluating

NORMS = ("l1", "l2")


@dataclass(frozen=True)
class GraphClustering:
    """One graph split into clusters, with its shuffled-network baseline.

    `affinity` (n, n) symmetric, zero diagonal; `labels` (n,) the cluster of each node (0 to k-1, or -1
    for a node with no edges);
    `ncut` the partition's normalised cut; `shuffled` (n_shuffles,) the n-cuts of the shuffled networks'
    graphs clustered the same way; `p_value` and `z_score` compare `ncut` with them (low = modular).

    Example::

        g = modularity(model, ["conv1", "conv2", "fc1", "fc2"]).weights
        g.ncut, float(g.shuffled.mean()), g.p_value
    """

    affinity: Tensor
    labels: Tensor
    ncut: float
    shuffled: Tensor
    p_value: float
    z_score: float

    def clusters(self) -> list[list[int]]:
        """The nodes of each cluster (indices into the graph's nodes), cluster by cluster."""
        return [torch.nonzero(self.labels == c).flatten().tolist() for c in range(int(self.labels.max()) + 1)]


@dataclass(frozen=True)
class ModularityResult:
    """The weight graph's and (when data was given) the co-activation graph's clustering of a network.

    `nodes` names the weight graph's nodes, ("LAYER", unit) in order ("LAYER:in" for the first layer's
    inputs); `act_nodes` those of the co-activation graph. Settings: the layer paths, `k`, `norm`,
    `n_shuffles`, `seed`.

    Example::

        res = modularity(model, ["conv1", "conv2", "fc1", "fc2"], images, k=4, n_shuffles=50)
        print(res.weights.ncut, res.weights.p_value, res.coactivation.p_value)
        res.save("out/modularity"); ModularityResult.load("out/modularity")
    """

    layers: tuple[str, ...]
    act_layers: tuple[str, ...]
    k: int
    norm: str
    n_shuffles: int
    seed: int
    nodes: tuple[tuple[str, int], ...]
    act_nodes: tuple[tuple[str, int], ...]
    weights: GraphClustering
    coactivation: GraphClustering | None

    def save(self, path: str | Path) -> Path:
        """Write the result into directory `path` (safetensors + JSON); `ModularityResult.load` reads it."""
        tensors: dict[str, Tensor] = {}
        fields: dict[str, Any] = {"layers": list(self.layers), "act_layers": list(self.act_layers), "k": self.k,
                                  "norm": self.norm, "n_shuffles": self.n_shuffles, "seed": self.seed,
                                  "nodes": [list(n) for n in self.nodes],
                                  "act_nodes": [list(n) for n in self.act_nodes]}
        for name in ("weights", "coactivation"):
            g = getattr(self, name)
            if g is None:
                continue
            for t in ("affinity", "labels", "shuffled"):
                tensors[f"{name}.{t}"] = getattr(g, t)
            fields[name] = {"ncut": g.ncut, "p_value": g.p_value, "z_score": g.z_score}
        return save_result(path, "modularity", tensors, fields)

    @classmethod
    def load(cls, path: str | Path) -> ModularityResult:
        """The result `save` wrote into directory `path`."""
        tensors, f = load_result(path, "modularity")
        graphs = {name: GraphClustering(tensors[f"{name}.affinity"], tensors[f"{name}.labels"], **f[name],
                                        shuffled=tensors[f"{name}.shuffled"]) if name in f else None
                  for name in ("weights", "coactivation")}
        return cls(tuple(f["layers"]), tuple(f["act_layers"]), f["k"], f["norm"], f["n_shuffles"], f["seed"],
                   tuple((p, u) for p, u in f["nodes"]), tuple((p, u) for p, u in f["act_nodes"]),
                   graphs["weights"], graphs["coactivation"])


def _module(model: Any) -> nn.Module:
    module = getattr(wrap(model), "module", None)
    if not isinstance(module, nn.Module):
        raise VisionInputError("modularity reads the weights of a plain nn.Module network (ms.wrap(module))")
    return module


def weight_layers(model: Any, layers: Sequence[str]) -> list[nn.Module]:
    """The Conv2d / Linear submodules at `layers`; an error naming the supported ones otherwise.

    Example::

        weight_layers(FashionCNN(), ["conv1", "conv2", "fc1", "fc2"])   # [Conv2d(1, 32, ...), ...]
    """
    module = _module(model)
    mods = dict(module.named_modules())
    usable = [p for p, m in mods.items() if p and isinstance(m, (nn.Conv2d, nn.Linear))]
    if len(layers) < 1:
        raise VisionInputError(f"name at least one layer; this network's Conv2d/Linear layers: {', '.join(usable)}")
    out = []
    for path in layers:
        m = mods.get(path)
        if m is None or not path:
            raise VisionInputError(f"{path!r} is not a submodule of the network; its Conv2d/Linear layers: "
                                   f"{', '.join(usable) or '(none)'}")
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise VisionInputError(f"{path!r} is a {type(m).__name__}; the weight graph reads Conv2d and Linear "
                                   f"layers only: {', '.join(usable) or '(none)'}")
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise VisionInputError(f"{path!r} is a grouped convolution (groups={m.groups}); the weight graph "
                                   "reads ordinary convolutions (groups=1) only")
        out.append(m)
    return out


def _edges(w: Tensor, norm: str) -> Tensor:
    """|w| aggregated to (out units, in units): a kernel's L1 or L2 norm, a linear weight's |w|."""
    flat = w.detach().float().cpu().reshape(w.shape[0], w.shape[1], -1)
    return flat.abs().sum(-1) if norm == "l1" else flat.pow(2).sum(-1).sqrt()


def _blocks(mods: Sequence[nn.Module], weights: Sequence[Tensor], paths: Sequence[str], norm: str) -> list[Tensor]:
    """The edge matrix (out units, in units) of each layer, in-units being the previous layer's outputs."""
    blocks = []
    for i, (m, w) in enumerate(zip(mods, weights)):
        if i > 0 and isinstance(m, nn.Linear) and isinstance(mods[i - 1], nn.Conv2d):
            c = mods[i - 1].out_channels
            if w.shape[1] % c:
                raise VisionInputError(f"{paths[i]!r} reads {w.shape[1]} features, not a flattened feature map of "
                                       f"{paths[i - 1]!r}'s {c} channels")
            w = w.reshape(w.shape[0], c, w.shape[1] // c)  # channel-major flatten of (C, H, W)
        blocks.append(_edges(w, norm))
        if i > 0 and blocks[-1].shape[1] != blocks[-2].shape[0]:
            raise VisionInputError(f"{paths[i]!r} reads {blocks[-1].shape[1]} units but {paths[i - 1]!r} gives "
                                   f"{blocks[-2].shape[0]}: name the layers in forward order, each reading the "
                                   "previous one's output")
    return blocks


def _affinity(blocks: Sequence[Tensor]) -> Tensor:
    sizes = [blocks[0].shape[1]] + [b.shape[0] for b in blocks]
    starts = np.cumsum([0] + sizes)
    a = torch.zeros(int(starts[-1]), int(starts[-1]))
    for i, b in enumerate(blocks):
        a[starts[i + 1]:starts[i + 2], starts[i]:starts[i + 1]] = b
    return a + a.T


def normalised_cut(affinity: Tensor, labels: Tensor) -> float:
    """Sum over clusters of cut(C, rest) / vol(C) for an affinity (n, n) and labels (n,); a cluster with no
    edges at all adds 0.

    Example::

        normalised_cut(torch.tensor([[0., 1.], [1., 0.]]), torch.tensor([0, 1]))   # 2.0
    """
    a = affinity.double()
    deg = a.sum(1)
    total = 0.0
    for c in labels[labels >= 0].unique():
        inside = labels == c
        vol = float(deg[inside].sum())
        if vol > 0:
            total += float(a[inside][:, ~inside].sum()) / vol
    return total


def spectral_clusters(affinity: Tensor, k: int, seed: int) -> Tensor:
    """Labels (n,) of spectral clustering of an affinity (n, n) into k clusters (scikit-learn's
    SpectralClustering on the precomputed affinity, labels assigned by k-means seeded with `seed`).
    A node with no edges (a dead unit, a zero weight row) belongs to no cluster: label -1.

    Example::

        spectral_clusters(affinity, k=2, seed=0)   # tensor([0, 0, 1, 1, ...])
    """
    from sklearn.cluster import SpectralClustering

    live = affinity.sum(1) > 0
    n = int(live.sum())
    if not 2 <= k < n:
        raise VisionInputError(f"k must be between 2 and the number of connected nodes - 1 ({n - 1}), got {k}")
    with warnings.catch_warnings():  # a graph in several pieces (the modular case) is expected, not a problem
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed, n_init=10)
        got = model.fit_predict(affinity[live][:, live].double().numpy())
    labels = torch.full((affinity.shape[0],), -1, dtype=torch.long)
    labels[live] = torch.as_tensor(got, dtype=torch.long)
    return labels


def _shuffle(w: Tensor, gen: torch.Generator) -> Tensor:
    """`w` with its entries permuted at random (same shape, same multiset of values)."""
    flat = w.detach().reshape(-1)
    return flat[torch.randperm(flat.numel(), generator=gen).to(flat.device)].reshape(w.shape)


def _compare(ours: float, shuffled: list[float]) -> tuple[float, float]:
    s = np.asarray(shuffled, dtype=np.float64)
    p = (1 + int((s <= ours).sum())) / (1 + len(s))
    sd = float(s.std(ddof=1)) if len(s) > 1 else 0.0
    z = (ours - float(s.mean())) / sd if sd > 0 else (0.0 if ours == float(s.mean()) else -math.inf
                                                      if ours < float(s.mean()) else math.inf)
    return p, z


def _activations(module: nn.Module, data: Tensor, paths: Sequence[str], batch: int) -> Tensor:
    """Units' activations (n_samples, n_units) at `paths`, read in eval mode: a feature map's channel means
    over positions."""
    adapter = wrap(module)
    sites = [Site.module(p) for p in paths]
    chunks = []
    for s in range(0, data.shape[0], batch):
        with evaluating(module):
            cache = run(adapter, data[s:s + batch], capture=sites).cache
        cols = []
        for site, path in zip(sites, paths):
            a = cache[site]
            if a.dim() == 4:
                a = a.mean(dim=(2, 3))
            elif a.dim() != 2:
                raise VisionInputError(f"{path!r} gives activations of shape {tuple(a.shape)}; co-activation reads "
                                       "(batch, units) or feature maps (batch, channels, height, width)")
            cols.append(a.float().cpu())
        chunks.append(torch.cat(cols, 1))
    return torch.cat(chunks, 0)


def coactivation_affinity(acts: Tensor) -> Tensor:
    """|correlation| (units, units) of activations (samples, units) over samples, zero diagonal; a unit that
    never varies has no edges.

    Example::

        coactivation_affinity(torch.randn(100, 5)).shape   # (5, 5)
    """
    x = acts.double() - acts.double().mean(0)
    sd = x.pow(2).sum(0).sqrt()
    live = sd > 1e-12 * max(1.0, float(sd.max()) if sd.numel() else 1.0)
    x = torch.where(live, x / sd.clamp_min(1e-300), torch.zeros_like(x))
    c = (x.T @ x).abs()
    c.fill_diagonal_(0.0)
    return c.float()


def modularity(model: Any, layers: Sequence[str], data: Tensor | None = None, *, k: int = 4, norm: str = "l1",
               n_shuffles: int = 50, seed: int = 0, act_layers: Sequence[str] | None = None, batch: int = 256,
               spec: ImageSpec | None = None, progress: bool = True) -> ModularityResult:
    """Spectral clustering of the network's weight graph (and, given `data`, its co-activation graph) into
    `k` clusters, each n-cut compared with `n_shuffles` networks whose named layers' weights are shuffled.

    `layers`: Conv2d / Linear submodule paths in forward order, each reading the previous one's output.
    `data`: inputs (n, ...) the network takes (images (n, C, H, W) for a vision network), for the
    co-activation graph over the outputs of `act_layers` (default: `layers`). `norm`: "l1" or "l2", how a
    kernel's weights add up to one edge. `spec`: when given, `data` must be images of that format. The
    network itself is not changed.

    Example::

        import mechscope as ms
        from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist
        model = ms.load("zoo:fmnist-cnn")
        images = as_input(fashion_mnist("test")[0][:500])
        res = modularity(model, ["conv1", "conv2", "fc1", "fc2"], images,
                         act_layers=["relu1", "relu2", "relu3", "fc2"])
        res.weights.ncut, res.weights.shuffled.mean(), res.weights.p_value
    """
    if norm not in NORMS:
        raise VisionInputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if n_shuffles < 1:
        raise VisionInputError(f"n_shuffles must be at least 1, got {n_shuffles}")
    if data is not None and spec is not None and (data.dim() != 4 or tuple(data.shape[1:]) != spec.shape):
        raise VisionInputError(f"data must be images (n, {', '.join(map(str, spec.shape))}) for this spec, "
                               f"got {tuple(data.shape)}")
    layers = tuple(layers)
    mods = weight_layers(model, layers)
    weights = [m.weight.detach() for m in mods]
    blocks = _blocks(mods, weights, layers, norm)
    nodes = tuple([(f"{layers[0]}:in", u) for u in range(blocks[0].shape[1])]
                  + [(p, u) for p, b in zip(layers, blocks) for u in range(b.shape[0])])
    affinity = _affinity(blocks)
    labels = spectral_clusters(affinity, k, seed)
    ncut = normalised_cut(affinity, labels)

    module = _module(model)
    act_layers = tuple(act_layers) if act_layers is not None else layers
    acts_aff = act_nodes = None
    if data is not None:
        known = dict(module.named_modules())
        for p in act_layers:
            if p not in known or not p:
                raise VisionInputError(f"{p!r} is not a submodule of the network (act_layers)")
        acts = _activations(module, data, act_layers, batch)
        acts_aff = coactivation_affinity(acts)
        act_labels = spectral_clusters(acts_aff, k, seed)
        act_ncut = normalised_cut(acts_aff, act_labels)
        sizes = [int(b) for b in _unit_counts(module, data[:1], act_layers)]
        act_nodes = tuple((p, u) for p, n in zip(act_layers, sizes) for u in range(n))
        twin = copy.deepcopy(module)
        twin_mods = weight_layers(twin, layers)

    shuffled, act_shuffled = [], []
    gen = torch.Generator().manual_seed(seed)
    for _ in progress_bar(range(n_shuffles), desc="modularity shuffles", unit="network", disable=not progress):
        ws = [_shuffle(w, gen) for w in weights]
        aff = _affinity(_blocks(mods, ws, layers, norm))
        shuffled.append(normalised_cut(aff, spectral_clusters(aff, k, seed)))
        if data is not None:
            with torch.no_grad():
                for m, w in zip(twin_mods, ws):
                    m.weight.copy_(w)
            a = coactivation_affinity(_activations(twin, data, act_layers, batch))
            act_shuffled.append(normalised_cut(a, spectral_clusters(a, k, seed)))

    p, z = _compare(ncut, shuffled)
    graph = GraphClustering(affinity, labels, ncut, torch.tensor(shuffled, dtype=torch.float64), p, z)
    co = None
    if data is not None:
        p2, z2 = _compare(act_ncut, act_shuffled)
        co = GraphClustering(acts_aff, act_labels, act_ncut, torch.tensor(act_shuffled, dtype=torch.float64), p2, z2)
    return ModularityResult(layers, act_layers if data is not None else (), k, norm, n_shuffles, seed, nodes,
                            act_nodes or (), graph, co)


def _unit_counts(module: nn.Module, probe: Tensor, paths: Sequence[str]) -> list[int]:
    return [a.shape[1] for a in (_activations(module, probe, [p], 1) for p in paths)]
