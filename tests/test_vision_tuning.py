"""Tuning curves of hand-built channels peak where their kernels say; the curve search finds only curves."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mechscope.vision import ImageSpec, VisionInputError
from mechscope.vision.stimuli import curves, edges, gratings, lines
from mechscope.vision.tuning import (JITTER, CurveDetectors, OrientationSummary, TuningCurves, curve_tuning,
                                     edge_tuning, find_curve_detectors, grating_tuning, orientation_summary,
                                     tuning_curves)

SPEC = ImageSpec(1, 28, 28)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    return r.view(1, -1).expand(size, size), -r.view(-1, 1).expand(size, size)  # x right, y up


def edge_kernel(theta: float, size: int = 5, sigma: float = 1.2) -> torch.Tensor:
    """A derivative of a Gaussian along direction theta (degrees): an edge detector bright towards theta."""
    x, y = _grid(size)
    d = x * math.cos(math.radians(theta)) + y * math.sin(math.radians(theta))
    return (d * torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))).float()


def gabor(theta: float, freq: float, size: int = 13, sigma: float = 3.0) -> torch.Tensor:
    x, y = _grid(size)
    d = x * math.cos(math.radians(theta)) + y * math.sin(math.radians(theta))
    return (torch.cos(2 * math.pi * freq * d) * torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))).float()


def arc_kernel(angle: float, radius: float, length: float, size: int = 13) -> torch.Tensor:
    """An arc bulging towards `angle` minus the arc bulging the other way: answers curves, not lines."""
    a = curves(ImageSpec(1, size, size), [angle, angle + 180.0], [radius], length=length).images[:, 0]
    return a[0] - a[1]


def pad(kernel: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, size)
    o = (size - kernel.shape[-1]) // 2
    out[o:o + kernel.shape[-1], o:o + kernel.shape[-1]] = kernel
    return out


class OneConv(nn.Module):
    def __init__(self, kernels: list[torch.Tensor]):
        super().__init__()
        k = kernels[0].shape[-1]
        self.conv = nn.Conv2d(1, len(kernels), k, padding=k // 2)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack(kernels).unsqueeze(1))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.relu(self.conv(x))


def _circular_gap(a: float, b: float, period: float = 360.0) -> float:
    return abs((a - b + period / 2) % period - period / 2)


def test_edge_detectors_peak_at_their_angle():
    thetas = [0.0, 30.0, 135.0, 250.0, 320.0]
    blob = pad(torch.ones(3, 3), 5)  # answers every edge alike
    net = OneConv([edge_kernel(t) for t in thetas] + [blob])
    t = edge_tuning(net, SPEC, "relu", step=15, progress=False)
    s = orientation_summary(t)
    for c, theta in enumerate(thetas):
        assert _circular_gap(float(s.preferred[c]), theta) <= 15 / 2 + 1e-9  # nearest sample to theta
        assert float(s.osi[c]) > 0.8 and float(s.direction_variance[c]) < 0.3
    assert float(s.osi[-1]) < 0.1 and float(s.circular_variance[-1]) > 0.9


def test_gratings_find_orientation_and_frequency():
    net = OneConv([gabor(30.0, 0.1), gabor(120.0, 0.2)])
    t = grating_tuning(net, SPEC, "relu", step=15, frequencies=(0.05, 0.1, 0.2, 0.3), progress=False)
    assert t.axes == ("angle", "frequency") and t.responses.shape == (2, 12, 4)
    assert torch.equal(t.responses[0].amax(dim=0).argmax(), torch.tensor(1))
    assert torch.equal(t.responses[1].amax(dim=0).argmax(), torch.tensor(2))
    s = orientation_summary(t)
    assert s.preferred.tolist() == [30.0, 120.0]
    # a Gabor and its copy turned by 90 degrees (the pixel grid's own symmetry) are equally selective: the
    # orthogonal of 0 is 90 (and -90 = 90 modulo 180), not the peak at 0 again
    s = orientation_summary(grating_tuning(OneConv([gabor(0.0, 0.1), gabor(90.0, 0.1)]), SPEC, "relu", step=15,
                                           frequencies=(0.1,), progress=False))
    assert s.preferred.tolist() == [0.0, 90.0] and float(s.osi[0]) > 0.5
    assert abs(float(s.osi[0]) - float(s.osi[1])) < 1e-6


def test_tuning_curves_equal_a_brute_force_maximum():
    net = OneConv([edge_kernel(10.0), edge_kernel(100.0)])
    s = curves(SPEC, [0.0, 90.0, 180.0], [3.0, math.inf], shifts=[(0.0, 0.0), (1.0, 0.0), (0.0, -1.0)],
               contrasts=[1.0, -1.0])
    t = tuning_curves(net, SPEC, "relu", s, ("angle", "radius"), channels=[1, 0], batch_size=5, progress=False)
    with torch.no_grad():
        r = net(s.images)[:, :, 14, 14]
    for i, a in enumerate([0.0, 90.0, 180.0]):
        for j, rad in enumerate([3.0, math.inf]):
            mask = (s.params["angle"] == a) & (s.params["radius"] == rad)
            assert torch.equal(t.responses[:, i, j], r[mask][:, [1, 0]].amax(dim=0))
    assert torch.equal(t.baseline, torch.zeros(2)) and torch.equal(t.curve(0), t.responses[1])


def test_curve_search_finds_the_curve_channel_and_not_the_edge_or_line():
    line = curves(ImageSpec(1, 13, 13), [150.0], [math.inf], length=12.0).images[0, 0]
    net = OneConv([arc_kernel(60.0, 4.0, 12.0), pad(edge_kernel(60.0), 13), line - line.mean(),
                   arc_kernel(200.0, 4.0, 12.0), arc_kernel(300.0, 4.0, 12.0) * 0.05])
    d = find_curve_detectors(net, SPEC, "relu", length=12.0, progress=False)
    assert d.found.tolist() == [0, 3]
    assert bool(d.selectivity[4] > 0.9) and bool(d.ratio[4] > 1.25) and bool(d.smooth[4])  # a curve shape,
    assert float(d.curve_peak[4]) < 0.1 * float(d.curve_peak.max())  # but too weak to count
    assert d.preferred[0] == 60.0 and _circular_gap(float(d.preferred[3]), 200.0) <= 15 / 2
    assert float(d.ratio[0]) >= 1.25 and float(d.selectivity[0]) > 0.9
    r = (d.tuning.responses - d.tuning.baseline.view(-1, 1, 1)).clamp_min(0)[0, 4]  # channel 0 at 60 degrees
    torch.testing.assert_close(d.radius_ratios[0], (r[:-1] / r[-1]).double())
    assert float(d.radius_ratios[0].max()) == float(d.ratio[0])
    assert float(d.ratio[1]) < 1.1 and float(d.selectivity[1]) < 0.2  # the edge answers both bulges alike
    assert float(d.selectivity[2]) < 0.2
    assert d.field == (13, 13) and bool(d.resolvable[0])
    assert d.largest_gap == 360.0 - (float(d.preferred[3]) - 60.0)  # the two found angles split the circle
    # the criteria are thresholds on the reported figures
    strict = find_curve_detectors(net, SPEC, "relu", length=12.0, margin=float(d.ratio[0]), progress=False)
    assert 0 not in strict.found.tolist()


def test_a_three_by_three_channel_cannot_see_curvature():
    # an off-centre kernel (like some of fmnist-cnn's conv1): a small arc shifted by a pixel puts more ink
    # on its positive corner than a line does, so it passes the first three criteria
    k = torch.tensor([[-0.25, -0.03, 0.48], [-0.62, -1.06, -0.35], [-0.73, -1.11, -0.03]])
    d = find_curve_detectors(OneConv([k]), SPEC, "relu", progress=False)
    assert d.field == (3, 3)
    assert float(d.selectivity[0]) >= 0.5 and float(d.ratio[0]) >= 1.25 and bool(d.smooth[0])
    assert not bool(d.resolvable[0]) and d.found.tolist() == [] and d.largest_gap == 360.0


def test_curve_tuning_has_the_line_as_infinite_radius():
    net = OneConv([edge_kernel(0.0), edge_kernel(45.0)])
    t = curve_tuning(net, SPEC, "relu", radii=(3.0, math.inf), step=30, progress=False)
    ref = tuning_curves(net, SPEC, "relu", lines(SPEC, range(0, 360, 30), length=8.0, shifts=JITTER), ("angle",),
                        progress=False)
    assert t.values["radius"].tolist() == [3.0, math.inf]
    assert torch.equal(t.responses[:, :, 1], ref.responses)
    assert not torch.equal(t.responses[:, :, 0], ref.responses)


def test_round_trips_are_exact(tmp_path):
    net = OneConv([arc_kernel(60.0, 4.0, 12.0), pad(edge_kernel(60.0), 13)])
    d = find_curve_detectors(net, SPEC, "relu", length=12.0, step=30, progress=False)
    back = CurveDetectors.load(d.save(tmp_path / "d"))
    assert back.layer == d.layer and back.margin == d.margin and back.min_selectivity == d.min_selectivity
    for name in ("channels", "preferred", "ratio", "radius_ratios", "selectivity", "smooth", "qualifies", "found"):
        assert torch.equal(getattr(back, name), getattr(d, name))
    assert back.tuning.axes == d.tuning.axes and torch.equal(back.tuning.responses, d.tuning.responses)
    assert all(torch.equal(back.tuning.values[k], v) for k, v in d.tuning.values.items())
    s = orientation_summary(d.tuning)
    sb = OrientationSummary.load(s.save(tmp_path / "s"))
    assert torch.equal(sb.osi, s.osi) and torch.equal(sb.preferred, s.preferred)
    tb = TuningCurves.load(d.tuning.save(tmp_path / "t"))
    assert tb.position == d.tuning.position and tb.spec == SPEC


@pytest.mark.parametrize("call, words", [
    (lambda n: tuning_curves(n, SPEC, "relu", edges(SPEC, [0.0]), ("radius",)), ["'angle', 'contrast'"]),
    (lambda n: tuning_curves(n, SPEC, "relu", edges(ImageSpec(1, 20, 20), [0.0]), ("angle",)), ["drawn for"]),
    (lambda n: edge_tuning(n, SPEC, "relu", step=100), ["step"]),
    (lambda n: edge_tuning(n, SPEC, "relu", channels=[3]), ["1 channels"]),
    (lambda n: orientation_summary(tuning_curves(n, SPEC, "relu", gratings(SPEC, [0.0], [0.1]), ("frequency",),
                                                 progress=False)), ["no angle axis"]),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(VisionInputError) as err:
        call(OneConv([edge_kernel(0.0)]))
    for w in words:
        assert w in str(err.value)


@pytest.mark.slow
def test_on_the_trained_quick_zoo_network():
    import mechscope as ms
    from mechscope.vision.examples import dataset_examples
    from mechscope.vision.expanded import first_layer_filters
    from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist

    ms.zoo.train("fmnist-cnn", quick=True, progress=False)
    model = ms.load("zoo:fmnist-cnn-quick")
    net = ms.wrap(model).module
    assert torch.equal(first_layer_filters(model, SPEC).weights, net.conv1.weight.detach())
    x = as_input(fashion_mnist("test")[0][:1000])
    ex = dataset_examples(model, SPEC, "relu2", 3, x, k=5, progress=False)
    with torch.no_grad():
        best = torch.relu(net.conv2(net.pool1(torch.relu(net.conv1(x)))))[:, 3].flatten(1).amax(dim=1)
    assert torch.equal(ex.indices, torch.sort(best, descending=True, stable=True).indices[:5])
    for layer in ("relu1", "relu2"):
        d = find_curve_detectors(model, SPEC, layer, step=30, progress=False)
        want = ((d.curve_peak > 0) & (d.curve_peak >= 0.1 * d.curve_peak.max()) & (d.selectivity >= 0.5)
                & (d.ratio >= 1.25) & d.smooth & d.resolvable)
        assert torch.equal(d.qualifies, want) and torch.equal(d.found, d.channels[want])
        assert d.field == {"relu1": (3, 3), "relu2": (8, 8)}[layer]
        if layer == "relu1":
            assert not bool(d.resolvable.any())  # no arc bends by a pixel within 3 x 3


def _synthetic(kind: str, angles: list[float], prefs: list[float], direction: bool) -> TuningCurves:
    """Tuning curves (k, n) of cos^2 channels (direction: only the half facing the preferred angle)."""
    a = torch.deg2rad(torch.tensor(angles, dtype=torch.float64)).view(1, -1)
    p = torch.deg2rad(torch.tensor(prefs, dtype=torch.float64)).view(-1, 1)
    c = torch.cos(a - p)
    r = (c.clamp_min(0) if direction else c) ** 2
    return TuningCurves(layer="relu", kind=kind, spec=SPEC, position=(0, 0), axes=("angle",),
                        values={"angle": torch.tensor(angles, dtype=torch.float64)},
                        channels=torch.arange(len(prefs)), responses=r.float(), baseline=torch.zeros(len(prefs)))


@pytest.mark.parametrize("kind, period, direction", [("grating", 180.0, False), ("line", 180.0, False),
                                                     ("edge", 360.0, True), ("curve", 360.0, True)])
def test_orientation_summary_of_cos_squared_channels(kind, period, direction):
    # gratings and lines repeat every 180 degrees, so their orthogonal angle is found modulo 180 (not 360,
    # which would put pref - 90 on the peak itself); edges and curves are directions over 360
    step = 15.0
    angles = [i * step for i in range(int(period / step))]
    prefs = [0.0, 45.0, 90.0, 120.0, 165.0] + ([210.0, 300.0] if period == 360.0 else [])
    s = orientation_summary(_synthetic(kind, angles, prefs, direction))
    assert s.preferred.tolist() == prefs
    torch.testing.assert_close(s.osi, torch.ones(len(prefs), dtype=torch.float64), atol=1e-6, rtol=0)
    # sum cos^2(a - p) e^{2ia} over a full period = n/4 e^{2ip}, sum cos^2 = n/2: circular variance 1/2
    if period == 180.0:
        torch.testing.assert_close(s.circular_variance, torch.full((len(prefs),), 0.5, dtype=torch.float64))
        assert bool(s.direction_variance.isnan().all())  # direction is undefined over 180 degrees
    else:
        assert bool((s.direction_variance < 0.5).all()) and bool(s.circular_variance.isfinite().all())


def test_curve_search_with_repeated_radii_matches_the_search_without():
    # the tuning tensor has one column per distinct radius, whatever the repeats in `radii`
    net = OneConv([arc_kernel(60.0, 4.0, 12.0), arc_kernel(200.0, 6.0, 12.0)])
    once = find_curve_detectors(net, SPEC, "relu", radii=(3.0, 4.0, 6.0), length=12.0, step=30, progress=False)
    twice = find_curve_detectors(net, SPEC, "relu", radii=(3.0, 4.0, 4.0, 6.0), length=12.0, step=30,
                                 progress=False)
    assert once.preferred.tolist() == [60.0, 210.0] and once.best_radius.tolist() == [4.0, 6.0]
    for name in ("preferred", "best_radius", "curve_peak", "line_response", "ratio", "radius_ratios", "selectivity",
                 "qualifies"):
        assert torch.equal(getattr(twice, name), getattr(once, name)), name


def test_curve_search_needs_the_opposite_bulge_among_its_angles():
    # step 40 gives 9 angles over 360: no angle lies 180 degrees from another, so no opposite bulge
    with pytest.raises(VisionInputError) as err:
        find_curve_detectors(OneConv([arc_kernel(60.0, 4.0, 12.0)]), SPEC, "relu", step=40, progress=False)
    assert "step" in str(err.value) and "180" in str(err.value) and "45" in str(err.value)
