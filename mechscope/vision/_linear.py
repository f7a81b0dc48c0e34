"""A network's linear counterpart, and gradients of one position of a layer with respect to an earlier one.

`linearised(module)` is an eval-mode copy of the network with each nonlinearity held in a submodule
replaced by its linear counterpart: ReLU-like activations by the identity, max-pooling by average
pooling over the same window. Batch-norm in eval mode is affine and is kept (a gradient keeps its
scale and drops its shift; so does every bias). What it cannot replace (a `F.relu` called in a
`forward`) is caught by `check_linear`, which tests additivity on seeded random images.

`ones=True` also sets every parameter positive (1, or 1 / fan-in for a weight tensor): the copy then
has no cancellations, so an input pixel has a nonzero gradient exactly when some path of the network
connects it to the output: this gives the *structural receptive field* of a position (a superset of
the pixels with a nonzero gradient in the real network, whatever its weights and input).

`position_gradients` is the one workhorse: d B[s, channel_s, y_s, x_s] / d A for a batch of
(channel, position) targets, where A is a feature layer's output (replaced by a leaf tensor, so only
paths through A count; a skip connection around A adds nothing, one from A to B adds its identity)
or the image itself.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..core.run import model_device as core_model_device
from ..models import wrap
from .layers import ImageSpec, VisionInputError, call_counts, feature_layer, network

_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
              nn.Hardswish, nn.Softplus)
_MAX_POOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
             nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d}


class _Stop(Exception):
    """Raised by the hook on the last layer needed, to skip the rest of the forward pass."""


def _linear_counterpart(sub: nn.Module) -> nn.Module | None:
    if isinstance(sub, _RELU_LIKE):
        return nn.Identity()
    for kind, avg in _MAX_POOLS.items():
        if type(sub) is kind:
            if sub.dilation not in (1, (1,), (1, 1), (1, 1, 1)):
                raise VisionInputError(f"a dilated max-pool ({sub}) has no average-pool counterpart")
            return avg(sub.kernel_size, sub.stride, sub.padding, ceil_mode=sub.ceil_mode, count_include_pad=False)
    for kind, avg in _ADAPTIVE.items():
        if type(sub) is kind:
            return avg(sub.output_size)
    return None


def linearised(model: Any, ones: bool = False) -> nn.Module:
    """An eval-mode copy of the network with its nonlinear submodules replaced by linear ones (and, with
    `ones`, every parameter set positive); the original is untouched."""
    net = copy.deepcopy(network(model)).eval()
    done: dict[int, nn.Module | None] = {}  # a module used in several places gets one counterpart

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if id(child) not in done:
                done[id(child)] = _linear_counterpart(child)
                if done[id(child)] is None:
                    swap(child)
            if done[id(child)] is not None:
                setattr(parent, name, done[id(child)])
    swap(net)
    with torch.no_grad():
        for p in net.parameters():
            p.requires_grad_(False)
            if ones and p.is_floating_point():  # positive, and scaled by fan-in so deep nets cannot overflow
                p.fill_(1.0 / max(1, p[0].numel()) if p.dim() > 1 else 1.0)
    return net


def model_device(model: Any) -> torch.device:
    """The device of the network's parameters (the CPU when it has none)."""
    return core_model_device(wrap(model))


def _forward_to(net: nn.Module, images: Tensor, layer_b: str, layer_a: str | None = None,
                replace_a: Tensor | None = None, counts: dict[str, int] | None = None) -> Tensor:
    """B's output on `images`, stopping the forward pass there; A's output replaced by `replace_a` if given.

    A submodule called several times in one pass (a ResNet block's shared ReLU) is read at its last call,
    as `mechscope.run` and `FeatureReader` read it; only the last call of A is replaced."""
    mods = dict(net.named_modules())
    replacing = layer_a is not None and replace_a is not None
    if counts is None:  # a caller running several passes of one network counts once
        counts = call_counts(net, images, [layer_b] + ([layer_a] if replacing else []))
    if counts[layer_b] == 0:
        raise VisionInputError(f"{layer_b!r} did not run in the forward pass")
    got: dict[str, Tensor] = {}
    seen = {"a": 0, "b": 0}

    def grab(_m, _i, out):
        seen["b"] += 1
        if seen["b"] == counts[layer_b]:
            got["b"] = out
            raise _Stop

    def replace(_m, _i, out):
        seen["a"] += 1
        return replace_a if seen["a"] == counts[layer_a] else out
    hooks = []
    if replacing:  # registered first: when A is B, B's hook sees the replacement
        hooks.append(mods[layer_a].register_forward_hook(replace))
    hooks.append(mods[layer_b].register_forward_hook(grab))
    try:
        net(images)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    if "b" not in got:
        raise VisionInputError(f"{layer_b!r} did not run in the forward pass")
    return got["b"]


