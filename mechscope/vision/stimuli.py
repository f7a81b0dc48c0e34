"""Synthetic stimuli for tuning curves: oriented edges, curves (arcs of circles) and lines, gratings.

Every stimulus is drawn with torch arithmetic in an `ImageSpec` (its size, channel count and pixel
range), anti-aliased by pixel coverage: a pixel at signed distance d (in pixels) from a boundary is
covered by clamp(0.5 + d, 0, 1) of it, and a stroke of width w by clamp(w / 2 + 0.5 - d, 0, 1) where d
is the distance to the stroke's centre line.

Geometry (angles in degrees, counter-clockwise, 0 = pointing right; x to the right, y upwards; the
stimulus centre is the pixel (H // 2, W // 2) moved by `shifts` (rows, columns)):
- edge at angle a: the bright side is where the image points in direction a (the edge's normal);
  a and a + 180 are the two contrast polarities of one orientation;
- curve at angle a, radius r: an arc of length `length` of a circle of radius r that passes through the
  centre and bulges towards a (its tangent there is perpendicular to a); r = inf is the straight
  segment of the same length and orientation, so curves and lines are compared like for like;
- grating at angle a, frequency f (cycles per pixel), phase p: 0.5 + 0.5 cos(2 pi f (x cos a + y sin a) + p)
  of the pixel range; a is the direction in which it varies.

Strokes and bright sides take `colour` (a fraction of the range per channel, white by default) on
black; `contrast=-1` draws the inverse. Each function takes sequences of parameters and draws every
combination (the first parameter varies slowest); `noise` adds seeded Gaussian pixel noise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._store import Saved
from .layers import ImageSpec, VisionInputError


@dataclass(frozen=True)
class Stimuli(Saved):
    """A batch of synthetic stimuli: `images` (n, C, H, W) in the spec's range and `params`, one (n,)
    float64 tensor per parameter (e.g. "angle", "radius", "shift_row", "shift_col", "contrast").

    Example::

        s = edges(ImageSpec(1, 28, 28), angles=range(0, 360, 15))
        s.images.shape, s.params["angle"][:3]      # (24, 1, 28, 28), [0., 15., 30.]
    """

    kind: str
    spec: ImageSpec
    images: Tensor
    params: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.images)


def _grid(**axes: Sequence[float]) -> dict[str, Tensor]:
    """Every combination of the axes' values (the first slowest), as (n,) float64 tensors."""
    for name, values in axes.items():
        if len(list(values)) == 0:
            raise VisionInputError(f"{name} is empty: give at least one value")
    rows = list(itertools.product(*[[float(v) for v in values] for values in axes.values()]))
    cols = torch.tensor(rows, dtype=torch.float64).T
    return {name: cols[i] for i, name in enumerate(axes)}


