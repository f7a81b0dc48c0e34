"""Vision networks by zoo name or from a local file: the loaded module computes what the original does,
and every bad input gets an error naming the file, the class or the keys."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file

from mechscope.vision import ImageSpec, VisionInputError, feature_layer, feature_layers
from mechscope.vision.networks import (file_network, image_set_file, load_network, parse_image_shape, parse_range,
                                       vision_zoo_names, zoo_network)

# a torchvision-style ResNet (its layout and names, the ReLU module shared inside a block as torchvision
# does), written here because torchvision is not installed
RESNET = textwrap.dedent('''
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, widths=(8, 16), num_classes=10):
            super().__init__()
            self.inplanes = widths[0]
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(widths[0], 1)
            self.layer2 = self._make_layer(widths[1], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[1], num_classes)

        def _make_layer(self, planes, stride):
            down = None
            if stride != 1 or self.inplanes != planes:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            block = BasicBlock(self.inplanes, planes, stride, down)
            self.inplanes = planes
            return nn.Sequential(block, BasicBlock(planes, planes))

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer2(self.layer1(x))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.lin = nn.Linear(width, width)
''')
SPEC = ImageSpec(3, 32, 32)


@pytest.fixture
def resnet(tmp_path):
    """(path of the Python file, path of its weights, the original module with those weights)."""
    src = tmp_path / "resnet.py"
    src.write_text(RESNET)
    ns: dict = {}
    exec(compile(RESNET, str(src), "exec"), ns)  # the same class, built independently of the loader
    torch.manual_seed(0)
    original = ns["ResNet"]()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a missed buffer would show
        for m in original.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    original.eval()
    weights = tmp_path / "resnet.safetensors"
    save_file(original.state_dict(), str(weights))
    return src, weights, original


def test_a_local_resnet_loads_and_computes_what_the_original_does(resnet):
    src, weights, original = resnet
    net = file_network(f"{src}:ResNet", weights, SPEC)
    assert not net.module.training and net.spec == SPEC and net.source == f"{src}:ResNet"
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(net.module(x), original(x))
    paths = [layer.path for layer in feature_layers(net.module, net.spec)]
    assert paths[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert {"layer1.0.conv1", "layer2.0.downsample", "layer2.1.bn2", "layer2"} <= set(paths)
    assert "fc" not in paths and "avgpool" in paths  # (batch, 16, 1, 1) is still a feature map
    layer = feature_layer(net.module, "layer2.0.conv1", net.spec)
    assert (layer.channels, layer.height, layer.width) == (16, 4, 4)
    assert not net.has_dataset
    with pytest.raises(VisionInputError, match="no dataset images are known"):
        net.dataset()
    # the same through the command line's entry point, the range given as text
    again = load_network(module=f"{src}:ResNet", weights=weights, image="3x32x32", pixel_range="-1,1")
    assert again.spec == ImageSpec(3, 32, 32, -1.0, 1.0)


def test_dataset_images_from_a_file_are_checked_against_the_format(resnet, tmp_path):
    src, weights, _ = resnet
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    save_file({"images": images, "labels": torch.arange(5)}, str(tmp_path / "imgs.safetensors"))
    net = file_network(f"{src}:ResNet", weights, SPEC, images=tmp_path / "imgs.safetensors")
    data = net.dataset()
    assert torch.equal(data.images, images) and data.labels.tolist() == [0, 1, 2, 3, 4] and data.caption(3) == "3"
    save_file({"images": images[:, :1].contiguous()}, str(tmp_path / "grey.safetensors"))
    with pytest.raises(VisionInputError, match=r"shape \(5, 1, 32, 32\); the network takes \(n, 3, 32, 32\)"):
        image_set_file(tmp_path / "grey.safetensors", SPEC)
    save_file({"images": images * 255}, str(tmp_path / "bytes.safetensors"))
    with pytest.raises(VisionInputError, match=r"outside the pixel range \[0, 1\]"):
        image_set_file(tmp_path / "bytes.safetensors", SPEC)
    save_file({"pixels": images}, str(tmp_path / "other.safetensors"))
    with pytest.raises(VisionInputError, match="no tensor 'images' .*pixels"):
        image_set_file(tmp_path / "other.safetensors", SPEC)


def test_bad_files_classes_and_weights_are_named(resnet, tmp_path):
    src, weights, original = resnet
    with pytest.raises(VisionInputError, match="nope.py does not exist"):
        file_network(f"{tmp_path / 'nope.py'}:ResNet", weights, SPEC)
    with pytest.raises(VisionInputError, match="'ResNet50' is not defined .*BasicBlock, NeedsArgs, ResNet"):
        file_network(f"{src}:ResNet50", weights, SPEC)
    with pytest.raises(VisionInputError, match="'torch' is not an nn.Module class"):
        file_network(f"{src}:torch", weights, SPEC)
    with pytest.raises(VisionInputError, match="FILE.py:ClassName"):
        file_network(str(src), weights, SPEC)
    with pytest.raises(VisionInputError, match="cannot be constructed with no arguments"):
        file_network(f"{src}:NeedsArgs", weights, SPEC)
    with pytest.raises(VisionInputError, match="missing.safetensors does not exist"):
        file_network(f"{src}:ResNet", tmp_path / "missing.safetensors", SPEC)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VisionInputError, match="junk.safetensors is not a safetensors file"):
        file_network(f"{src}:ResNet", tmp_path / "junk.safetensors", SPEC)
    state = original.state_dict()
    del state["fc.bias"]
    state["head.weight"] = torch.zeros(2)
    state["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(VisionInputError) as err:
        file_network(f"{src}:ResNet", tmp_path / "other.safetensors", SPEC)
    msg = str(err.value)
    assert "missing from the file: fc.bias" in msg and "not in ResNet of resnet.py: head.weight" in msg
    assert "conv1.weight (8, 3, 3, 3) in the file, (8, 3, 7, 7) in the network" in msg
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(VisionInputError, match="importing .*broken.py failed: RuntimeError: boom"):
        file_network(f"{tmp_path / 'broken.py'}:X", weights, SPEC)
    # the wrong image format is caught when the layers are probed
    net = file_network(f"{src}:ResNet", weights, ImageSpec(1, 32, 32))
    with pytest.raises(VisionInputError, match=r"cannot take images of shape \(1, 32, 32\)"):
        feature_layers(net.module, net.spec)


@pytest.mark.parametrize("call, words", [
    (lambda: parse_image_shape("3x32"), "CHANNELSxHEIGHTxWIDTH"),
    (lambda: parse_image_shape("0x32x32"), "CHANNELSxHEIGHTxWIDTH"),
    (lambda: parse_range("1,0"), "HIGH > LOW"),
    (lambda: parse_range("0;1"), "LOW,HIGH"),
    (lambda: parse_range("0,inf"), "finite"),
    (lambda: parse_range("-inf,1"), "finite"),
    (lambda: ImageSpec(1, 28, 28, 0.0, float("inf")), "finite"),
    (lambda: ImageSpec(1, 28, 28, float("-inf"), 1.0), "finite"),
    (lambda: load_network("fmnist-cnn", weights="w.safetensors"), "--module FILE.py:ClassName"),
    (lambda: load_network(module="a.py:A"), "needs --module FILE.py:ClassName, --weights"),
    (lambda: load_network("modadd-quick"), "not a zoo image network; they are: fmnist-cnn, fmnist-cnn-quick"),
    (lambda: load_network("no-such-net"), "fmnist-resnet, fmnist-resnet-quick"),
    (lambda: load_network("fmnist-cnn", pixel_range="-1,1"), "--range is for a network of your own"),
])
def test_bad_options_say_what_to_give(call, words):
    with pytest.raises(VisionInputError, match=words):
        call()


def test_parsers():
    assert parse_image_shape("3x224x224") == (3, 224, 224) and parse_range("-1,1") == (-1.0, 1.0)
    assert vision_zoo_names() == ["fmnist-cnn", "fmnist-cnn-quick", "fmnist-resnet", "fmnist-resnet-quick"]


def test_zoo_networks_come_with_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))  # shipped copy, else a 150-step quick run
    net = zoo_network("zoo:fmnist-resnet-quick", progress=False)
    assert net.name == "zoo:fmnist-resnet-quick" and net.spec == ImageSpec(1, 28, 28)
    data = net.dataset()
    assert data.images.shape == (10000, 1, 28, 28) and 0 <= float(data.images.min()) < float(data.images.max()) <= 1
    assert data.caption(0) == "Ankle boot"  # the first test image of Fashion-MNIST
    with torch.no_grad():
        acc = (net.module(data.images[:1000]).argmax(-1) == data.labels[:1000]).float().mean()
    assert acc > 0.5  # far above the 10% of chance after its short training
    paths = [layer.path for layer in feature_layers(net.module, net.spec)]
    assert paths[:3] == ["conv1", "bn1", "relu"] and "layer2.0.downsample" in paths and "layer3.0.relu2" in paths
