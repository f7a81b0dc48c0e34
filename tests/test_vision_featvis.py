"""Feature visualisation: hand-built detectors are visualised as the pattern they detect, objectives equal
their definitions computed by hand, parameterisations and transforms do what they say, results round-trip."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from torch import nn

from mechscope.vision import (FeatureLayer, FeatureVis, ImageSpec, VisionInputError, channel_activations,
                              feature_layer, visualize)
from mechscope.vision.featvis import FeatureReader, write_png
from mechscope.vision.objectives import channel, direction, diversity, latent, neuron
from mechscope.vision.param import FourierParam, MacoParam, color_correlation, frequencies, mean_spectrum
from mechscope.vision.transforms import Compose, Jitter, Pad, RandomRotate, RandomScale, standard_transforms
from mechscope.zoo.recipes.fmnist_cnn import FashionCNN
from vision_support import BasicBlock

GREY = ImageSpec(1, 15, 15)


def _grating(vertical: bool, size: int = 5) -> torch.Tensor:
    """+1/-1 stripes two pixels wide: vertical ones vary along x, horizontal ones along y."""
    i = torch.arange(size)
    stripe = torch.where((i // 2) % 2 == 0, 1.0, -1.0)
    return stripe[None, :].expand(size, size).clone() if vertical else stripe[:, None].expand(size, size).clone()


class Detectors(nn.Module):
    """conv (2 channels: a vertical and a horizontal grating detector) -> relu -> mean -> linear."""

    def __init__(self, k0: torch.Tensor, k1: torch.Tensor, in_ch: int = 1):
        super().__init__()
        size = k0.shape[-1]
        self.conv = nn.Conv2d(in_ch, 2, size, padding=size // 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.stack([k0, k1]).reshape(2, in_ch, size, size))
            self.conv.bias.fill_(0.1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_a_neuron_is_visualised_as_the_pattern_its_kernel_detects():
    k0, k1 = _grating(True), _grating(False)
    net = Detectors(k0, k1)
    patches = {}
    for c in (0, 1):
        r = visualize(net, neuron("conv", c), GREY, steps=150, lr=0.1, transforms=None, progress=False)
        patches[c] = r.images[0, 0, 5:10, 5:10]  # the centre neuron sees these 5 x 5 pixels
    # a linear unit is maximised by the image that is `high` where its weight is positive, `low` where negative
    assert _corr(patches[0], k0) > 0.9 and _corr(patches[1], k1) > 0.9
    assert abs(_corr(patches[1], k0)) < 0.3 and abs(_corr(patches[0], k1)) < 0.3  # the control channel
    assert float(patches[0][k0 > 0].mean() - patches[0][k0 < 0].mean()) > 0.6


def test_a_channel_is_visualised_as_stripes_of_its_orientation_under_the_standard_transforms():
    edge = torch.tensor([[-1.0, 0.0, 1.0]] * 3)
    net = Detectors(edge, edge.T)
    spec = ImageSpec(1, 28, 28)
    f = torch.fft.fftfreq(28).abs()
    along_x = f[None, :] > f[:, None]  # frequencies that vary more along x than along y
    along_y = f[:, None] > f[None, :]
    for c, vertical in ((0, True), (1, False)):
        r = visualize(net, f"relu:{c}", spec, steps=120, seed=1, progress=False)
        img = r.images[0, 0]
        power = torch.fft.fft2(img - img.mean()).abs() ** 2
        ratio = float(power[along_x].sum() / power[along_y].sum())
        assert (ratio if vertical else 1 / ratio) > 2.5, (c, ratio)  # vertical stripes vary along x


def test_colour_channels_are_found_with_decorrelated_colour_and_with_maco():
    # channel 0 = red - green, channel 1 = blue - red, on every pixel
    k = torch.zeros(2, 3, 1, 1)
    k[0, 0], k[0, 1], k[1, 2], k[1, 0] = 1.0, -1.0, 1.0, -1.0
    net = Detectors(k[0], k[1], in_ch=3)
    spec = ImageSpec(3, 16, 16, low=-1.0, high=1.0)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(64, 1, 16, 16, generator=g)
    train = (torch.cat([base, 0.5 * base + 0.5 * torch.rand(64, 1, 16, 16, generator=g),
                        torch.rand(64, 1, 16, 16, generator=g)], 1) * 2 - 1).clamp(-1, 1)
    for c, plus, minus in ((0, 0, 1), (1, 2, 0)):
        r = visualize(net, channel("conv", c), spec, images=train, steps=100, lr=0.1, transforms=None, progress=False)
        assert r.settings["decorrelated_color"] is True
        m = r.images[0].mean(dim=(1, 2))
        assert float(m[plus] - m[minus]) > 1.0, (c, m)  # of at most 2 (from -1 to 1)
        # MACO keeps each colour's mean near the training images' (its DC magnitude is theirs): it
        # can only gain a little here, but it must gain
        r = visualize(net, channel("conv", c), spec, param="maco", images=train, steps=60, lr=0.1,
                      transforms=None, progress=False)
        assert float(r.values[-1]) > float(r.values[0]) and r.images.shape == (1, 3, 16, 16)


@pytest.mark.slow
def test_optimised_images_beat_random_and_dataset_images(tmp_path, monkeypatch):
    import mechscope as ms
    from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    ms.zoo.train("fmnist-cnn", quick=True, progress=False)
    net = ms.load("zoo:fmnist-cnn-quick")
    spec = ImageSpec(1, 28, 28)
    layer = feature_layer(net, "relu2", spec)
    data = as_input(fashion_mnist("test")[0][:2000])
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        best_data = channel_activations(net, data, layer).mean(dim=(2, 3)).max(0).values  # (16,)
        best_noise = channel_activations(net, noise, layer).mean(dim=(2, 3)).max(0).values
    acts = torch.stack([visualize(net, f"relu2:{c}", spec, progress=False).activation[0] for c in range(16)])
    # the defaults (Fourier, Lucid's transforms, 256 steps): gradient ascent can stop in a local optimum
    # (a sparse channel of this briefly trained network does), so the claim is for most channels
    assert int((acts > best_data).sum()) >= 12 and int((acts > best_noise).sum()) >= 15, (acts, best_data)
    assert float((acts / best_data.clamp_min(1e-6)).median()) > 1.1


def test_the_result_activation_is_the_objective_read_through_mechscope_run():
    torch.manual_seed(0)
    net = FashionCNN(8, 16, 32)
    spec = ImageSpec(1, 28, 28)
    r = visualize(net, channel("conv2", 2) + 0.5 * neuron("relu1", 1), spec, steps=10, batch=2, progress=False)
    with torch.no_grad():
        want = (channel_activations(net, r.images, feature_layer(net, "conv2", spec), 2).mean(dim=(1, 2))
                + 0.5 * channel_activations(net, r.images, feature_layer(net, "relu1", spec), 1)[:, 14, 14])
    torch.testing.assert_close(r.activation, want)
    assert r.values.shape == (10,) and net.training  # the network's mode is restored


def test_each_submodules_mode_is_restored_and_statistics_stay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.BatchNorm2d(4), nn.ReLU())
    net.train()
    net[4].eval()  # a frozen batch norm inside a training network
    modes = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    visualize(net, channel("5", 1), GREY, steps=3, batch=2, progress=False)
    assert [m.training for m in net.modules()] == modes == [True, True, True, True, True, False, True]
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_a_map_read_before_an_in_place_relu_keeps_its_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 4, 3, padding=1)).eval()
    x = torch.randn(2, 1, 15, 15)
    with torch.no_grad():
        bn = net[1](net[0](x))
        out = net[3](torch.relu(bn))
    assert bool((bn < 0).any())  # the in-place ReLU would change it
    with torch.no_grad(), FeatureReader(net, ["1", "3"], probe=GREY.blank(1)) as read:
        maps = read(x)
    torch.testing.assert_close(maps["1"], bn, rtol=0, atol=0)
    torch.testing.assert_close(maps["3"], out, rtol=0, atol=0)
    r = visualize(net, channel("1", 0) + neuron("3", 1), GREY, steps=4, batch=2, progress=False)
    with torch.no_grad():
        bn = net[1](net[0](r.images))
        want = bn[:, 0].mean(dim=(1, 2)) + net[3](torch.relu(bn))[:, 1, 7, 7]
    torch.testing.assert_close(r.activation, want)


def test_same_seed_same_images_other_seed_other_images():
    torch.manual_seed(0)
    net = FashionCNN(8, 16, 32).eval()
    spec = ImageSpec(1, 28, 28)

    def run(seed, param="fourier"):
        return visualize(net, "relu2:1", spec, steps=8, seed=seed, batch=2, param=param, progress=False,
                         images=torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(9)))
    for param in ("fourier", "pixel", "maco"):
        a, b = run(0, param), run(0, param)
        assert torch.equal(a.images, b.images) and torch.equal(a.values, b.values)
        assert not torch.equal(a.images, run(1, param).images)


def test_maco_keeps_the_magnitude_spectrum_it_was_given():
    torch.manual_seed(0)
    net = FashionCNN(8, 16, 32).eval()
    spec = ImageSpec(1, 28, 28)
    train = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(3)) ** 2
    r = visualize(net, "relu2:4", spec, param="maco", images=train, steps=60, progress=False)
    assert float(r.values[-1]) > float(r.values[0])
    # undo the sigmoid: the standardised image, whose spectrum is the given magnitude up to one scale
    y = r.images[0].double().clamp(1e-9, 1 - 1e-9)
    logit = torch.log(y / (1 - y))
    got = torch.fft.rfft2(logit, norm="ortho").abs()
    want = mean_spectrum(train).double()
    # the columns of frequency 0 and W/2 along x hold each frequency twice (f and -f), which the inverse
    # transform of a real image merges, so only the other columns keep their magnitude exactly
    ratio = (got / want)[:, :, 1:14]
    assert float(ratio.std() / ratio.mean()) < 1e-3


def test_fourier_parameterisation_is_a_scaled_inverse_spectrum():
    spec = ImageSpec(1, 8, 8)
    p = FourierParam(spec, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p.spectrum.zero_()
        assert torch.allclose(p(), torch.full((1, 1, 8, 8), 0.5))  # sigmoid(0): mid-grey
        p.spectrum[0, 0, 0, 2, 0] = 1.0  # one cosine of 2 cycles along x
        x = torch.logit(p()[0, 0].double())
    cos = torch.cos(2 * torch.pi * 2 * torch.arange(8) / 8).double()[None, :].expand(8, 8)
    assert _corr(x, cos) > 0.9999
    assert float(frequencies(8, 8)[0, 2]) == pytest.approx(0.25)


def test_color_correlation_is_a_square_root_of_the_covariance():
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.2, 0.3, 0.9]])
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(200, 3, 8, 8, generator=g))
    m = color_correlation(images).double()
    pix = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
    cov = torch.cov(pix.T)
    k = (m @ m.T)[0, 0] / cov[0, 0]
    torch.testing.assert_close(m @ m.T, k * cov)
    assert float(m.norm(dim=0).max()) == pytest.approx(1.0)


def test_transforms():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 12, generator=g)
    assert Pad(2)(x, g, fill=0.25).shape == (2, 3, 16, 16) and float(Pad(2)(x, g, fill=0.25)[0, 0, 0, 0]) == 0.25
    crop = Jitter(3)(x, torch.Generator().manual_seed(5))
    dy, dx = (int(v) for v in torch.randint(4, (2,), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(crop, x[..., dy:dy + 9, dx:dx + 9])
    assert torch.equal(RandomScale([1.0])(x, g), x)
    # a quarter turn of a square image moves pixel centres onto pixel centres: equal to rot90 (counter-clockwise)
    turned = RandomRotate([90])(x, g)
    torch.testing.assert_close(turned, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5, rtol=0)
    # zooming in by 2 about the centre: the middle is magnified, the corners uncover the fill
    out = RandomScale([0.5])(torch.ones(1, 1, 8, 8), g, fill=0.0)
    assert float(out[0, 0, 4, 4]) == pytest.approx(1.0) and float(out[0, 0, 0, 0]) == pytest.approx(0.0)
    t = standard_transforms(ImageSpec(1, 28, 28))
    a = t(x, torch.Generator().manual_seed(1))
    b = t(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and isinstance(t, Compose)


def test_standard_transforms_have_the_documented_pixel_sizes():
    # pad size/16, jitter size/14, jitter size/28 (each at least 1): at 224 pixels Pad(14), Jitter(16),
    # Jitter(8) against Lucid's pad 12, jitter 8, jitter 4
    for size, want in ((28, (2, 2, 1)), (224, (14, 16, 8)), (8, (1, 1, 1))):
        s = standard_transforms(ImageSpec(1, size, size)).settings()["transforms"]
        assert [x["transform"] for x in s] == ["Pad", "Jitter", "RandomScale", "RandomRotate", "Jitter"]
        assert (s[0]["width"], s[1]["d"], s[4]["d"]) == want


class _TinyDictionary:
    """encode: (..., C) -> (..., 3): relu of a fixed linear map."""

    def __init__(self, c: int):
        self.w = torch.arange(3 * c, dtype=torch.float32).reshape(c, 3) / (3 * c) - 0.4

    def encode(self, x):
        return torch.relu(x @ self.w)


class _MetaDictionary(nn.Module):
    """A dictionary whose parameters live on the meta device: encode checks its input was moved there and
    returns, on the CPU, a known function of the input's shape (meta tensors hold no values)."""

    def __init__(self, c: int):
        super().__init__()
        self.w = nn.Parameter(torch.empty(c, 3, device="meta"))

    def encode(self, x):
        assert x.device == self.w.device, f"encode got a tensor on {x.device}, its parameters are on {self.w.device}"
        return torch.full((*x.shape[:-1], 3), float(x.shape[-1]))


