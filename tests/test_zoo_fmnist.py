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
