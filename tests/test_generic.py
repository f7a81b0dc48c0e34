"""The generic adapter: any nn.Module (here a small CNN), sites named by module path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechscope as ms
from mechscope import Kind, Patch, Scale, Site, SiteError, Zero
from mechscope.models import ModuleModel

from conftest import assert_no_hooks, suggestions


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def cnn() -> CNN:
    torch.manual_seed(0)
    return CNN().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _manual(net: nn.Module, x: torch.Tensor, paths: list[str], replace: dict | None = None):
    """Run with manual forward hooks: record the outputs at `paths`, replace outputs per `replace`."""
    got, handles = {}, []
    for p in paths:
        handles.append(net.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: got.__setitem__(p, o)))
    for p, fn in (replace or {}).items():
        handles.append(net.get_submodule(p).register_forward_hook(lambda m, a, o, fn=fn: fn(o)))
    try:
        with torch.no_grad():
            return net(x), got
    finally:
        for h in handles:
            h.remove()


def test_sites_are_module_paths(cnn):
    m = ms.wrap(cnn)
    assert isinstance(m, ModuleModel)
    assert ms.wrap(cnn) is m  # wrapping is cached per module
    names = [s.name for s in m.sites()]
    assert names == ["features", *(f"features.{i}" for i in range(7)), "head"]
    assert all(s.kind is Kind.MODULE for s in m.sites())
    assert m.check("features.3") == Site.module("features.3")


def test_no_intervention_bit_identical(cnn, images):
    with torch.no_grad():
        ref = cnn(images)
    res = ms.run(cnn, images)
    assert torch.equal(res.output, ref) and torch.equal(res.logits, ref)
    res = ms.run(cnn, images, capture=ms.wrap(cnn).sites())
    assert torch.equal(res.logits, ref)
    assert_no_hooks(cnn)


def test_capture_conv_outputs_equals_manual_hooks(cnn, images):
    res = ms.run(cnn, images, capture=["features.0", Site.module("features.3"), "head"])
    out, manual = _manual(cnn, images, ["features.0", "features.3", "head"])
    assert res.cache[Site.module("features.0")].shape == (4, 8, 12, 12)
    for p in ("features.0", "features.3", "head"):
        assert torch.equal(res.cache[Site.module(p)], manual[p])
    # a generic model's cache is looked up by path too
    assert torch.equal(res.cache["features.3"], manual["features.3"])
    assert "features.0" in res.cache and "features.1" not in res.cache
    assert torch.equal(res.logits, out)


def test_zero_relu_output_matches_manual(cnn, images):
    with torch.no_grad():
        clean = cnn(images)
    res = ms.run(cnn, images, interventions=[Zero("features.1", rows=[0, 2])])

    def zero_rows(o):
        o = o.clone()
        o[[0, 2]] = 0
        return o

    manual, _ = _manual(cnn, images, [], {"features.1": zero_rows})
    assert torch.equal(res.logits, manual)
    assert not torch.allclose(res.logits[[0, 2]], clean[[0, 2]])
    assert torch.equal(res.logits[[1, 3]], clean[[1, 3]])
    # whole-site zero: the later ReLU of zero conv input leaves only biases
    res = ms.run(cnn, images, interventions=[Zero("features.4")])
    assert torch.allclose(res.logits, cnn.head.bias.detach().expand(4, -1))
    assert_no_hooks(cnn)


def test_patch_and_scale_on_module_sites(cnn, images):
    site = Site.module("features.2")
    other = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    src = ms.run(cnn, other, capture=[site]).cache[site]
    res = ms.run(cnn, images, interventions=[Patch(site, value=src[:1])])  # broadcasts over the batch
    manual, _ = _manual(cnn, images, [], {"features.2": lambda o: src[:1].expand_as(o).clone()})
    assert torch.equal(res.logits, manual)
    assert torch.equal(ms.run(cnn, images, interventions=[Scale(site, factor=1.0)]).logits,
                       ms.run(cnn, images).logits)


def test_bad_path_suggests_nearest(cnn, images):
    with pytest.raises(SiteError) as e:
        ms.run(cnn, images, capture=["feature.3"])
    assert suggestions(str(e.value))[0] == "features.3"
    with pytest.raises(SiteError) as e:
        ms.run(cnn, images, interventions=[Zero("features.O")])
    assert all(n.startswith("features.") for n in suggestions(str(e.value)))
    with pytest.raises(SiteError) as e:
        ms.wrap(cnn).check("heads")
    assert "head" in suggestions(str(e.value))
    with pytest.raises(SiteError):
        ms.run(cnn, images, capture=["blocks.0.hook_resid_pre"])
    assert_no_hooks(cnn)


def test_module_paths_that_look_like_site_names():
    """A submodule may be called `embed` or `logits`: its path still names it."""
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 4)
            self.logits = nn.Linear(4, 11)

        def forward(self, ids):
            return self.logits(self.embed(ids))

    torch.manual_seed(0)
    net = Tiny().eval()
    ids = torch.tensor([[1, 2, 3]])
    res = ms.run(net, ids, capture=["embed", "logits"])
    assert torch.equal(res.cache["embed"], net.embed(ids))
    assert torch.equal(res.cache[Site.module("logits")], res.logits)
    res = ms.run(net, ids, interventions=[Zero("embed")])
    assert torch.equal(res.logits, net.logits.bias.detach().expand(1, 3, -1))


def test_grad_on_generic_model(cnn, images):
    site = Site.module("features.3")
    res = ms.run(cnn, images, capture=[site], grad=lambda out: out[:, 2].sum())
    acts = {}

    def keep(m, a, o):
        o.retain_grad()
        acts["x"] = o

    h = cnn.features[3].register_forward_hook(keep)
    try:
        cnn.zero_grad()
        cnn(images)[:, 2].sum().backward()
    finally:
        h.remove()
    torch.testing.assert_close(res.grads[site], acts["x"].grad, atol=1e-6, rtol=0)
    assert res.metric.shape == () and not res.cache[site].requires_grad


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.out = nn.Linear(4, 11)

    def forward(self, ids):
        return self.out(self.emb(ids))


def test_grad_on_generic_model_with_token_inputs():
    """Integer inputs cannot require grad: the gradient entry must leave them alone."""
    torch.manual_seed(0)
    net = TokenNet()
    ids = torch.tensor([[1, 2, 3]])
    res = ms.run(net, ids, capture=["emb"], grad=lambda out: out[0, -1, 2])
    emb = net.emb(ids)
    emb.retain_grad()
    net.out(emb)[0, -1, 2].backward()
    torch.testing.assert_close(res.grads["emb"], emb.grad, atol=1e-6, rtol=0)
    assert torch.all(res.grads["emb"][0, :2] == 0)
    net.requires_grad_(False)  # nothing requires grad any more: a clear error, not a crash
    with pytest.raises(SiteError, match="no gradient reaches"):
        ms.run(net, ids, capture=["emb"], grad=lambda out: out[0, -1, 2])
    assert_no_hooks(net)


def test_grad_on_frozen_cnn(cnn, images):
    """Frozen float-input models get gradients switched on at the input."""
    cnn.requires_grad_(False)
    site = Site.module("features.1")
    res = ms.run(cnn, images, capture=[site], grad=lambda out: out[:, 2].sum())
    x = images.clone().requires_grad_(True)
    acts = {}

    def keep(_m, _a, out):
        out.retain_grad()
        acts["x"] = out

    h = cnn.features[1].register_forward_hook(keep)
    try:
        cnn(x)[:, 2].sum().backward()
    finally:
        h.remove()
    torch.testing.assert_close(res.grads[site], acts["x"].grad, atol=1e-6, rtol=0)
    assert not images.requires_grad


class ResBlock(nn.Module):
    """torchvision style: in-place ReLU and an in-place residual add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        out = self.relu(out)
        return self.head(out.mean((2, 3)))