def test_a_latent_objective_encodes_on_the_dictionarys_device():
    a = torch.randn(2, 4, 3, 3, requires_grad=True)
    obj = latent("A", _MetaDictionary(4), 1).bind({"A": FeatureLayer("A", 4, 3, 3, nn.Identity())})
    got = obj.value({"A": a})
    assert got.device == a.device
    torch.testing.assert_close(got, torch.full((2,), 4.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device beside the CPU")
def test_a_cpu_dictionary_drives_a_cuda_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()).cuda()
    d = nn.Linear(4, 3)
    d.encode = d.forward  # a dictionary on the CPU
    r = visualize(net, latent("1", d, 2), GREY, steps=3, progress=False)
    with torch.no_grad():
        want = d(net(r.images.cuda()).permute(0, 2, 3, 1).cpu())[..., 2].mean(dim=(1, 2))
    torch.testing.assert_close(r.activation, want, rtol=1e-5, atol=1e-6)


def test_objectives_equal_their_definitions():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 5, 6, generator=g)
    b = torch.randn(3, 2, 5, 5, generator=g)
    acts = {"A": a, "B": b}
    v = torch.randn(4, generator=g)
    d = _TinyDictionary(4)
    torch.testing.assert_close(channel("A", 1).value(acts), a[:, 1].mean(dim=(1, 2)))
    torch.testing.assert_close(neuron("B", 1).value(acts), b[:, 1, 2, 2])
    torch.testing.assert_close(neuron("A", 0, 1, 4).value(acts), a[:, 0, 1, 4])
    by_loop = torch.stack([sum(float(v[c]) * a[i, c] for c in range(4)).mean() for i in range(3)])
    torch.testing.assert_close(direction("A", v).value(acts), by_loop)
    by_loop = torch.stack([torch.stack([d.encode(a[i, :, y, x])[2] for y in range(5) for x in range(6)]).mean()
                           for i in range(3)])
    torch.testing.assert_close(latent("A", d, 2).value(acts), by_loop)
    grams = [F_norm(a[i].reshape(4, -1) @ a[i].reshape(4, -1).T) for i in range(3)]
    by_loop = torch.tensor([-sum(float((grams[i] * grams[j]).sum()) for j in range(3) if j != i) / 2
                           for i in range(3)])
    torch.testing.assert_close(diversity("A").value(acts), by_loop)
    same = {"A": a[:1].expand(3, -1, -1, -1)}
    torch.testing.assert_close(diversity("A").value(same), -torch.ones(3))
    combo = channel("A", 1) + 2 * neuron("B", 0) - 0.5 * channel("A", 3)
    torch.testing.assert_close(combo.value(acts), a[:, 1].mean((1, 2)) + 2 * b[:, 0, 2, 2] - 0.5 * a[:, 3].mean((1, 2)))
    assert set(combo.layers()) == {"A", "B"}
    assert combo.describe() == "channel(A, 1) + 2 * neuron(B, 0) - 0.5 * channel(A, 3)"
    assert (-channel("A", 0)).describe() == "-channel(A, 0)"


