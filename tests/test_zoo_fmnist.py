"""fmnist-cnn: the Fashion-MNIST reader and the quick recipe, trained and loaded through the core."""

import gzip

import pytest
import torch

import mechscope as ms
from mechscope.core.errors import LoadError
from mechscope.core.site import Site
from mechscope.zoo.recipes import fmnist_cnn


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))


def test_reader_gives_the_published_sizes():
    x, y = fmnist_cnn.fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8 and y.shape == (10000,)
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    assert torch.bincount(y).tolist() == [1000] * 10  # the test split is balanced
    with pytest.raises(ValueError, match="train' or 'test"):
        fmnist_cnn.fashion_mnist("validation")


def test_missing_or_damaged_files_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist_cnn, "FASHION_DIR", tmp_path)
    with pytest.raises(LoadError, match="t10k-images-idx3-ubyte.gz is missing.*make data"):
        fmnist_cnn.fashion_mnist("test")
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write((2051).to_bytes(4, "big") + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(LoadError, match="truncated"):
        fmnist_cnn.fashion_mnist("test")


def test_quick_recipe_trains_and_every_layer_is_a_site():
    ms.zoo.train("fmnist-cnn", quick=True, progress=False)
    model = ms.load("zoo:fmnist-cnn-quick")
    x, y = fmnist_cnn.fashion_mnist("test")
    images = fmnist_cnn.as_input(x[:500])
    sites = [Site.module(p) for p in ("conv1", "pool1", "conv2", "fc1", "fc2")]
    out = model.run(images, capture=sites)
    assert out.cache[sites[0]].shape == (500, 8, 28, 28) and out.cache[sites[1]].shape == (500, 8, 14, 14)
    torch.testing.assert_close(out.cache[sites[-1]], out.logits)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model.module(images))
    acc = float((out.logits.argmax(-1) == y[:500]).float().mean())
    assert acc > 0.6  # 150 small steps: well above the 10% of chance (the full recipe reaches >= 88%)
    last = model.zoo_run.metrics()[-1]
    assert last["step"] == 150 and last["test_acc"] > 0.6


def test_resnet_blocks_compute_what_they_say_and_every_layer_is_a_site():
    from mechscope.zoo.recipes.fmnist_resnet import FashionResNet

    torch.manual_seed(0)
    net = FashionResNet((4, 8, 16)).eval()
    with torch.no_grad():  # batch-norm statistics away from the identity, so a skipped norm would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def bn(m, t):
        return (t - m.running_mean[:, None, None]) / torch.sqrt(m.running_var[:, None, None] + m.eps) \
            * m.weight[:, None, None] + m.bias[:, None, None]

    def conv(m, t):
        return torch.nn.functional.conv2d(t, m.weight, None, m.stride, m.padding)

    def block(b, t):
        out = bn(b.bn2, conv(b.conv2, torch.relu(bn(b.bn1, conv(b.conv1, t)))))
        short = t if b.downsample is None else bn(b.downsample[1], conv(b.downsample[0], t))
        return torch.relu(out + short)

    with torch.no_grad():
        h = torch.relu(bn(net.bn1, conv(net.conv1, x)))
        stages = []
        for stage in (net.layer1, net.layer2, net.layer3):
            h = block(stage[0], h)
            stages.append(h)
        logits = net.fc(h.mean((2, 3)))
        torch.testing.assert_close(net(x), logits)
    model = ms.wrap(net)
    sites = [Site.module(p) for p in ("layer1", "layer2.0.downsample", "layer3.0.relu2", "avgpool", "fc")]
    out = model.run(x, capture=sites)
    assert out.cache[sites[1]].shape == (3, 8, 14, 14) and out.cache[sites[3]].shape == (3, 16, 1, 1)
    torch.testing.assert_close(out.cache[sites[0]], stages[0])
    torch.testing.assert_close(out.cache[sites[2]], stages[2])
    assert net.layer1[0].downsample is None and net.layer2[0].downsample is not None
