"""Equivariance: planted rotation, reflection and colour symmetries are found by responses and by weights
with the right families, transformations and parameter counts; random and shuffled networks show none."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mechscope.vision import ImageSpec, VisionInputError, feature_layer
from mechscope.vision.equivariance import (SPATIAL, EquivarianceResult, Transform, disc, equivariance,
                                           response_scores)
from mechscope.zoo.recipes.fmnist_cnn import FashionCNN

GREY = ImageSpec(1, 16, 16)
COLOUR = ImageSpec(3, 12, 12)

# the spatial transformations written out with plain torch ops, independently of Transform
BY_HAND = {
    "rot90": lambda t: torch.rot90(t, 1, (-2, -1)),
    "rot180": lambda t: torch.rot90(t, 2, (-2, -1)),
    "rot270": lambda t: torch.rot90(t, -1, (-2, -1)),
    "flip_h": lambda t: t.flip(-1),
    "flip_v": lambda t: t.flip(-2),
    "flip_diag": lambda t: t.transpose(-2, -1),
    "flip_antidiag": lambda t: torch.rot90(t, 2, (-2, -1)).transpose(-2, -1),
}


def _noise(spec, n=48, seed=1):
    return torch.rand(n, *spec.shape, generator=torch.Generator().manual_seed(seed))


def test_transforms_act_as_written_and_compose():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    for name, f in BY_HAND.items():
        assert torch.equal(Transform.parse(name).image(x, COLOUR), f(x)), name
        assert Transform.parse(name).name == name
    g = Transform.parse("rot90+perm:2,0,1+invert")
    assert torch.equal(g.image(x, COLOUR), 1.0 - BY_HAND["rot90"](x)[:, [2, 0, 1]])
    names = list(SPATIAL[1:]) + ["perm:1,2,0", "invert", "flip_h+perm:2,1,0"]
    for a in names:
        for b in names:
            ga, gb = Transform.parse(a), Transform.parse(b)
            both = ga.image(gb.image(x, COLOUR), COLOUR)
            assert torch.allclose(ga.compose(gb).image(x, COLOUR), both, atol=1e-6), (a, b)


class Planted(nn.Module):
    """conv1: channels 0-3 = rot90^k of a base filter, 4-5 a filter and its mirror; conv2: 4 channels built
    so that its channel k is rot90^k of channel 0 with conv1's channels moved a -> a + k."""

    def __init__(self, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        base = torch.randn(3, 3, generator=gen)
        mirror = torch.tensor([[-1., 0., 2.], [-1., 0., 2.], [-2., 1., 1.]])  # far from its own reflections
        w20 = torch.randn(6, 3, 3, generator=gen)
        w20[4:] = 0  # the mirror pair has no partner under rotation, so conv2 does not read it
        w2 = torch.zeros(4, 6, 3, 3)
        for k in range(4):
            for a in range(4):
                w2[k, (a + k) % 4] = torch.rot90(w20[a], k)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.stack([torch.rot90(base, k) for k in range(4)]
                                                + [mirror, mirror.flip(-1)])[:, None])
            self.conv1.bias.fill_(0.1)
            self.conv2.weight.copy_(w2)
            self.conv2.bias.fill_(0.05)

    def forward(self, x):
        return self.relu2(self.conv2(self.relu1(self.conv1(x))))


ROT = ("identity", "rot90", "rot180", "rot270")


def test_planted_rotation_and_reflection_are_found_with_their_parameters():
    net, x = Planted(), _noise(GREY)
    first = equivariance(net, "relu1", GREY, x, progress=False)
    assert first.conv == "conv1" and first.input_map == "image"
    for sym in (first.responses, first.weights):
        fams = [(f.members, f.transforms) for f in sym.families]
        assert fams == [((0, 1, 2, 3), ROT), ((4, 5), ("identity", "flip_h"))], sym.kind
        assert min(min(f.strengths) for f in sym.families) > 0.999
    assert first.params_determined == 3 * 9 + 9 and first.params_total == 54  # planted: 3 + 1 copies of 9
    assert first.null_families == 0 and first.null_params_determined == 0
    assert first.responses.channel_map("rot90").tolist() == [1, 2, 3, 0, -1, -1]

    second = equivariance(net, "relu2", GREY, x, previous=first, progress=False)
    assert second.input_map == "previous"
    for sym in (second.responses, second.weights):
        assert [(f.members, f.transforms) for f in sym.families] == [((0, 1, 2, 3), ROT)], sym.kind
    # planted: channels 1-3 are determined by channel 0 on the 4 rotating input channels, 3 x 4 x 9
    assert second.params_determined == 3 * 4 * 9 and second.params_total == 4 * 6 * 9
    assert second.weights.coverage[0].item() == pytest.approx(1.0)  # all of conv2's weights are on them
    assert second.null_families == 0


