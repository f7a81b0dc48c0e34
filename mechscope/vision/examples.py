"""Dataset examples: the images of a dataset that drive a channel most (or least), and where.

For each image the channel's value is its maximum over positions (its minimum for the bottom
examples), or its value at one given position. The images are ranked by that value (ties keep
dataset order) and the top k, the bottom k, or one image per quantile are kept, with the position
that gave the value and a crop of the image around it.

The crop is the position's *structural receptive field*: the input pixels that some path of the
network connects to that position, found as the nonzero gradient of the position in a linearised copy
of the network whose parameters are all positive (so nothing cancels; see `_linear`). It works for
any network (strides, pooling, dilation, skip connections) without reading kernel sizes, and
contains every pixel whose gradient is nonzero in the real network for any input. Boxes are clipped to
the image; crops are padded to a common size with mid-grey on the clipped side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.progress import progress_bar
from ._linear import model_device, receptive_boxes
from ._store import Saved
from .layers import ImageSpec, VisionInputError, channel_activations, check_channel, feature_layer

WHICH = ("top", "bottom", "quantiles")


@dataclass(frozen=True)
class DatasetExamples(Saved):
    """A channel's dataset examples, best first (top), worst first (bottom) or by rising quantile.

    Tensors: `indices` (k,) positions in the dataset; `values` (k,) the channel's value; `positions`
    (k, 2) (row, column) in the layer's feature map; `images` (k, C, H, W); `boxes` (k, 4) the receptive
    field (top, left, bottom, right) in pixels, bottom/right exclusive; `crops` (k, C, h, w);
    `quantiles` (k,) each example's rank among the `n_images` as a fraction in [0, 1] (0 = lowest).

    Example::

        ex = dataset_examples(model, spec, "relu2", 5, images, k=9)
        ex.values[0], ex.crops.shape            # the best value; (9, 1, h, w)
        ex.save("out/relu2-5"); DatasetExamples.load("out/relu2-5")
    """

    layer: str
    channel: int
    spec: ImageSpec
    which: str
    position: tuple[int, int] | None
    n_images: int
    indices: Tensor
    values: Tensor
    positions: Tensor
    images: Tensor
    boxes: Tensor
    crops: Tensor
    quantiles: Tensor


def _check_images(images: Tensor, spec: ImageSpec) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != spec.shape:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise VisionInputError(f"the dataset must be a tensor of images (n, {', '.join(map(str, spec.shape))}) "
                               f"matching the ImageSpec, got {got}")
    if not images.is_floating_point():
        raise VisionInputError(f"the dataset's images must be float in the spec's pixel range [{spec.low}, "
                               f"{spec.high}], got {images.dtype} (scale them first, e.g. images.float() / 255)")
    if len(images) == 0:
        raise VisionInputError("the dataset is empty")


def channel_values(model: Any, spec: ImageSpec, layer: str, channel: int, images: Tensor, *,
                   reduce: str = "max", position: tuple[int, int] | None = None, batch_size: int = 256,
                   progress: bool = True) -> tuple[Tensor, Tensor]:
    """Each image's value of the channel, (n,), and the (row, column) it came from, (n, 2): the max (or
    min) over positions, or the value at `position`.

    Example::

        values, where = channel_values(model, spec, "conv1", 3, images)   # (n,), (n, 2)
    """
    _check_images(images, spec)
    fl = feature_layer(model, layer, spec)
    check_channel(fl, channel)
    if reduce not in ("max", "min"):
        raise VisionInputError(f"reduce must be 'max' or 'min', got {reduce!r}")
    if position is not None:
        y, x = position
        if not (0 <= y < fl.height and 0 <= x < fl.width):
            raise VisionInputError(f"position {position} is outside {layer!r}'s {fl.height} x {fl.width} map")
    dev = model_device(model)
    values, where = [], []
    with torch.no_grad(), progress_bar(total=len(images), desc=f"examples {layer}:{channel}", unit="image",
                                       disable=not progress) as bar:
        for s in range(0, len(images), batch_size):
            acts = channel_activations(model, images[s:s + batch_size].to(dev), fl, channel).float().cpu()
            if position is not None:
                values.append(acts[:, position[0], position[1]])
                where.append(torch.tensor(position).expand(len(acts), 2))
            else:
                flat = acts.flatten(1)
                v, i = flat.max(dim=1) if reduce == "max" else flat.min(dim=1)
                values.append(v)
                where.append(torch.stack([i // fl.width, i % fl.width], dim=1))
            bar.update(len(acts))
    return torch.cat(values), torch.cat(where).long()


def _crops(images: Tensor, boxes: Tensor, size: tuple[int, int], spec: ImageSpec) -> Tensor:
    """Crops (k, C, h, w) of images (k, C, H, W) to boxes (k, 4), padded with mid-grey on the clipped side;
    (h, w) is the largest of `size` and the boxes' sizes."""
    h = max(size[0], int((boxes[:, 2] - boxes[:, 0]).max()))
    w = max(size[1], int((boxes[:, 3] - boxes[:, 1]).max()))
    out = torch.full((len(images), spec.channels, h, w), (spec.low + spec.high) / 2, dtype=images.dtype)
    for s, (t, left, b, r) in enumerate(boxes.tolist()):
        dy = h - (b - t) if t == 0 else 0  # clipped at the top: pad above
        dx = w - (r - left) if left == 0 else 0
        out[s, :, dy:dy + b - t, dx:dx + r - left] = images[s, :, t:b, left:r]
    return out