def check_linear(net: nn.Module, spec: ImageSpec, layer_b: str, seed: int = 0) -> None:
    """Raise when the linearised copy's output at `layer_b` is not additive in the image (a nonlinearity
    applied outside a submodule, or of a kind with no linear counterpart here)."""
    gen = torch.Generator().manual_seed(seed)
    dev = model_device(net)
    x, y = (torch.randn(2, *spec.shape, generator=gen).to(dev) for _ in range(2))
    zero = torch.zeros_like(x)
    with torch.no_grad():
        counts = call_counts(net, x, [layer_b])
        f = [_forward_to(net, v, layer_b, counts=counts) for v in (x + y, x, y, zero)]
    gap = (f[0] - f[1] - f[2] + f[3]).abs().max()
    scale = max(float(f[1].abs().max()), float(f[2].abs().max()), 1e-12)
    if float(gap) > 1e-4 * scale:
        raise VisionInputError(
            f"the network up to {layer_b!r} stays nonlinear after ReLU-like activations become the identity "
            f"and max-pools become average pools (additivity error {float(gap) / scale:.2g} of the output's "
            "scale): it applies a nonlinearity that is not a submodule (e.g. F.relu in forward) or of another "
            "kind (sigmoid, tanh, layer norm). Hold the activations in nn.ReLU-style submodules")


def position_gradients(net: nn.Module, spec: ImageSpec, layer_a: str | None, layer_b: str, channels: Tensor,
                       positions: Tensor) -> Tensor:
    """Gradients (n, C_a, H_a, W_a) of B[s, channels[s], positions[s, 0], positions[s, 1]] with respect to
    A's output (or the image (n, C, H, W) when `layer_a` is None), for n targets, in one backward pass."""
    n = len(channels)
    dev = model_device(net)
    images = spec.blank(n, dev)
    if layer_a is None:
        leaf = images.clone().requires_grad_(True)
        with torch.enable_grad():
            out = _forward_to(net, leaf, layer_b)
    else:
        a = feature_layer(net, layer_a, spec)
        leaf = torch.zeros(n, a.channels, a.height, a.width, device=dev, requires_grad=True)
        with torch.enable_grad():
            out = _forward_to(net, images, layer_b, layer_a, leaf)
    pick = out[torch.arange(n, device=dev), channels.to(dev), positions[:, 0].to(dev), positions[:, 1].to(dev)]
    if not pick.requires_grad:
        raise VisionInputError(f"{layer_b!r} does not depend on {layer_a or 'the image'!r} (is it earlier in "
                               "the network?)")
    (grad,) = torch.autograd.grad(pick.sum(), leaf, allow_unused=True)
    if grad is None:
        raise VisionInputError(f"{layer_b!r} does not depend on {layer_a!r} (is it earlier in the network?)")
    return grad.detach()


def support_boxes(grads: Tensor) -> Tensor:
    """Bounding boxes (n, 4) as (top, left, bottom, right), bottom/right exclusive, of the nonzero entries of
    gradients (n, C, H, W); a target with no support gets an empty box (0, 0, 0, 0)."""
    mask = grads.ne(0).any(dim=1)  # (n, H, W)
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    boxes = torch.zeros(len(grads), 4, dtype=torch.long)
    for s in range(len(grads)):
        r, c = rows[s].nonzero().flatten(), cols[s].nonzero().flatten()
        if len(r):
            boxes[s] = torch.tensor([int(r[0]), int(c[0]), int(r[-1]) + 1, int(c[-1]) + 1])
    return boxes


def receptive_boxes(model: Any, spec: ImageSpec, layer: str, positions: Tensor, source: str | None = None) -> Tensor:
    """Structural receptive fields (n, 4) (top, left, bottom, right; exclusive) in the image (or in the
    output of layer `source`) of positions (n, 2) (row, column) of `layer`: every pixel that some path of
    the network connects to the position, clipped to the image."""
    net = linearised(model, ones=True)
    channels = torch.zeros(len(positions), dtype=torch.long)
    return support_boxes(position_gradients(net, spec, source, layer, channels, positions))
