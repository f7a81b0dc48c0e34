"""Transformation robustness: random padding, jitter, scaling and rotation of the images being optimised.

Feature visualisation optimises the objective on randomly transformed copies of the image, so that
the image drives the unit robustly and not through one brittle pixel pattern (Lucid's recipe).
Every transform takes images (batch, C, H, W) and a `torch.Generator` and returns transformed images
(batch, C, H', W'), differentiable in the input; one random draw per call is shared by the batch.
Scaling and rotation use `torch.nn.functional.affine_grid` / `grid_sample` (bilinear); the area they
uncover, and padding, take the value `fill` (the optimiser passes the mid-grey of the pixel range).

    from mechscope.vision.transforms import Compose, Jitter, Pad, RandomRotate, RandomScale
    t = Compose([Pad(2), Jitter(2), RandomScale((0.95, 1.0, 1.05)), RandomRotate(range(-10, 11))])
    out = t(images, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import ImageSpec, VisionInputError


def _pick(values: Sequence[float], gen: torch.Generator) -> float:
    return float(values[int(torch.randint(len(values), (), generator=gen))])


class Transform:
    """A random image transform: images (batch, C, H, W), a generator and a fill value -> (batch, C, H', W').

    Example::

        t = Jitter(2)
        out = t(images, torch.Generator().manual_seed(0), fill=0.5)
    """

    def __call__(self, images: Tensor, gen: torch.Generator, fill: float = 0.5) -> Tensor:
        raise NotImplementedError

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"transform": type(self).__name__}


class Pad(Transform):
    """Pad every side by `width` pixels with the constant `value` (`fill`, the range's mid-grey, when None).

    Example::

        Pad(2)(torch.zeros(1, 1, 28, 28), torch.Generator()).shape   # torch.Size([1, 1, 32, 32])
    """

    def __init__(self, width: int, value: float | None = None):
        if width < 0:
            raise VisionInputError(f"padding must be >= 0 pixels, got {width}")
        self.width, self.value = int(width), value

    def __call__(self, images: Tensor, gen: torch.Generator, fill: float = 0.5) -> Tensor:
        value = self.value if self.value is not None else fill
        return F.pad(images, [self.width] * 4, mode="constant", value=value)

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"transform": "Pad", "width": self.width, "value": self.value}


class Jitter(Transform):
    """A random crop `d` pixels smaller in height and width (a shift by 0..d pixels each way).

    Example::

        Jitter(2)(torch.zeros(1, 1, 28, 28), torch.Generator()).shape   # torch.Size([1, 1, 26, 26])
    """

    def __init__(self, d: int):
        if d < 0:
            raise VisionInputError(f"jitter must be >= 0 pixels, got {d}")
        self.d = int(d)

    def __call__(self, images: Tensor, gen: torch.Generator, fill: float = 0.5) -> Tensor:
        if self.d == 0:
            return images
        h, w = images.shape[-2:]
        if self.d >= min(h, w):
            raise VisionInputError(f"jitter of {self.d} pixels leaves nothing of a {h} x {w} image")
        dy, dx = (int(v) for v in torch.randint(self.d + 1, (2,), generator=gen))
        return images[..., dy:dy + h - self.d, dx:dx + w - self.d]

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"transform": "Jitter", "d": self.d}


class _Affine(Transform):
    def _warp(self, images: Tensor, theta: Tensor, fill: float) -> Tensor:
        # theta (2, 3) maps output coordinates to input coordinates in [-1, 1]
        b = images.shape[0]
        grid = F.affine_grid(theta.to(images)[None].expand(b, 2, 3), list(images.shape), align_corners=False)
        return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


class RandomScale(_Affine):
    """Zoom by a factor drawn from `scales` (1.1 enlarges the content), keeping the image size.

    Example::

        RandomScale((0.9, 1.0, 1.1))(torch.rand(2, 3, 32, 32), torch.Generator().manual_seed(0))
    """

    def __init__(self, scales: Iterable[float]):
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise VisionInputError(f"scales must be positive numbers, got {self.scales}")

    def __call__(self, images: Tensor, gen: torch.Generator, fill: float = 0.5) -> Tensor:
        s = _pick(self.scales, gen)
        if s == 1.0:
            return images
        return self._warp(images, torch.tensor([[1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0]]), fill)

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"transform": "RandomScale", "scales": list(self.scales)}


class RandomRotate(_Affine):
    """Rotate by an angle in degrees drawn from `angles` about the image centre, keeping the image size.

    A positive angle turns the image counter-clockwise as displayed (rows down): 90 is `torch.rot90(x, 1, (2, 3))`.

    Example::

        RandomRotate(range(-10, 11))(torch.rand(1, 1, 28, 28), torch.Generator().manual_seed(0))
    """

    def __init__(self, angles: Iterable[float]):
        self.angles = tuple(float(a) for a in angles)
        if not self.angles:
            raise VisionInputError("give at least one rotation angle (degrees)")

    def __call__(self, images: Tensor, gen: torch.Generator, fill: float = 0.5) -> Tensor:
        a = _pick(self.angles, gen)
        if a == 0.0:
            return images
        h, w = images.shape[-2:]
        r = math.radians(a)
        c, s = math.cos(r), math.sin(r)
        # in normalised coordinates a non-square image needs the aspect ratio for a true rotation
        return self._warp(images, torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]]), fill)

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"transform": "RandomRotate", "angles": list(self.angles)}


class Compose(Transform):
    """The transforms applied in order.

    Example::

        t = Compose([Pad(2), Jitter(2)])
        t(torch.zeros(1, 1, 28, 28), torch.Generator()).shape   # torch.Size([1, 1, 30, 30])
    """

    def __init__(self, transforms: Iterable[Transform]):
        self.transforms = tuple(transforms)
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise VisionInputError(f"expected transforms from mechscope.vision.transforms, got {type(t).__name__}")

    def __call__(self, images: Tensor, gen: torch.Generator, fill: float = 0.5) -> Tensor:
        for t in self.transforms:
            images = t(images, gen, fill)
        return images

    def settings(self) -> dict:
        """Its name and parameters (for a result's JSON)."""
        return {"transform": "Compose", "transforms": [t.settings() for t in self.transforms]}


def standard_transforms(spec: ImageSpec) -> Compose:
    """Lucid's standard robustness recipe (pad, jitter, scale, rotate, jitter), with pixel sizes for any image.

    Pad by size/16, jitter by size/14, scale by 0.9 to 1.1 in steps of 0.02, rotate by -10 to 10 degrees
    (no rotation 5 times as likely as each other angle), jitter by size/28 (size = the smaller side;
    each at least 1 pixel). The scales and angles are Lucid's; the pixel sizes are not Lucid's
    proportions: Lucid pads by 12 and jitters by 8, then 4, at 224 pixels (size/18.7, size/28,
    size/56), so both jitters here are twice Lucid's and the padding slightly larger (at 224 pixels:
    Pad(14), Jitter(16), Jitter(8); at 28 pixels Lucid's proportions would give Pad(2), Jitter(1),
    Jitter(1)).

    Example::

        t = standard_transforms(ImageSpec(1, 28, 28))   # Pad(2), Jitter(2), scale, rotate, Jitter(1)
    """
    size = min(spec.height, spec.width)
    return Compose([Pad(max(1, round(size / 16))), Jitter(max(1, round(size / 14))),
                    RandomScale(1 + (i - 5) / 50 for i in range(11)),
                    RandomRotate([*range(-10, 11), *[0] * 5]), Jitter(max(1, round(size / 28)))])