def dataset_examples(model: Any, spec: ImageSpec, layer: str, channel: int, images: Tensor, *, k: int = 9,
                     which: str = "top", position: tuple[int, int] | None = None, batch_size: int = 256,
                     progress: bool = True) -> DatasetExamples:
    """The k images (n, C, H, W) -> (k, C, H, W) of the dataset that drive `layer`'s `channel` most
    ("top", max over positions), least ("bottom", min over positions) or one per evenly spaced quantile
    ("quantiles", max over positions), with values, positions and receptive-field crops.

    Example::

        from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist
        images = as_input(fashion_mnist("test")[0])                 # (10000, 1, 28, 28)
        top = dataset_examples(model, spec, "relu2", 5, images, k=9)
        low = dataset_examples(model, spec, "conv2", 5, images, which="bottom")
    """
    if which not in WHICH:
        raise VisionInputError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise VisionInputError(f"k must be a positive whole number, got {k!r}")
    reduce = "min" if which == "bottom" else "max"
    values, where = channel_values(model, spec, layer, channel, images, reduce=reduce, position=position,
                                   batch_size=batch_size, progress=progress)
    n = len(values)
    k = min(k, n)
    ascending = torch.sort(values, stable=True).indices  # rank 0 = lowest
    rank = torch.empty(n, dtype=torch.long)
    rank[ascending] = torch.arange(n)
    if which == "top":
        pick = torch.sort(values, descending=True, stable=True).indices[:k]
    elif which == "bottom":
        pick = ascending[:k]
    else:
        pick = ascending[torch.linspace(0, n - 1, k).round().long()]
    positions = where[pick]
    chosen = images[pick].detach().cpu()
    fl = feature_layer(model, layer, spec)
    centre = torch.tensor([[fl.height // 2, fl.width // 2]])  # its box is the unclipped size, as far as can be
    boxes = receptive_boxes(model, spec, layer, torch.cat([positions, centre]))
    size = (int(boxes[-1, 2] - boxes[-1, 0]), int(boxes[-1, 3] - boxes[-1, 1]))
    boxes = boxes[:-1]
    return DatasetExamples(layer=layer, channel=channel, spec=spec, which=which,
                           position=None if position is None else (int(position[0]), int(position[1])),
                           n_images=n, indices=pick, values=values[pick], positions=positions, images=chosen,
                           boxes=boxes, crops=_crops(chosen, boxes, size, spec),
                           quantiles=rank[pick].double() / max(1, n - 1))