def test_in_place_ops_after_a_site_do_not_change_the_capture():
    torch.manual_seed(0)
    net = ResBlock().eval()
    with torch.no_grad():
        net.bn.running_mean.normal_()
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        bn_out = net.bn(net.conv(x))
        ref = net(x)
    assert bool((bn_out < 0).any())
    res = ms.run(net, x, capture=["bn", "conv"])
    assert torch.equal(res.cache["bn"], bn_out), "the in-place `+=` and ReLU reached the captured tensor"
    assert torch.equal(res.logits, ref)
    # a patched value is not modified in place either, and the run matches the manual one
    value = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(4))
    kept = value.clone()
    res = ms.run(net, x, capture=["bn"], interventions=[Patch("bn", value=value)])
    assert torch.equal(value, kept) and torch.equal(res.cache["bn"], kept)
    with torch.no_grad():
        manual = net.head(torch.relu(kept + x).mean((2, 3)))
    torch.testing.assert_close(res.logits, manual, atol=1e-6, rtol=0)
    # gradients at `bn` are with respect to its own output, before the in-place ops
    g = ms.run(net, x, capture=["bn"], grad=lambda out: out[:, 1].sum()).grads["bn"]
    b = bn_out.clone().requires_grad_(True)
    net.head(torch.relu(b + x).mean((2, 3)))[:, 1].sum().backward()
    torch.testing.assert_close(g, b.grad, atol=1e-6, rtol=0)
    assert_no_hooks(net)
