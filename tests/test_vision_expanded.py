"""Expanded weights equal the kernels they must equal: adjacent convolutions, pools, batch-norm, skip paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mechscope.vision import ImageSpec, VisionInputError
from mechscope.vision._linear import receptive_boxes
from mechscope.vision.expanded import (ChannelCircuit, ExpandedWeights, FirstLayerFilters, channel_circuit,
                                       expanded_weights, first_layer_filters, weights_as_images)
from mechscope.zoo.recipes.fmnist_cnn import FashionCNN
from vision_support import BasicBlock

SPEC = ImageSpec(channels=1, height=28, width=28)


def _net() -> FashionCNN:
    torch.manual_seed(0)
    return FashionCNN(8, 16, 32).eval()


class Residual(nn.Module):
    """stem conv -> block: out = conv_b(relu(x)) + x -> relu."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block = Block(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.out = nn.ReLU()

    def forward(self, x):
        return self.out(self.block(self.stem(x)))


class Block(nn.Module):
    def __init__(self, conv, act):
        super().__init__()
        self.conv, self.act = conv, act

    def forward(self, x):
        return self.conv(self.act(x)) + x


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def test_first_layer_filters_are_the_first_kernels_exactly():
    net = _net()
    f = first_layer_filters(net, SPEC)
    assert f.layer == "conv1" and torch.equal(f.weights, net.conv1.weight.detach())
    assert float(f.images.min()) >= 0 and float(f.images.max()) <= 1
    assert torch.allclose(f.images - 0.5, net.conv1.weight.detach() / (2 * net.conv1.weight.detach().flatten(1)
                                                                         .abs().amax(1).view(-1, 1, 1, 1)))
    assert weights_as_images(torch.tensor([[[-2.0, 1.0]]])).tolist() == [[[0.0, 0.75]]]


def test_adjacent_convolutions_with_a_relu_give_the_kernel_exactly():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 70, 3, padding=1))  # 2 chunks
    for source in ("0", "1"):
        ew = expanded_weights(net, ImageSpec(1, 12, 12), source, "2")
        assert ew.position == (6, 6) and ew.box == (5, 5, 8, 8)
        assert torch.equal(ew.weights, net[2].weight.detach())
    assert torch.equal(expanded_weights(_net(), SPEC, "pool1", "conv2").weights, _net().conv2.weight.detach())


def test_max_pool_becomes_an_average_pool():
    net = _net()
    ew = expanded_weights(net, SPEC, "relu1", "relu2", channels=[3, 9])
    w2 = net.conv2.weight.detach()[[3, 9]]
    want = w2.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2) / 4  # each pool cell is 2 x 2 pixels
    assert ew.weights.shape == (2, 8, 6, 6) and ew.box == (12, 12, 18, 18)
    torch.testing.assert_close(ew.weights, want, rtol=0, atol=1e-7)
    torch.testing.assert_close(ew.of(9, 4), want[1, 4], rtol=0, atol=1e-7)


def test_batch_norm_keeps_its_scale_and_drops_its_shift():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
    with torch.no_grad():
        bn = net[1]
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.running_mean.normal_()
    ew = expanded_weights(net.train(), ImageSpec(1, 9, 9), "0", "2")  # the copy is put in eval mode
    assert net.training  # the original is untouched
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(ew.weights, torch.diag(scale).view(3, 3, 1, 1), rtol=1e-6, atol=0)


def test_a_skip_connection_adds_the_identity_to_the_kernel():
    torch.manual_seed(3)
    net = Residual().eval()
    ew = expanded_weights(net, ImageSpec(3, 10, 10), "stem", "out")
    want = net.block.conv.weight.detach().clone()
    want[torch.arange(4), torch.arange(4), 1, 1] += 1  # the identity path: a delta at the centre, i -> i
    torch.testing.assert_close(ew.weights, want, rtol=0, atol=1e-6)
    # through the inner conv only, the skip path bypasses the source and adds nothing
    inner = expanded_weights(net, ImageSpec(3, 10, 10), "block.act", "out")
    torch.testing.assert_close(inner.weights, net.block.conv.weight.detach(), rtol=0, atol=1e-6)


def test_circuit_ranks_inputs_by_norm():
    net = _net()
    c = channel_circuit(net, SPEC, "pool1", "relu2", 7, k=3)
    norms = net.conv2.weight.detach()[7].flatten(1).norm(dim=1)
    order = torch.sort(norms, descending=True, stable=True).indices
    assert torch.equal(c.inputs, order[:3])
    torch.testing.assert_close(c.norms, norms[order[:3]])
    torch.testing.assert_close(c.maps, net.conv2.weight.detach()[7, order[:3]])
    torch.testing.assert_close(c.all_norms, norms)


