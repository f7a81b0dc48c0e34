"""`mechscope vis`: bad input exits with status 2 and a message naming the valid choices; a channel and a
whole layer of the zoo's networks and of a network from a local file are written as a vision artifact that
the report and viewer read."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from mechscope import artifacts as A
from mechscope.cli import main
from mechscope.cli_vis import conv_chain
from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist
from mechscope.zoo.recipes.fmnist_resnet import FashionResNet


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `mechscope ARGS` in this process as the console script does; (exit status, stdout + stderr).
    The last line is stdout's last line."""
    monkeypatch.setattr(sys, "argv", ["mechscope", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.err + out.out


NET = textwrap.dedent('''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.conv2(self.relu(self.conv1(x)))), 1))
''')


@pytest.fixture
def own(tmp_path):
    """A network of one's own: its file, weights and a few dataset images of 3 x 16 x 16 in [-1, 1]."""
    (tmp_path / "tiny.py").write_text(NET)
    ns: dict = {}
    exec(NET, ns)
    torch.manual_seed(0)
    save_file(ns["Tiny"]().state_dict(), str(tmp_path / "tiny.safetensors"))
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    save_file({"images": images, "labels": torch.arange(40) % 2}, str(tmp_path / "images.safetensors"))
    return tmp_path, images


def test_bad_input_exits_with_status_2_naming_the_choices(monkeypatch, capsys, own, tmp_path):
    root, _ = own
    mine = ["--module", f"{root / 'tiny.py'}:Tiny", "--weights", str(root / "tiny.safetensors")]
    cases = [
        (["fmnist-cnn-quick", "fc1"], ["'fc1'", "not a feature map", "conv1, relu1, pool1, conv2, relu2, pool2"]),
        (["fmnist-cnn-quick", "conv2:16"], ["channel 16 is out of range", "16 channels (0 to 15)"]),
        (["fmnist-cnn-quick", "conv9"], ["'conv9' is not a submodule", "conv1, relu1"]),
        (["tms", "conv1"], ["not a zoo image network", "fmnist-cnn, fmnist-cnn-quick, fmnist-resnet"]),
        (["mine", "conv1", *mine, "--image", "1x16x16"], ["cannot take images of shape (1, 16, 16)"]),
        (["mine", "conv1", *mine], ["needs --module FILE.py:ClassName, --weights", "--image CxHxW"]),
        (["mine", "conv1", *mine, "--image", "3x16"], ["CHANNELSxHEIGHTxWIDTH"]),
        (["fmnist-cnn-quick", "conv2", "--steps", "0"], ["must be whole numbers >= 1"]),
        (["fmnist-cnn-quick", "conv2", "--device", "cuda:7"], ["device 'cuda:7' is not available"]),
    ]
    for args, words in cases:
        code, text = _main(monkeypatch, capsys, "vis", *args, "--out", str(tmp_path / "out"))
        flat = " ".join(text.split())
        assert code == 2 and "Traceback" not in text, (args, text)
        for w in words:
            assert w in flat, (args, w, flat)
    assert not (tmp_path / "out").exists()  # nothing written before the input is known to be good


def test_a_channel_of_the_zoo_cnn(monkeypatch, capsys, tmp_path):
    out = tmp_path / "vis"
    code, text = _main(monkeypatch, capsys, "vis", "fmnist-cnn-quick", "conv2:5", "--out", str(out), "--steps", "8",
                       "--examples", "3", "--dataset", "600", "--json")
    assert code == 0, text
    written = json.loads(text.strip().splitlines()[-1])
    m = A.read_artifacts(out).model("zoo:fmnist-cnn-quick")
    v = m.vision("conv2-ch5")
    assert (v["layer"], v["channel"], v["network"]["image"]) == ("conv2", 5, [1, 28, 28])
    titles = [p["title"] for p in v["panels"]]
    assert titles[:5] == ["Feature visualisation", "Dataset examples: top 3", "Dataset examples: top 3, receptive-field crops",
                          "Dataset examples: bottom 3", "Dataset examples: bottom 3, receptive-field crops"]
    assert {"First-layer filters (conv1)", "Circuit: the strongest inputs from relu1", "Tuning: oriented edges",
            "Tuning: gratings", "Orientation"} <= set(titles)
    counts = {p["title"]: len(p.get("images", [])) for p in v["panels"]}
    assert counts["Feature visualisation"] == 4 and counts["First-layer filters (conv1)"] == 8
    assert written["images"] == sum(counts.values()) == 4 + 4 * 3 + 8 + 8
    # the top example is the image whose conv2 channel 5 peaks highest, computed here by hand
    net = m.root  # noqa: F841  (the artifact directory stays the only input of the views)
    from mechscope.vision.networks import zoo_network

    module = zoo_network("fmnist-cnn-quick", progress=False).module
    x = as_input(fashion_mnist("test")[0][:600])
    with torch.no_grad():
        peak = module.conv2(module.pool1(module.relu1(module.conv1(x))))[:, 5].amax((1, 2))
    top = v["panels"][1]["images"][0]["caption"]
    assert top.endswith(f"{float(peak.max()):.3g}"), (top, float(peak.max()))
    assert (out / "report.html").is_file() and "conv2-ch5" in (out / "report.html").read_text()
    assert (m.path / "vision" / "conv2-ch5" / "data" / "featvis").is_dir()  # the results themselves, reloadable
    # run again with fewer examples: the target's files are replaced, none is left over
    code, text = _main(monkeypatch, capsys, "vis", "fmnist-cnn-quick", "conv2:5", "--out", str(out), "--steps", "8",
                       "--examples", "2", "--dataset", "600", "--no-report")
    assert code == 0, text
    v = m.vision("conv2-ch5")
    listed = {im["file"].rsplit("/", 1)[1] for p in v["panels"] for im in p.get("images", [])}
    assert listed == {p.name for p in (m.path / "vision" / "conv2-ch5").glob("*.png")} and len(listed) == 4 + 4 * 2 + 8 + 8


def test_a_whole_layer_of_the_zoo_resnet(monkeypatch, capsys, tmp_path):
    out = tmp_path / "vis"
    code, text = _main(monkeypatch, capsys, "vis", "fmnist-resnet-quick", "layer1.0.conv2", "--out", str(out), "--steps",
                       "4", "--channels", "3", "--no-report")
    assert code == 0, text
    v = A.read_artifacts(out).model("zoo:fmnist-resnet-quick").vision("layer1.0.conv2")
    assert v["channel"] is None
    grid = v["panels"][0]
    assert [im["caption"].split()[0] for im in grid["images"]] == ["layer1.0.conv2:0", "layer1.0.conv2:1",
                                                                   "layer1.0.conv2:2"]
    titles = [p["title"] for p in v["panels"]]
    assert "Most orientation-selective channels (edges)" in titles and "Equivariance families" in titles
    assert "First-layer filters (conv1)" in titles
    mod = next(p for p in v["panels"] if p["title"].startswith("Modularity"))
    assert mod["values"]["layers"] == "conv1, layer1.0.conv1, layer1.0.conv2"
    assert not (out / "report.html").exists()


def test_conv_chain_follows_the_main_path():
    net = FashionResNet((4, 8, 16))
    assert conv_chain(net, "layer3.0.conv2") == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                                                 "layer2.0.conv2", "layer3.0.conv1", "layer3.0.conv2"]
    assert conv_chain(net, "layer1.0.relu1") == ["conv1", "layer1.0.conv1"]


def test_a_network_from_a_local_file(monkeypatch, capsys, own, tmp_path):
    root, images = own
    out = tmp_path / "vis"
    code, text = _main(monkeypatch, capsys, "vis", "tiny", "conv2:4", "--module", f"{root / 'tiny.py'}:Tiny",
                       "--weights", str(root / "tiny.safetensors"), "--image", "3x16x16", "--range", "-1,1",
                       "--images", str(root / "images.safetensors"), "--steps", "4", "--examples", "2", "--out", str(out))
    assert code == 0, text
    v = A.read_artifacts(out).model("tiny").vision("conv2-ch4")
    assert v["network"]["source"] == f"{root / 'tiny.py'}:Tiny" and v["network"]["range"] == [-1.0, 1.0]
    top = next(p for p in v["panels"] if p["title"] == "Dataset examples: top 2")
    assert [im["width"] for im in top["images"]] == [16, 16]
    circuit = next(p for p in v["panels"] if p["title"].startswith("Circuit"))
    assert circuit["title"] == "Circuit: the strongest inputs from relu" and len(circuit["images"]) == 4
    assert "Skipped" not in [p["title"] for p in v["panels"]]


SMOOTH = textwrap.dedent('''
    import torch
    from torch import nn

    class Smooth(nn.Module):
        """tanh on the image and between the convolutions: nothing here has expanded weights"""
        def __init__(self):
            super().__init__()
            self.squash = nn.Tanh()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.act = nn.Tanh()
            self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.conv2(self.act(self.conv1(self.squash(x))))), 1))
''')


def test_pieces_a_tanh_network_does_not_allow_are_skipped_with_the_reason(monkeypatch, capsys, tmp_path):
    (tmp_path / "smooth.py").write_text(SMOOTH)
    ns: dict = {}
    exec(SMOOTH, ns)
    torch.manual_seed(0)
    save_file(ns["Smooth"]().state_dict(), str(tmp_path / "smooth.safetensors"))
    mine = ["--module", f"{tmp_path / 'smooth.py'}:Smooth", "--weights", str(tmp_path / "smooth.safetensors"),
            "--image", "1x16x16", "--steps", "2", "--out", str(tmp_path / "vis"), "--no-report", "--json"]
    for target, name in (("conv2:1", "conv2-ch1"), ("conv2", "conv2")):
        code, text = _main(monkeypatch, capsys, "vis", "smooth", target, *mine, "--channels", "1")
        assert code == 0 and "Traceback" not in text, text
        written = json.loads(text.strip().splitlines()[-1])
        v = A.read_artifacts(tmp_path / "vis").model("smooth").vision(name)
        why = dict(next(p for p in v["panels"] if p["title"] == "Skipped")["rows"])
        assert "first-layer filters" in written["skipped"] and "nonlinear" in why["first-layer filters"]
        titles = [p["title"] for p in v["panels"]]
        assert titles[0].startswith("Feature visualisation") and not any(t.startswith("First-layer") for t in titles)
        if target == "conv2:1":
            assert "the channel's circuit" in written["skipped"] and "tanh" in why["the channel's circuit"]
            assert not any(t.startswith("Circuit") for t in titles)
            assert {"Tuning: oriented edges", "Tuning: gratings", "Orientation"} <= set(titles)  # they do apply
        else:
            assert "Most orientation-selective channels (edges)" in titles
