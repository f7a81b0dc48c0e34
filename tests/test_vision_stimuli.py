"""Synthetic stimuli are where their geometry says, anti-aliased, in the spec's range, and seeded."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope.vision import ImageSpec, VisionInputError
from mechscope.vision.stimuli import Stimuli, curves, edges, gratings, lines

SPEC = ImageSpec(1, 21, 21)


def _xy(spec: ImageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = torch.meshgrid(torch.arange(spec.height), torch.arange(spec.width), indexing="ij")
    return (cols - spec.width // 2).double(), (spec.height // 2 - rows).double()


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 200.0])
def test_edges_are_bright_on_the_side_they_point_to(angle):
    img = edges(SPEC, [angle]).images[0, 0].double()
    x, y = _xy(SPEC)
    d = x * math.cos(math.radians(angle)) + y * math.sin(math.radians(angle))
    assert bool((img[d >= 0.5] == 1).all()) and bool((img[d <= -0.5] == 0).all())
    between = (d.abs() < 0.5)
    torch.testing.assert_close(img[between], 0.5 + d[between], rtol=0, atol=1e-6)  # coverage of the bright side
    flipped = edges(SPEC, [angle + 180.0], contrasts=[-1.0]).images
    torch.testing.assert_close(flipped[0, 0], img.float(), rtol=0, atol=1e-6)


def test_edge_offsets_and_shifts_move_the_boundary():
    base = edges(SPEC, [0.0]).images[0, 0]
    moved = edges(SPEC, [0.0], offsets=[3.0]).images[0, 0]
    shifted = edges(SPEC, [0.0], shifts=[(0.0, 3.0)]).images[0, 0]
    assert torch.equal(moved[:, 3:], base[:, :-3]) and torch.equal(shifted, moved)


def _arc_points(angle: float, radius: float, length: float, n: int = 4000) -> torch.Tensor:
    a = math.radians(angle)
    cx, cy = -radius * math.cos(a), -radius * math.sin(a)
    half = length / (2 * radius)
    t = torch.linspace(a - half, a + half, n, dtype=torch.float64)
    return torch.stack([cx + radius * torch.cos(t), cy + radius * torch.sin(t)], dim=1)


@pytest.mark.parametrize("angle, radius", [(0.0, 3.0), (60.0, 5.0), (225.0, 8.0)])
def test_curves_cover_exactly_the_pixels_near_the_arc(angle, radius):
    width, length = 1.5, 9.0
    img = curves(SPEC, [angle], [radius], width=width, length=length).images[0, 0].double()
    x, y = _xy(SPEC)
    pts = _arc_points(angle, radius, length)
    dist = torch.cdist(torch.stack([x.flatten(), y.flatten()], 1), pts).min(dim=1).values.view(SPEC.height, SPEC.width)
    torch.testing.assert_close(img, (width / 2 + 0.5 - dist).clamp(0, 1), rtol=0, atol=2e-3)  # sampled arc
    assert float(img[SPEC.height // 2, SPEC.width // 2]) == 1.0  # every arc passes through the centre


def test_lines_are_curves_of_infinite_radius_and_the_limit_of_large_ones():
    s = lines(SPEC, [30.0, 120.0], length=8.0)
    assert s.kind == "line" and torch.equal(s.images, curves(SPEC, [30.0, 120.0], [math.inf], length=8.0).images)
    big = curves(SPEC, [30.0, 120.0], [1e5], length=8.0).images
    torch.testing.assert_close(big, s.images, rtol=0, atol=1e-3)
    assert torch.equal(lines(SPEC, [30.0]).images, lines(SPEC, [210.0]).images)


def test_gratings_have_their_period_and_phase():
    f = 0.1
    g = gratings(ImageSpec(1, 8, 40), [0.0], [f], phases=[0.0, 180.0])
    a, b = g.images[0, 0], g.images[1, 0]
    torch.testing.assert_close(a[:, :30], a[:, 10:], rtol=0, atol=1e-6)  # one period is 10 pixels
    torch.testing.assert_close(a + b, torch.ones_like(a), rtol=0, atol=1e-6)  # half a cycle apart
    assert float(a[0, 20]) == pytest.approx(1.0)  # the centre column is a crest at phase 0
    vertical = gratings(ImageSpec(1, 40, 8), [90.0], [f], phases=[0.0]).images[0, 0]
    torch.testing.assert_close(vertical[:30], vertical[10:], rtol=0, atol=1e-6)
    assert bool((vertical == vertical[:, :1]).all())  # varies along rows only


def test_range_colour_noise_and_grid_order():
    spec = ImageSpec(3, 11, 11, low=-1.0, high=2.0)
    s = curves(spec, [0.0, 90.0], [3.0, 5.0], colour=(1.0, 0.5, 0.0))
    assert s.images.shape == (4, 3, 11, 11) and s.params["angle"].tolist() == [0.0, 0.0, 90.0, 90.0]
    assert s.params["radius"].tolist() == [3.0, 5.0, 3.0, 5.0]
    assert float(s.images.min()) == -1.0 and float(s.images.max()) == 2.0
    frac = (s.images + 1) / 3
    torch.testing.assert_close(frac[:, 1], frac[:, 0] * 0.5)
    assert bool((frac[:, 2] == 0).all()) and float(frac[:, 0].max()) == 1.0
    n1 = edges(SPEC, [0.0, 45.0], noise=0.1, seed=3).images
    assert torch.equal(n1, edges(SPEC, [0.0, 45.0], noise=0.1, seed=3).images)
    assert not torch.equal(n1, edges(SPEC, [0.0, 45.0], noise=0.1, seed=4).images)
    assert float(n1.min()) >= 0 and float(n1.max()) <= 1


def test_round_trip_is_exact(tmp_path):
    s = curves(SPEC, [0.0, 45.0], [2.0, math.inf], shifts=[(0.0, 0.0), (1.0, -1.0)])
    back = Stimuli.load(s.save(tmp_path / "s"))
    assert back.kind == "curve" and back.spec == SPEC and torch.equal(back.images, s.images)
    assert list(back.params) == list(s.params) and all(torch.equal(back.params[k], s.params[k]) for k in s.params)


@pytest.mark.parametrize("call, words", [
    (lambda: gratings(SPEC, [0.0], [0.7]), ["Nyquist"]),
    (lambda: curves(SPEC, [0.0], [0.0]), ["positive"]),
    (lambda: edges(SPEC, []), ["angle is empty"]),
    (lambda: edges(SPEC, [0.0], colour=(1.0, 1.0)), ["1 fractions"]),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(VisionInputError) as err:
        call()
    for w in words:
        assert w in str(err.value)
