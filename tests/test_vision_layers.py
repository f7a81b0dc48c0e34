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


def _training_net() -> torch.nn.Sequential:
    """Conv -> BN -> ReLU twice, in train mode with its second batch norm frozen (eval), off-default statistics."""
    torch.manual_seed(6)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    net.train()
    net[5].eval()
    return net


def _state(net):
    return [m.training for m in net.modules()], {k: v.clone() for k, v in net.state_dict().items()}


def _assert_unchanged(net, before):
    modes, state = _state(net)
    assert modes == before[0]
    for k, v in state.items():
        torch.testing.assert_close(v, before[1][k], rtol=0, atol=0)


def test_evaluating_restores_each_submodules_own_mode():
    from mechscope.vision.layers import evaluating
    net = _training_net()
    before = [m.training for m in net.modules()]
    with evaluating(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before == [True, True, True, True, True, True, False, True]
    with pytest.raises(RuntimeError), evaluating(net):
        raise RuntimeError("restored on an error too")
    assert [m.training for m in net.modules()] == before


def test_readers_use_eval_mode_and_leave_the_network_as_it_was():
    import copy

    from mechscope.vision import channel_values, modularity
    from mechscope.vision.stimuli import edges
    from mechscope.vision.tuning import tuning_curves
    spec = ImageSpec(1, 9, 9)
    net = _training_net()
    frozen = copy.deepcopy(net).eval()  # the reference: the same network in eval mode
    images = torch.rand(6, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    before = _state(net)
    layer = feature_layer(net, "6", spec)
    with torch.no_grad():
        torch.testing.assert_close(channel_activations(net, images, layer), frozen(images), rtol=0, atol=0)
    _assert_unchanged(net, before)
    got, want = (channel_values(m, spec, "6", 1, images, progress=False) for m in (net, frozen))
    _assert_unchanged(net, before)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    stim = edges(spec, [0.0, 90.0, 180.0])
    got, want = (tuning_curves(m, spec, "6", stim, ("angle",), progress=False).responses for m in (net, frozen))
    _assert_unchanged(net, before)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got, want = (modularity(m, ["0", "4"], images, k=2, n_shuffles=2, act_layers=["2", "6"], progress=False)
                 for m in (net, frozen))
    _assert_unchanged(net, before)
    torch.testing.assert_close(got.coactivation.affinity, want.coactivation.affinity, rtol=0, atol=0)