def F_norm(m):
    return m / m.norm()


def test_a_neuron_position_follows_the_centre_of_a_padded_map():
    torch.manual_seed(0)
    net = FashionCNN(8, 16, 32)
    spec = ImageSpec(1, 28, 28)
    obj = neuron("conv1", 0, 3, 20).bind({"conv1": feature_layer(net, "conv1", spec)})
    a = torch.randn(1, 8, 32, 32)  # the map of an image padded by 2 pixels
    torch.testing.assert_close(obj.value({"conv1": a}), a[:, 0, 5, 22])


@pytest.mark.parametrize("call, words", [
    (lambda net: visualize(net, "fc1:0", ImageSpec(1, 28, 28)), ["not a feature map", "conv1, relu1, pool1"]),
    (lambda net: visualize(net, "relu2:16", ImageSpec(1, 28, 28)), ["16 channels", "0 to 15"]),
    (lambda net: visualize(net, "relu2", ImageSpec(1, 28, 28)), ["LAYER:CHANNEL", "relu2:0"]),
    (lambda net: visualize(net, "relu2:0", ImageSpec(1, 32, 32)), ["cannot take images of shape (1, 32, 32)"]),
    (lambda net: visualize(net, "relu2:0", ImageSpec(1, 28, 28), param="maco"), ["images=", "fashion_mnist"]),
    (lambda net: visualize(net, "relu2:0", ImageSpec(1, 28, 28), param="lowres"), ["pixel, fourier, maco"]),
    (lambda net: visualize(net, neuron("relu2", 0, 14, 0), ImageSpec(1, 28, 28)), ["y 0 to 13"]),
    (lambda net: visualize(net, direction("relu2", torch.ones(3)), ImageSpec(1, 28, 28)), ["16 values"]),
    (lambda net: visualize(net, latent("relu2", _TinyDictionary(16), 3), ImageSpec(1, 28, 28)), ["3 latents"]),
    (lambda net: visualize(net, latent("relu2", _TinyDictionary(5), 0), ImageSpec(1, 28, 28)), ["does not take"]),
    (lambda net: MacoParam(ImageSpec(1, 28, 28), torch.ones(28, 28)), ["(1, 28, 15)", "mean_spectrum"]),
])
def test_bad_input_names_the_valid_choices(call, words):
    torch.manual_seed(0)
    with pytest.raises(VisionInputError) as err:
        call(FashionCNN(8, 16, 32))
    for w in words:
        assert w in str(err.value)


