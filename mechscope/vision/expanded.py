"""Weight visualisation: first-layer filters, expanded weights between channels, a channel's circuit.

Expanded weights (Olah et al., "Visualizing Weights", Distill 2020): the linear map from channel i of
a feature layer A to channel j of a later feature layer B when the network's nonlinearities between
them are replaced by their linear counterparts (ReLU-like activations by the identity, max-pooling by
average pooling; batch-norm in eval mode keeps its scale, and every shift and bias drops out). It is
computed without reading module names or kernel sizes: the gradient of B's channel j at one position
(the centre of its map by default) with respect to A's whole output, in a linearised copy of the
network (`_linear`), cropped to the position's structural receptive field in A. The result is one
(kh, kw) map per pair (i, j). Skip connections need nothing special: a residual block's identity path
adds its delta to the map, a path that bypasses A adds nothing. For two convolutions with only a ReLU
between them the expanded weight is the second convolution's kernel itself.

First-layer filters are the expanded weights from the image to the first layer with its own 4-D
weight (the kernel, with the spec's input channels), rescaled for display so that zero is mid-grey.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._linear import check_linear, linearised, position_gradients, support_boxes
from ._store import Saved
from .layers import ImageSpec, VisionInputError, check_channel, feature_layer, feature_layers, network

CHUNK = 64  # target channels per backward pass (each is one image of the batch)


@dataclass(frozen=True)
class ExpandedWeights(Saved):
    """Expanded weights from `source` (a layer path, or "" for the image) to channels of `target`.

    `weights` (m, C_source, kh, kw): for target channel `channels[j]` at `position` (row, column) of its
    map, the map from each source channel over `box` (top, left, bottom, right; exclusive) of the
    source's map.

    Example::

        ew = expanded_weights(model, spec, "relu1", "conv2")
        ew.weights.shape                     # (64, 32, 6, 6): through a 2x2 pool and a 3x3 conv
        ew.of(5, 3)                          # target channel 5 from source channel 3: (kh, kw)
    """

    source: str
    target: str
    spec: ImageSpec
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    channels: Tensor
    weights: Tensor

    def of(self, target_channel: int, source_channel: int) -> Tensor:
        """The (kh, kw) map from `source_channel` to `target_channel`."""
        where = (self.channels == target_channel).nonzero().flatten()
        if len(where) == 0:
            raise VisionInputError(f"target channel {target_channel} is not among the computed ones "
                                   f"{self.channels.tolist()}")
        return self.weights[int(where[0]), source_channel]


@dataclass(frozen=True)
class ChannelCircuit(Saved):
    """A channel's top input channels in an earlier layer, ranked by the norm of their expanded weights.

    `inputs` (k,) source channels, strongest first; `norms` (k,) their Frobenius norms; `maps` (k, kh, kw)
    their expanded weights; `all_norms` (C_source,) every source channel's norm.

    Example::

        c = channel_circuit(model, spec, "relu1", "conv2", 5, k=4)
        c.inputs, c.norms, c.maps.shape       # (4,), (4,), (4, 6, 6)
    """

    source: str
    target: str
    channel: int
    spec: ImageSpec
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    inputs: Tensor
    norms: Tensor
    maps: Tensor
    all_norms: Tensor


@dataclass(frozen=True)
class FirstLayerFilters(Saved):
    """The first layer's filters: `weights` (C_out, C_in, kh, kw) as the layer applies them to the image, and
    `images` (C_out, C_in, kh, kw) in [0, 1] for display (0.5 + w / (2 max|w|) per filter: zero is grey).

    Example::

        f = first_layer_filters(model, spec)
        f.layer, f.images.shape               # 'conv1', (32, 1, 3, 3)
    """

    layer: str
    spec: ImageSpec
    weights: Tensor
    images: Tensor


def _centre(model: Any, spec: ImageSpec, target: str, position: tuple[int, int] | None) -> tuple[int, int]:
    fl = feature_layer(model, target, spec)
    if position is None:
        return (fl.height // 2, fl.width // 2)
    y, x = position
    if not (0 <= y < fl.height and 0 <= x < fl.width):
        raise VisionInputError(f"position {position} is outside {target!r}'s {fl.height} x {fl.width} map")
    return (int(y), int(x))


def expanded_weights(model: Any, spec: ImageSpec, source: str, target: str, channels: list[int] | None = None,
                     position: tuple[int, int] | None = None) -> ExpandedWeights:
    """Expanded weights (m, C_source, kh, kw) from every channel of layer `source` ("" for the image) to
    `channels` of layer `target` (all by default) at `position` of its map (the centre by default).

    Example::

        ew = expanded_weights(model, spec, "relu1", "conv2", channels=[5])
        ew.weights[0, 3]                      # conv2 channel 5 from relu1 channel 3 over pool1: (6, 6)
        skip = expanded_weights(resnet, spec, "layer1.0", "layer1.1")   # through the identity path too
    """
    fl = feature_layer(model, target, spec)
    if source:
        feature_layer(model, source, spec)  # names the valid layers if it is not one
    chans = list(range(fl.channels)) if channels is None else [check_channel(fl, c) for c in channels]
    pos = _centre(model, spec, target, position)
    net = linearised(model)
    check_linear(net, spec, target)
    ch = torch.tensor(chans, dtype=torch.long)
    where = torch.tensor([pos]).expand(len(chans), 2)
    grads = torch.cat([position_gradients(net, spec, source or None, target, ch[s:s + CHUNK], where[s:s + CHUNK])
                       for s in range(0, len(chans), CHUNK)])  # a batch of images per chunk of targets
    box = support_boxes(position_gradients(linearised(model, ones=True), spec, source or None, target, ch[:1],
                                           where[:1]))[0].tolist()
    if box[2] == box[0]:
        raise VisionInputError(f"{target!r} does not depend on {source or 'the image'!r}")
    t, left, b, r = box
    return ExpandedWeights(source=source, target=target, spec=spec, position=pos, box=(t, left, b, r),
                           channels=ch, weights=grads[:, :, t:b, left:r].float().cpu().contiguous())


def channel_circuit(model: Any, spec: ImageSpec, source: str, target: str, channel: int, k: int = 8,
                    position: tuple[int, int] | None = None) -> ChannelCircuit:
    """`target`'s `channel` and its k strongest input channels in `source`, with their expanded weights
    (k, kh, kw), ranked by Frobenius norm (ties keep channel order).

    Example::

        c = channel_circuit(model, spec, "relu1", "relu2", 5, k=4)
        for i, n, m in zip(c.inputs, c.norms, c.maps): ...
    """
    ew = expanded_weights(model, spec, source, target, [channel], position)
    maps = ew.weights[0]  # (C_source, kh, kw)
    norms = maps.flatten(1).norm(dim=1)
    order = torch.sort(norms, descending=True, stable=True).indices[:max(1, min(k, len(norms)))]
    return ChannelCircuit(source=source, target=target, channel=channel, spec=spec, position=ew.position,
                          box=ew.box, inputs=order, norms=norms[order], maps=maps[order].contiguous(),
                          all_norms=norms)


def first_feature_layer(model: Any, spec: ImageSpec) -> str:
    """The path of the first feature layer (in `named_modules` order) holding its own 4-D weight: the first
    convolution."""
    for fl in feature_layers(model, spec):
        w = dict(fl.module.named_parameters(recurse=False)).get("weight")
        if isinstance(w, nn.Parameter) and w.dim() == 4:
            return fl.path
    raise VisionInputError(f"{type(network(model)).__name__} has no feature layer with its own 4-D weight "
                           "(a convolution); name the first layer explicitly")


def weights_as_images(weights: Tensor) -> Tensor:
    """Weights (n, ..., kh, kw) rescaled per leading index to [0, 1] with zero at 0.5 (n, ..., kh, kw).

    Example::

        weights_as_images(torch.tensor([[[-2.0, 1.0]]]))   # [[[0.0, 0.75]]]
    """
    peak = weights.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (weights.dim() - 1)))
    return (0.5 + weights / (2 * peak)).clamp(0, 1)


def first_layer_filters(model: Any, spec: ImageSpec, layer: str | None = None) -> FirstLayerFilters:
    """The filters (C_out, C_in, kh, kw) of the first convolution (or of `layer`) as applied to the image,
    taken as expanded weights from the image, and as display images.

    Example::

        f = first_layer_filters(model, spec)          # conv1's kernels, (32, 1, 3, 3) for fmnist-cnn
    """
    layer = layer or first_feature_layer(model, spec)
    w = expanded_weights(model, spec, "", layer).weights
    return FirstLayerFilters(layer=layer, spec=spec, weights=w, images=weights_as_images(w))