def _coords(spec: ImageSpec, p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """x (to the right) and y (upwards) of every pixel relative to each stimulus' centre: (n, H, W) each."""
    rows = torch.arange(spec.height, dtype=torch.float64).view(1, -1, 1)
    cols = torch.arange(spec.width, dtype=torch.float64).view(1, 1, -1)
    x = cols - (spec.width // 2 + p["shift_col"].view(-1, 1, 1))
    y = (spec.height // 2 + p["shift_row"].view(-1, 1, 1)) - rows
    return x.expand(-1, spec.height, -1), y.expand(-1, -1, spec.width)


def _paint(spec: ImageSpec, cover: Tensor, contrast: Tensor, colour: Sequence[float] | None, noise: float,
           seed: int) -> Tensor:
    """Images (n, C, H, W) from coverage (n, H, W) in [0, 1]: colour on black (inverted where contrast < 0)."""
    col = _colour(spec, colour)
    cover = torch.where(contrast.view(-1, 1, 1) < 0, 1 - cover, cover)
    frac = cover.unsqueeze(1) * col.view(1, -1, 1, 1)
    return _finish(spec, frac, noise, seed)


def _colour(spec: ImageSpec, colour: Sequence[float] | None) -> Tensor:
    """The colour (C,) as fractions of the pixel range, white by default."""
    col = torch.tensor([1.0] * spec.channels if colour is None else list(colour), dtype=torch.float64)
    if col.shape != (spec.channels,) or bool(((col < 0) | (col > 1)).any()):
        raise VisionInputError(f"colour must give {spec.channels} fractions in [0, 1] (one per channel), got "
                               f"{colour!r}")
    return col


def _finish(spec: ImageSpec, frac: Tensor, noise: float, seed: int) -> Tensor:
    """Fractions of the range (n, C, H, W) -> float32 pixels in [low, high], with seeded noise."""
    if noise < 0:
        raise VisionInputError(f"noise must be >= 0, got {noise}")
    if noise > 0:
        gen = torch.Generator().manual_seed(seed)
        frac = frac + noise * torch.randn(frac.shape, generator=gen, dtype=torch.float64)
    return (spec.low + (spec.high - spec.low) * frac.clamp(0, 1)).float()


def _shifts(shifts: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    pairs = [(float(a), float(b)) for a, b in shifts]
    if not pairs:
        raise VisionInputError("shifts is empty: give at least one (rows, columns) pair, e.g. [(0, 0)]")
    return [a for a, _ in pairs], [b for _, b in pairs]


def _with_shifts(axes: dict[str, Sequence[float]], shifts: Sequence[tuple[float, float]]) -> dict[str, Tensor]:
    """The grid of `axes` times the list of (row, column) shifts (kept as pairs, not crossed)."""
    rows, cols = _shifts(shifts)
    p = _grid(**axes, shift=range(len(rows)))
    i = p.pop("shift").long()
    p["shift_row"] = torch.tensor(rows, dtype=torch.float64)[i]
    p["shift_col"] = torch.tensor(cols, dtype=torch.float64)[i]
    return p


def edges(spec: ImageSpec, angles: Sequence[float], *, offsets: Sequence[float] = (0.0,),
          shifts: Sequence[tuple[float, float]] = ((0.0, 0.0),), contrasts: Sequence[float] = (1.0,),
          colour: Sequence[float] | None = None, noise: float = 0.0, seed: int = 0) -> Stimuli:
    """Oriented edges (n, C, H, W): bright towards `angles` (degrees), the boundary `offsets` pixels from
    the centre along that direction; every combination of angle, offset, shift and contrast.

    Example::

        s = edges(spec, angles=range(0, 360, 15), offsets=(-1, 0, 1))     # 72 images
    """
    p = _with_shifts({"angle": angles, "offset": offsets, "contrast": contrasts}, shifts)
    x, y = _coords(spec, p)
    a = torch.deg2rad(p["angle"]).view(-1, 1, 1)
    d = x * torch.cos(a) + y * torch.sin(a) - p["offset"].view(-1, 1, 1)
    return Stimuli("edge", spec, _paint(spec, (0.5 + d).clamp(0, 1), p["contrast"], colour, noise, seed), p)


def _arc_distance(x: Tensor, y: Tensor, angle: Tensor, radius: Tensor, length: Tensor) -> Tensor:
    """Distance (n, H, W) of each pixel to an arc through the origin bulging towards `angle` (radians), of
    radius `radius` (inf: a straight segment) and arc length `length`; parameters are (n, 1, 1)."""
    ux, uy = torch.cos(angle), torch.sin(angle)
    # straight segment along the tangent (-uy, ux)
    s = (x * -uy + y * ux).clamp(-length / 2, length / 2)
    line = torch.hypot(x + s * uy, y - s * ux)
    r = torch.where(torch.isinf(radius), torch.ones_like(radius), radius)
    half = (length / (2 * r)).clamp(max=math.pi)
    px, py = x + r * ux, y + r * uy  # relative to the circle's centre
    rho = torch.hypot(px, py)
    along = torch.atan2(px * uy - py * ux, px * ux + py * uy).abs()  # angle from the bulge direction
    ends = []
    for sign in (1.0, -1.0):
        ex, ey = r * torch.cos(angle + sign * half), r * torch.sin(angle + sign * half)
        ends.append(torch.hypot(px - ex, py - ey))
    arc = torch.where(along <= half, (rho - r).abs(), torch.minimum(*ends))
    return torch.where(torch.isinf(radius), line, arc)


def curves(spec: ImageSpec, angles: Sequence[float], radii: Sequence[float], *, width: float = 1.5,
           length: float = 10.0, shifts: Sequence[tuple[float, float]] = ((0.0, 0.0),),
           contrasts: Sequence[float] = (1.0,), colour: Sequence[float] | None = None, noise: float = 0.0,
           seed: int = 0) -> Stimuli:
    """Curves (n, C, H, W): arcs of `length` pixels and stroke `width` through the centre, bulging towards
    `angles` (degrees), of each radius in `radii` (float("inf") = the straight segment).

    Example::

        s = curves(spec, angles=range(0, 360, 30), radii=(3, 5, 8, float("inf")))   # 48 images
    """
    if width <= 0 or length <= 0 or any(float(r) <= 0 for r in radii):
        raise VisionInputError(f"width, length and radii must be positive, got width={width}, length={length}, "
                               f"radii={list(radii)}")
    p = _with_shifts({"angle": angles, "radius": radii, "contrast": contrasts}, shifts)
    x, y = _coords(spec, p)
    n = len(p["angle"])
    d = _arc_distance(x, y, torch.deg2rad(p["angle"]).view(-1, 1, 1), p["radius"].view(-1, 1, 1),
                      torch.full((n, 1, 1), float(length), dtype=torch.float64))
    cover = (width / 2 + 0.5 - d).clamp(0, 1)
    return Stimuli("curve", spec, _paint(spec, cover, p["contrast"], colour, noise, seed),
                   {**p, "width": torch.full((n,), float(width), dtype=torch.float64),
                    "length": torch.full((n,), float(length), dtype=torch.float64)})


def lines(spec: ImageSpec, angles: Sequence[float], *, width: float = 1.5, length: float = 10.0,
          shifts: Sequence[tuple[float, float]] = ((0.0, 0.0),), contrasts: Sequence[float] = (1.0,),
          colour: Sequence[float] | None = None, noise: float = 0.0, seed: int = 0) -> Stimuli:
    """Straight segments (n, C, H, W) through the centre, perpendicular to `angles` (degrees): the curves of
    infinite radius (so a line and a curve of the same angle share their tangent at the centre).

    Example::

        s = lines(spec, angles=range(0, 180, 15))
    """
    s = curves(spec, angles, [float("inf")], width=width, length=length, shifts=shifts, contrasts=contrasts,
               colour=colour, noise=noise, seed=seed)
    return Stimuli("line", spec, s.images, s.params)


def gratings(spec: ImageSpec, angles: Sequence[float], frequencies: Sequence[float], *,
             phases: Sequence[float] = (0.0, 90.0, 180.0, 270.0), contrast: float = 1.0,
             colour: Sequence[float] | None = None, noise: float = 0.0, seed: int = 0) -> Stimuli:
    """Sinusoidal gratings (n, C, H, W) varying towards `angles` (degrees) at `frequencies` (cycles per
    pixel, at most 0.5) and `phases` (degrees), around mid-grey with amplitude `contrast` (at most 1).

    Example::

        s = gratings(spec, angles=range(0, 180, 15), frequencies=(0.05, 0.1, 0.2))
    """
    if any(not 0 <= float(f) <= 0.5 for f in frequencies):
        raise VisionInputError(f"frequencies are cycles per pixel in [0, 0.5] (the Nyquist limit), got "
                               f"{list(frequencies)}")
    if not 0 <= contrast <= 1:
        raise VisionInputError(f"contrast must be in [0, 1], got {contrast}")
    p = _with_shifts({"angle": angles, "frequency": frequencies, "phase": phases}, ((0.0, 0.0),))
    x, y = _coords(spec, p)
    a = torch.deg2rad(p["angle"]).view(-1, 1, 1)
    wave = torch.cos(2 * math.pi * p["frequency"].view(-1, 1, 1) * (x * torch.cos(a) + y * torch.sin(a))
                     + torch.deg2rad(p["phase"]).view(-1, 1, 1))
    col = _colour(spec, colour)
    frac = 0.5 + 0.5 * contrast * wave.unsqueeze(1) * col.view(1, -1, 1, 1)
    n = len(p["angle"])
    return Stimuli("grating", spec, _finish(spec, frac, noise, seed),
                   {**p, "contrast": torch.full((n,), float(contrast), dtype=torch.float64)})