def test_the_reader_stops_after_the_deepest_layer_read():
    torch.manual_seed(0)
    net = FashionCNN(8, 16, 32)
    net.fc1.register_forward_hook(lambda *_: (_ for _ in ()).throw(AssertionError("fc1 ran")))
    with FeatureReader(net, ["relu1", "conv2"]) as read:
        maps = read(torch.rand(2, 1, 40, 40))  # a size the classifier head could not take
    assert maps["relu1"].shape == (2, 8, 40, 40) and maps["conv2"].shape == (2, 16, 20, 20)


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        idat += body if kind == b"IDAT" else b""
        pos += 12 + n
    return head[0], head[1], head[3], zlib.decompress(idat)


def test_save_and_load_round_trip_and_the_png(tmp_path):
    torch.manual_seed(0)
    net = FashionCNN(8, 16, 32)
    r = visualize(net, "relu2:3", ImageSpec(1, 28, 28), steps=5, batch=2, progress=False)
    back = FeatureVis.load(r.save(tmp_path / "v", png_scale=2))
    assert torch.equal(back.images, r.images) and torch.equal(back.values, r.values)
    assert torch.equal(back.activation, r.activation)
    assert back.settings == r.settings and back.seconds == r.seconds and back.spec == ImageSpec(1, 28, 28)
    w, h, colour, raw = _decode_png((tmp_path / "v" / "featvis.png").read_bytes())
    assert (w, h, colour) == (2 * 56 + 2, 56, 0)
    first = torch.tensor(list(raw[1:1 + 56]), dtype=torch.uint8)  # row 0 of the first image, filter byte 0
    want = (r.images[0, 0, 0].clamp(0, 1) * 255).round().to(torch.uint8).repeat_interleave(2)
    assert raw[0] == 0 and torch.equal(first, want)
    write_png(tmp_path / "rgb.png", torch.rand(1, 3, 4, 5), ImageSpec(3, 4, 5))
    assert _decode_png((tmp_path / "rgb.png").read_bytes())[:3] == (5, 4, 2)


def test_a_resnet_style_network_with_in_place_relus_and_batch_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), BasicBlock(8), BasicBlock(8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    net.train()
    stats = net[2].bn1.running_mean.clone()
    spec = ImageSpec(3, 16, 16, low=-1.0, high=1.0)
    r = visualize(net, "3.relu:2", spec, steps=40, batch=2, progress=False)
    assert float(r.values[-1]) > float(r.values[0]) and r.images.shape == (2, 3, 16, 16)
    assert torch.equal(net[2].bn1.running_mean, stats) and net.training  # eval mode during, restored after
    with torch.no_grad():
        net.eval()
        direct = net[3](net[2](net[1](net[0](r.images))))[:, 2].mean(dim=(1, 2))
    torch.testing.assert_close(r.activation, direct)


def test_a_module_called_twice_is_read_at_its_last_call_as_mechscope_run_does():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BasicBlock(8)).eval()
    spec = ImageSpec(3, 8, 8)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        by_run = channel_activations(net, x, feature_layer(net, "1.relu", spec))
        with FeatureReader(net, ["1.relu"], probe=spec.blank(1)) as read:
            got = read(x)["1.relu"]
        torch.testing.assert_close(got, by_run)
        torch.testing.assert_close(got, net(x))
