"""Feature layers are found by what a submodule outputs, and bad choices get errors naming the valid ones."""

from __future__ import annotations

import pytest
import torch

from mechscope.vision import (ImageSpec, VisionInputError, channel_activations, check_channel, feature_layer,
                              feature_layers, parse_target)
from mechscope.zoo.recipes.fmnist_cnn import FashionCNN

SPEC = ImageSpec(channels=1, height=28, width=28)


def _net() -> FashionCNN:
    torch.manual_seed(0)
    return FashionCNN(8, 16, 32).eval()


def test_feature_layers_are_the_4d_outputs():
    got = [(layer.path, layer.channels, layer.height, layer.width) for layer in feature_layers(_net(), SPEC)]
    assert got == [("conv1", 8, 28, 28), ("relu1", 8, 28, 28), ("pool1", 8, 14, 14),
                   ("conv2", 16, 14, 14), ("relu2", 16, 14, 14), ("pool2", 16, 7, 7)]


def test_channel_activations_equal_the_module_computed_by_hand():
    net = _net()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    layer = feature_layer(net, "relu2", SPEC)
    by_hand = torch.relu(net.conv2(net.pool1(torch.relu(net.conv1(x)))))
    with torch.no_grad():
        assert torch.equal(channel_activations(net, x, layer), by_hand)
        assert torch.equal(channel_activations(net, x, layer, 5), by_hand[:, 5])


def test_gradients_reach_the_image():
    net = _net()
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    channel_activations(net, x, feature_layer(net, "conv2", SPEC), 0).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("call, words", [
    (lambda n: feature_layer(n, "fc1", SPEC), ["'fc1'", "not a feature map", "conv1, relu1, pool1, conv2"]),
    (lambda n: feature_layer(n, "conv9", SPEC), ["not a submodule", "conv1, relu1"]),
    (lambda n: check_channel(feature_layer(n, "conv2", SPEC), 16), ["16 channels", "0 to 15"]),
    (lambda n: feature_layer(n, "conv1", ImageSpec(1, 32, 32)), ["cannot take images of shape (1, 32, 32)"]),
    (lambda n: parse_target("conv2:x"), ["whole number"]),
])
def test_bad_input_names_the_valid_choices(call, words):
    with pytest.raises(VisionInputError) as err:
        call(_net())
    for w in words:
        assert w in str(err.value)


def test_parse_target():
    assert parse_target("conv2:5") == ("conv2", 5)
    assert parse_target("layer1.0.conv1") == ("layer1.0.conv1", None)



def test_the_probe_leaves_a_training_network_as_it_was():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert [layer.path for layer in feature_layers(net, SPEC)] == ["0", "1", "2"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats unmoved
    assert all(m.training for m in net.modules())
