"""Which layers of a network are feature maps, and reading their channels.

A *feature layer* is any submodule whose output on an image batch is a 4-D feature map
(batch, channel, height, width): a convolution, the ReLU or pooling after it, a residual block.
Which submodules qualify is found by one probe forward pass on a blank batch of the network's
image format (`ImageSpec`), so nothing depends on module types or names: a torchvision-style ResNet,
the zoo's `fmnist-cnn` and a user's own network are treated alike.

Shapes: images (batch, channels, height, width) in the spec's pixel range; activations of a layer
(batch, C, H', W'); one channel's activations (batch, H', W').
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import MechscopeError
from ..core.run import model_device, run
from ..core.site import Site
from ..models import wrap


class VisionInputError(MechscopeError, ValueError):
    """A layer that is not a feature map, a channel out of range, or images the network cannot take
    (the message names the valid choices).

    Example::

        from mechscope.vision import VisionInputError, check_channel
        try:
            check_channel(layer, 999)
        except VisionInputError as err:
            print(err)                           # names the valid channels
    """


@dataclass(frozen=True)
class ImageSpec:
    """The images a network takes: (channels, height, width) and the pixel range it was trained on.

    Example::

        ImageSpec(channels=1, height=28, width=28)             # Fashion-MNIST in [0, 1]
        ImageSpec(channels=3, height=32, width=32, low=-1.0)   # colour images in [-1, 1]
    """

    channels: int
    height: int
    width: int
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width) < 1:
            raise VisionInputError(f"an image needs at least 1 channel and 1 x 1 pixels, got {self.shape}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise VisionInputError(f"the pixel range must be finite, e.g. [0, 1] or [-1, 1], got "
                                   f"[{self.low}, {self.high}]")
        if not self.high > self.low:
            raise VisionInputError(f"the pixel range must have high > low, got [{self.low}, {self.high}]")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return (self.channels, self.height, self.width)

    def blank(self, batch: int = 1, device: torch.device | str | None = None) -> Tensor:
        """A mid-grey batch (batch, channels, height, width) in the pixel range."""
        return torch.full((batch, *self.shape), (self.low + self.high) / 2, device=device)


@dataclass(frozen=True)
class FeatureLayer:
    """A submodule whose output is a feature map: its path, site and (channels, height, width).

    Example::

        from mechscope.vision import ImageSpec, feature_layers
        layers = feature_layers(ms.load("zoo:fmnist-cnn"), ImageSpec(channels=1, height=28, width=28))
        layers[0].path, layers[0].channels, layers[0].site   # (channels, height, width) of its output too
    """

    path: str
    channels: int
    height: int
    width: int
    module: nn.Module

    @property
    def site(self) -> Site:
        """The generic adapter's site of the submodule's output."""
        return Site.module(self.path)


def network(model: Any) -> nn.Module:
    """The nn.Module behind an adapter or a plain module; an error for a model that is not one."""
    adapter = wrap(model)
    module = getattr(adapter, "module", None)
    if not isinstance(module, nn.Module):
        raise VisionInputError(f"{getattr(adapter, 'name', type(model).__name__)} is not a plain nn.Module "
                               "network; the vision tools read feature maps through the generic adapter "
                               "(ms.wrap(module))")
    return module


def call_counts(module: nn.Module, images: Tensor, paths: Any) -> dict[str, int]:
    """How many times each submodule at `paths` runs in one forward pass of `images` (a probe pass, no
    gradients): a submodule called several times (a ResNet block's shared ReLU) is read at its last call."""
    mods = dict(module.named_modules())
    counts = dict.fromkeys(paths, 0)

    def count(path: str):
        def hook(_m, _i, _o):
            counts[path] += 1
        return hook
    hooks = [mods[p].register_forward_hook(count(p)) for p in counts]
    try:
        with torch.no_grad():
            module(images)
    finally:
        for h in hooks:
            h.remove()
    return counts


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode for the block, each submodule's own mode restored after it (a frozen batch-norm
    inside a training network stays frozen): reading a network must not move batch-norm statistics, use the
    stimulus batch's statistics, or draw dropout masks.

    Example::

        with evaluating(net):
            out = net(images)        # net.training is False here, and back as it was after
    """
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.train(training)


def _probe(model: Any, spec: ImageSpec) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """The wrapped model and the output shape (without batch) of every submodule on a blank batch."""
    adapter = wrap(model)
    module = network(adapter)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for path, sub in module.named_modules():
        if not path:
            continue

        def hook(_m, _inp, out, path=path):
            if isinstance(out, Tensor):
                shapes.setdefault(path, tuple(out.shape[1:]))
        hooks.append(sub.register_forward_hook(hook))
    try:
        with evaluating(module), torch.no_grad():  # the probe must not move batch-norm statistics
            module(spec.blank(2, model_device(adapter)))
    except Exception as e:  # the network's own error says why; we say what was tried
        raise VisionInputError(f"{adapter.name} cannot take images of shape {spec.shape} "
                               f"(channels, height, width): {type(e).__name__}: {e}. Give the ImageSpec "
                               "of the images it was trained on") from e
    finally:
        for h in hooks:
            h.remove()
    return adapter, shapes


def feature_layers(model: Any, spec: ImageSpec) -> list[FeatureLayer]:
    """Every submodule whose output on images of `spec` is a feature map, in `named_modules` order.

    Example::

        from mechscope.vision import ImageSpec, feature_layers
        for layer in feature_layers(ms.load("zoo:fmnist-cnn"), ImageSpec(channels=1, height=28, width=28)):
            print(layer.path, layer.channels, layer.height, layer.width)
    """
    adapter, shapes = _probe(model, spec)
    mods = dict(adapter.module.named_modules())
    return [FeatureLayer(p, s[0], s[1], s[2], mods[p]) for p, s in shapes.items() if len(s) == 3]


def feature_layer(model: Any, path: str, spec: ImageSpec) -> FeatureLayer:
    """The feature layer at submodule `path`; an error naming the valid layers when it is not one.

    Example::

        from mechscope.vision import ImageSpec, feature_layer
        layer = feature_layer(ms.load("zoo:fmnist-cnn"), "relu1", ImageSpec(channels=1, height=28, width=28))
    """
    adapter, shapes = _probe(model, spec)
    layers = [p for p, s in shapes.items() if len(s) == 3]
    if path not in shapes:
        known = dict(adapter.module.named_modules())
        what = "is not a submodule" if path not in known else "did not run on these images"
        raise VisionInputError(f"{path!r} {what} of {adapter.name}; its feature-map layers are: "
                               f"{', '.join(layers) or '(none)'}")
    shape = shapes[path]
    if len(shape) != 3:
        raise VisionInputError(f"{path!r} of {adapter.name} gives (batch, {', '.join(map(str, shape))}), not a "
                               f"feature map (batch, channel, height, width); its feature-map layers are: "
                               f"{', '.join(layers) or '(none)'}")
    return FeatureLayer(path, shape[0], shape[1], shape[2], dict(adapter.module.named_modules())[path])


def check_channel(layer: FeatureLayer, channel: int) -> int:
    """`channel` when it is one of the layer's channels, else an error naming the range.

    Example::

        from mechscope.vision import check_channel
        check_channel(layer, 3)                  # 3, or an error naming 0..channels-1
    """
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < layer.channels:
        raise VisionInputError(f"channel {channel!r} is out of range for {layer.path!r}, which has "
                               f"{layer.channels} channels (0 to {layer.channels - 1})")
    return channel


def parse_target(text: str) -> tuple[str, int | None]:
    """"LAYER" or "LAYER:CHANNEL" (the command line's form) -> (layer path, channel or None).

    Example::

        from mechscope.vision import parse_target
        parse_target("conv2:12")                 # ("conv2", 12)
        parse_target("conv2")                    # ("conv2", None)
    """
    path, colon, rest = text.strip().rpartition(":")
    if not colon:
        path, rest = rest, ""
    if not path:
        raise VisionInputError(f"expected LAYER or LAYER:CHANNEL, got {text!r}")
    if not colon:
        return path, None
    try:
        return path, int(rest)
    except ValueError:
        raise VisionInputError(f"the channel in {text!r} must be a whole number (LAYER:CHANNEL)") from None


def channel_activations(model: Any, images: Tensor, layer: FeatureLayer, channel: int | None = None) -> Tensor:
    """The layer's activations (batch, C, H, W) on `images`, or one channel's (batch, H, W), read in eval mode
    (each submodule's mode is restored after).

    Gradients flow when `images` requires them (for optimisation); otherwise call it under no_grad.

    Example::

        from mechscope.vision import ImageSpec, channel_activations, feature_layer
        model = ms.load("zoo:fmnist-cnn")
        layer = feature_layer(model, "relu1", ImageSpec(channels=1, height=28, width=28))
        channel_activations(model, images, layer)              # images (batch, 1, 28, 28) -> (batch, C, H, W)
        channel_activations(model, images, layer, channel=3)   # (batch, H, W)
    """
    adapter = wrap(model)
    if images.dim() != 4:
        raise VisionInputError(f"images must be (batch, channels, height, width), got shape {tuple(images.shape)}")
    module = getattr(adapter, "module", None)
    with evaluating(module) if isinstance(module, nn.Module) else nullcontext():
        acts = run(adapter, images, capture=[layer.site], track_grad=images.requires_grad).cache[layer.site]
    if channel is None:
        return acts
    return acts[:, check_channel(layer, channel)]