def test_a_match_on_a_small_part_of_the_weights_forms_no_family():
    """conv2's channels agree under rot90 on the rotating inputs 0-3, but most of their weight is on the
    mirror pair 4-5, which has no partner under rot90: the responses are not related, and the weight
    match covers too little of the weights to count (unless min_coverage allows it)."""
    net, x = Planted(), _noise(GREY)
    with torch.no_grad():
        net.conv2.weight[:, 4:] = 4 * torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(9))
    first = equivariance(net, "relu1", GREY, x, transforms=["rot90"], progress=False)
    second = equivariance(net, "relu2", GREY, x, transforms=["rot90"], previous=first, progress=False)
    assert second.weights.coverage[0].item() < 0.2
    assert second.weights.families == () and second.responses.families == ()
    assert second.weights.scores[0, 0, 1].item() > 0.999  # the compared part does match
    loose = equivariance(net, "relu2", GREY, transforms=["rot90"], previous=first, min_coverage=0.0, progress=False)
    assert [f.members for f in loose.weights.families] == [(0, 1, 2, 3)]


@pytest.mark.parametrize("name", ["rot90", "rot270", "flip_h", "flip_v", "flip_diag", "perm:1,0,2",
                                  "rot90+perm:2,0,1", "invert"])
def test_the_weight_rule_agrees_with_the_responses(name):
    """A channel built by hand as g applied to another one is related to it by g both ways."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(3, 3, 3, generator=gen)
    parts = name.split("+")
    moved = w
    for part in parts:
        if part in BY_HAND:
            moved = BY_HAND[part](moved)
        elif part.startswith("perm:"):
            moved = moved[[int(v) for v in part[5:].split(",")]]  # images x[:, p] need W_j = W_i[p]
        else:
            moved = -moved  # inversion: low + high - x
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=0 if name == "invert" else 1))  # a constant stays constant
    with torch.no_grad():
        net[0].weight.copy_(torch.stack([w, moved]))
        net[0].bias.zero_()
    res = equivariance(net, "0", COLOUR, _noise(COLOUR), transforms=[name], progress=False)
    for sym in (res.responses, res.weights):
        assert sym.scores[0, 0, 1].item() > 0.999, sym.kind
        assert [(f.members, f.transforms) for f in sym.families] == [((0, 1), ("identity", Transform.parse(name).name))]


def _gabor(theta, size=9, sigma=2.0, freq=0.15):
    """An oriented filter drawn at angle theta (counter-clockwise as displayed, rows going down)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    u = x * math.cos(theta) - y * math.sin(theta)
    return (torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2)) * torch.cos(2 * math.pi * freq * u)).float()


def test_45_degree_turns_are_approximate_and_found_by_responses():
    assert Transform.parse("rot45").compose(Transform.parse("rot45")).name == "rot90"
    assert Transform.parse("flip_h+rot45+flip_h").name == "rot315"
    assert not Transform.parse("rot135").exact and Transform.parse("rot180").exact
    spec = ImageSpec(1, 32, 32)
    smooth = torch.nn.functional.interpolate(_noise(ImageSpec(1, 16, 16), 64, seed=0), size=(32, 32),
                                             mode="bilinear", align_corners=False)
    twice = Transform.parse("rot45").image(Transform.parse("rot45").image(smooth, spec), spec)
    inside = disc(32, 32)
    assert torch.corrcoef(torch.stack([twice[..., inside].flatten(),
                                       torch.rot90(smooth, 1, (-2, -1))[..., inside].flatten()]))[0, 1] > 0.98
    # three filters drawn at 0, 45 and -45 degrees: the second is the first turned by 45, the first the third
    net = nn.Sequential(nn.Conv2d(1, 3, 9, padding=4), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.stack([_gabor(0.0), _gabor(math.pi / 4), _gabor(-math.pi / 4)])[:, None])
        net[0].bias.zero_()
    res = equivariance(net, "1", spec, smooth, transforms=["rot45"], progress=False)
    assert [(f.members, f.transforms) for f in res.responses.families] == [((0, 1, 2), ("identity", "rot45", "rot315"))]
    assert res.responses.scores[0, 0, 1] > 0.93 and res.responses.scores[0, 2, 0] > 0.93
    assert res.weights.coverage.tolist() == [0.0] and res.weights.families == ()  # not compared