def test_round_trips_are_exact(tmp_path):
    net = _net()
    ew = expanded_weights(net, SPEC, "relu1", "conv2", channels=[1, 2])
    back = ExpandedWeights.load(ew.save(tmp_path / "ew"))
    assert (back.source, back.target, back.spec, back.position, back.box) == (ew.source, ew.target, ew.spec,
                                                                             ew.position, ew.box)
    assert torch.equal(back.weights, ew.weights) and torch.equal(back.channels, ew.channels)
    c = channel_circuit(net, SPEC, "relu1", "conv2", 3)
    cb = ChannelCircuit.load(c.save(tmp_path / "c"))
    assert cb.channel == 3 and all(torch.equal(getattr(cb, n), getattr(c, n)) for n in ("inputs", "norms", "maps"))
    f = first_layer_filters(net, SPEC)
    fb = FirstLayerFilters.load(f.save(tmp_path / "f"))
    assert fb.layer == f.layer and torch.equal(fb.weights, f.weights) and torch.equal(fb.images, f.images)


@pytest.mark.parametrize("call, words", [
    (lambda: expanded_weights(_net(), SPEC, "conv2", "conv1"), ["does not depend on 'conv2'"]),
    (lambda: expanded_weights(_net(), SPEC, "fc1", "conv2"), ["not a feature map"]),
    (lambda: expanded_weights(_net(), SPEC, "conv1", "conv2", channels=[16]), ["16 channels"]),
    (lambda: expanded_weights(FunctionalRelu(), ImageSpec(1, 8, 8), "a", "b"), ["not a submodule"]),
])
def test_bad_input_is_named(call, words):
    with pytest.raises(VisionInputError) as err:
        call()
    for w in words:
        assert w in str(err.value)


def test_a_resnet_block_equals_its_linear_map_written_by_hand():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), BasicBlock(4)).eval()
    block = net[3]
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.weight.uniform_(0.5, 2), bn.bias.normal_(), bn.running_var.uniform_(0.5, 2), bn.running_mean.normal_()
    spec = ImageSpec(3, 16, 16)
    ew = expanded_weights(net, spec, "2", "3")

    def scale(bn):
        return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)

    def linear(a):  # the block with ReLUs as identities, batch-norm as its scale, biases and shifts dropped
        h = F.conv2d(a, block.conv1.weight, padding=1) * scale(block.bn1)
        return F.conv2d(h, block.conv2.weight, padding=1) * scale(block.bn2) + a

    jac = torch.autograd.functional.jacobian(lambda a: linear(a)[0, :, 4, 4], torch.zeros(1, 4, 8, 8))[:, 0]
    t, left, b, r = ew.box
    assert ew.position == (4, 4) and ew.box == (2, 2, 7, 7)  # two 3 x 3 convs: 5 x 5
    torch.testing.assert_close(ew.weights, jac[:, :, t:b, left:r], rtol=1e-5, atol=1e-6)
    assert float(jac.abs().sum()) == pytest.approx(float(ew.weights.abs().sum()), rel=1e-5)  # nothing outside


def test_a_module_called_twice_is_read_at_its_last_call():
    # the block's one ReLU module runs twice; its output is read at the last call (the block's output), as
    # mechscope.run and FeatureReader read it, so its field holds bn2's and the linear map is the block's
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), BasicBlock(4)).eval()
    spec = ImageSpec(3, 16, 16)
    whole, relu = expanded_weights(net, spec, "2", "3"), expanded_weights(net, spec, "2", "3.relu")
    assert relu.box == whole.box == (2, 2, 7, 7)
    torch.testing.assert_close(relu.weights, whole.weights, rtol=0, atol=0)
    bn2 = expanded_weights(net, spec, "2", "3.bn2")
    assert relu.box == bn2.box
    # the shared ReLU's (last) output comes after bn2: bn2 does not depend on it
    with pytest.raises(VisionInputError, match="does not depend"):
        expanded_weights(net, spec, "3.relu", "3.bn2")
    # the receptive field in the image, against the real network's gradient with all-positive weights
    one = BasicBlock(2).eval()
    with torch.no_grad():
        for conv in (one.conv1, one.conv2):
            conv.weight.uniform_(0.1, 1)
    image = torch.rand(1, 2, 11, 11, requires_grad=True)
    one(image)[0, 0, 5, 5].backward()
    rows, cols = image.grad.ne(0).any(1)[0].any(1).nonzero(), image.grad.ne(0).any(1)[0].any(0).nonzero()
    truth = [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]
    assert truth == [3, 3, 8, 8]
    assert receptive_boxes(one, ImageSpec(2, 11, 11), "relu", torch.tensor([[5, 5]]))[0].tolist() == truth


def test_colour_first_layer_filters_keep_their_channels():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.ReLU())
    f = first_layer_filters(net, ImageSpec(3, 12, 12, low=-1.0))
    assert f.images.shape == (6, 3, 5, 5) and torch.equal(f.weights, net[0].weight.detach())
