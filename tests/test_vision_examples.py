"""Dataset examples equal a brute-force ranking, and their crops hold every pixel that can move the value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.vision import ImageSpec, VisionInputError
from mechscope.vision.examples import DatasetExamples, dataset_examples
from mechscope.zoo.recipes.fmnist_cnn import FashionCNN

SPEC = ImageSpec(channels=1, height=28, width=28)


def _net() -> FashionCNN:
    torch.manual_seed(0)
    return FashionCNN(8, 16, 32).eval()


def _images(n: int = 90, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _by_hand(net: FashionCNN, x: torch.Tensor, layer: str) -> torch.Tensor:
    with torch.no_grad():
        a = net.conv1(x)
        if layer == "conv1":
            return a
        a = net.conv2(net.pool1(torch.relu(a)))
        return a if layer == "conv2" else net.pool2(torch.relu(a))


@pytest.mark.parametrize("layer, channel", [("conv1", 3), ("conv2", 5), ("pool2", 11)])
def test_top_bottom_and_position_equal_brute_force(layer, channel):
    net, x = _net(), _images()
    acts = _by_hand(net, x, layer)[:, channel]  # (n, H, W)
    flat = acts.flatten(1)
    best, arg = flat.max(dim=1)
    top = dataset_examples(net, SPEC, layer, channel, x, k=7, batch_size=16, progress=False)
    want = torch.sort(best, descending=True, stable=True).indices[:7]
    assert torch.equal(top.indices, want)
    assert torch.equal(top.values, best[want])
    w = acts.shape[-1]
    assert torch.equal(top.positions, torch.stack([arg[want] // w, arg[want] % w], dim=1))
    assert torch.equal(top.images, x[want])
    assert torch.equal(top.quantiles, (len(x) - 1 - torch.arange(7)).double() / (len(x) - 1))

    low = dataset_examples(net, SPEC, layer, channel, x, k=4, which="bottom", progress=False)
    assert torch.equal(low.indices, torch.sort(flat.min(dim=1).values, stable=True).indices[:4])

    at = dataset_examples(net, SPEC, layer, channel, x, k=5, position=(1, 2), progress=False)
    assert torch.equal(at.indices, torch.sort(acts[:, 1, 2], descending=True, stable=True).indices[:5])
    assert at.positions.tolist() == [[1, 2]] * 5


def test_quantile_examples_rise_through_the_ranking():
    net, x = _net(), _images()
    q = dataset_examples(net, SPEC, "conv2", 2, x, k=5, which="quantiles", progress=False)
    by_value = torch.sort(_by_hand(net, x, "conv2")[:, 2].flatten(1).max(dim=1).values, stable=True).indices
    assert torch.equal(q.indices, by_value[torch.tensor([0, 22, 44, 67, 89])])
    assert q.quantiles.tolist() == [0.0, 22 / 89, 44 / 89, 67 / 89, 1.0]


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "relu2", "pool2"])
def test_crop_box_holds_every_pixel_with_a_nonzero_gradient(layer):
    net, x = _net(), _images(40)
    ex = dataset_examples(net, SPEC, layer, 1, x, k=6, progress=False)
    ex_low = dataset_examples(net, SPEC, layer, 1, x, k=6, which="bottom", progress=False)
    for e in (ex, ex_low):
        for s in range(len(e.indices)):
            img = x[int(e.indices[s])][None].clone().requires_grad_(True)
            acts = {}
            handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
            net(img)
            handle.remove()
            y, c = e.positions[s].tolist()
            (g,) = torch.autograd.grad(acts["a"][0, 1, y, c], img)
            rows, cols = g[0, 0].ne(0).nonzero().unbind(1)
            t, left, b, r = e.boxes[s].tolist()
            if e is ex_low and len(rows) == 0:
                continue  # a ReLU's minimum of 0: no pixel moves it
            assert len(rows) > 0
            assert t <= int(rows.min()) and int(rows.max()) < b and left <= int(cols.min()) and int(cols.max()) < r
            crop = e.crops[s]
            h, w = b - t, r - left
            dy = crop.shape[1] - h if t == 0 else 0
            dx = crop.shape[2] - w if left == 0 else 0
            assert torch.equal(crop[:, dy:dy + h, dx:dx + w], e.images[s, :, t:b, left:r])


def test_receptive_field_of_a_strided_dilated_stack_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, dilation=2))
    spec = ImageSpec(1, 20, 20)
    ex = dataset_examples(net, spec, "2", 0, _images(5)[:, :, :20, :20], k=5, position=(3, 1), progress=False)
    # output (3, 1) reads layer-1 rows 3..7 (dilation 2), columns 1..5; layer-1 row i reads rows 2i-1..2i+1
    assert ex.boxes[0].tolist() == [5, 1, 16, 12]
    assert ex.crops.shape == (5, 1, 11, 11)


def test_round_trip_is_exact(tmp_path):
    ex = dataset_examples(_net(), SPEC, "relu2", 4, _images(30), k=3, position=(6, 7), progress=False)
    back = DatasetExamples.load(ex.save(tmp_path / "ex"))
    assert back.layer == ex.layer and back.spec == ex.spec and back.position == (6, 7) and back.which == "top"
    for name in ("indices", "values", "positions", "images", "boxes", "crops", "quantiles"):
        got, want = getattr(back, name), getattr(ex, name)
        assert torch.equal(got, want) and got.dtype == want.dtype


@pytest.mark.parametrize("kwargs, words", [
    (dict(images=torch.rand(4, 1, 32, 32)), ["(n, 1, 28, 28)"]),
    (dict(images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8)), ["float", "/ 255"]),
    (dict(which="middle"), ["top, bottom, quantiles"]),
    (dict(position=(14, 0)), ["outside", "14 x 14"]),
    (dict(channel=16), ["16 channels"]),
])
def test_bad_input_is_named(kwargs, words):
    args = dict(images=_images(4), channel=0, k=2, progress=False)
    args.update(kwargs)
    with pytest.raises(VisionInputError) as err:
        dataset_examples(_net(), SPEC, "conv2", args.pop("channel"), args.pop("images"), **args)
    for w in words:
        assert w in str(err.value)