def test_a_random_network_has_no_families():
    torch.manual_seed(0)
    net = FashionCNN(8, 16, 32).eval()
    spec = ImageSpec(1, 28, 28)
    x = _noise(spec, 32)
    first = equivariance(net, "relu1", spec, x, progress=False)
    second = equivariance(net, "relu2", spec, x, previous=first, progress=False)
    for res in (first, second):
        assert res.responses.families == () and res.weights.families == ()
        assert res.params_determined == 0


def test_response_scores_are_correlations_over_images_and_positions_whatever_the_batch():
    net, x = Planted(), _noise(GREY, 20)
    layer = feature_layer(net, "relu1", GREY)
    g = Transform.parse("rot90")
    got = response_scores(net, layer, GREY, x, [g], batch=6)[0]
    with torch.no_grad():
        a = torch.rot90(net.relu1(net.conv1(x)), 1, (-2, -1)).transpose(0, 1).reshape(6, -1)
        b = net.relu1(net.conv1(torch.rot90(x, 1, (-2, -1)))).transpose(0, 1).reshape(6, -1)
    want = torch.corrcoef(torch.cat([a, b]).double())[:6, 6:].float()
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got, response_scores(net, layer, GREY, x, [g], batch=128)[0], atol=1e-6)
    with torch.no_grad():
        net.conv1.weight[2] = 0  # channel 2 is now the constant relu(bias): no correlation with anything
    assert response_scores(net, layer, GREY, x, [g], batch=6)[0][2].abs().max() == 0


def test_save_load_round_trip_is_exact(tmp_path):
    net, x = Planted(), _noise(GREY, 8)
    first = equivariance(net, "relu1", GREY, x, progress=False)
    back = EquivarianceResult.load(first.save(tmp_path / "eq"))
    for f in ("layer", "conv", "transforms", "threshold", "margin", "seed", "input_map", "params_determined",
              "params_total", "null_params_determined"):
        assert getattr(back, f) == getattr(first, f), f
    for name in ("responses", "weights", "null_responses", "null_weights"):
        a, b = getattr(first, name), getattr(back, name)
        for t in ("scores", "coverage", "plain"):
            assert torch.equal(getattr(a, t), getattr(b, t))
        assert (a.kind, a.transforms, a.threshold, a.margin, a.min_coverage, a.families, a.invariant) == \
            (b.kind, b.transforms, b.threshold, b.margin, b.min_coverage, b.families, b.invariant)


@pytest.mark.parametrize("call, words", [
    (lambda: equivariance(Planted(), "relu1", ImageSpec(1, 16, 12), transforms=["rot90"]), ["rot90 needs square"]),
    (lambda: equivariance(Planted(), "relu1", GREY, transforms=["perm:2,1,0"]), ["permutes 3 colour", "have 1"]),
    (lambda: equivariance(Planted(), "relu1", GREY, transforms=["spin"]), ["unknown transformation 'spin'"]),
    (lambda: equivariance(Planted(), "relu1", GREY, conv="relu1"), ["not a Conv2d", "conv1, conv2"]),
    (lambda: equivariance(Planted(), "relu2", GREY, transforms=["rot90"],
                          previous=equivariance(Planted(), "relu1", GREY, transforms=["rot180"], progress=False)),
     ["no channel map for rot90"]),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(VisionInputError) as err:
        call()
    for w in words:
        assert w in str(err.value)
