"""Modularity: a network of two disconnected halves is found modular, with the halves as its clusters; a
shuffled copy is not; the graph, the n-cut and the save format are checked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.vision import ImageSpec, VisionInputError
from mechscope.vision.modularity import (ModularityResult, coactivation_affinity, modularity, normalised_cut,
                                         weight_layers)

LAYERS = ["conv1", "conv2", "fc"]


class Halves(nn.Module):
    """Images (batch, 2, 8, 8) -> (batch, 4); built with two disconnected halves when `split`."""

    def __init__(self, split: bool = True, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1, stride=2)  # (4, 4, 4)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 4)
        with torch.no_grad():
            for m in (self.conv1, self.conv2):
                m.bias.fill_(0.2)  # no unit is dead on noise
            if split:  # half A: colour 0 -> conv1 0-2 -> conv2 0-1 -> fc 0-1; half B the rest
                self.conv1.weight[:3, 1] = 0
                self.conv1.weight[3:, 0] = 0
                self.conv2.weight[:2, 3:] = 0
                self.conv2.weight[2:, :3] = 0
                fc = self.fc.weight.view(4, 4, 16)  # channel-major flatten of (4, 4, 4)
                fc[:2, 2:] = 0
                fc[2:, :2] = 0

    def forward(self, x):
        return self.fc(self.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x))))))


HALF_A = [0] + [2, 3, 4] + [8, 9] + [12, 13]  # nodes: inputs (2), conv1 (6), conv2 (4), fc (4)


def _data(n=300):
    return torch.randn(n, 2, 8, 8, generator=torch.Generator().manual_seed(3))


def _same_partition(labels, part):
    side = {int(labels[i]) for i in part}
    rest = {int(labels[i]) for i in range(len(labels)) if i not in part}
    return len(side) == 1 and len(rest) == 1 and side != rest


def test_two_disconnected_halves_are_modular_and_the_clusters_are_the_halves():
    res = modularity(Halves(), LAYERS, _data(), k=2, n_shuffles=20, act_layers=["relu1", "relu2", "fc"],
                     progress=False)
    w = res.weights
    assert w.ncut == 0.0
    assert _same_partition(w.labels, HALF_A)
    assert w.p_value == pytest.approx(1 / 21) and w.z_score < -5 and float(w.shuffled.min()) > 0.1
    # co-activation: the halves see independent colour channels, so they do not co-vary
    co = res.coactivation
    assert res.act_nodes[:6] == tuple(("relu1", u) for u in range(6))
    assert _same_partition(co.labels, [0, 1, 2, 6, 7, 10, 11])
    assert co.p_value == pytest.approx(1 / 21) and co.ncut < float(co.shuffled.min())


def test_a_shuffled_copy_is_not_modular():
    net = Halves()
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in weight_layers(net, LAYERS):
            flat = m.weight.reshape(-1)
            m.weight.copy_(flat[torch.randperm(flat.numel(), generator=gen)].reshape(m.weight.shape))
    res = modularity(net, LAYERS, _data(), k=2, n_shuffles=20, act_layers=["relu1", "relu2", "fc"], progress=False)
    assert res.weights.ncut > 0.1
    assert res.weights.p_value > 0.1 and res.coactivation.p_value > 0.1


def test_the_weight_graph_and_ncut_by_hand():
    net = Halves(split=False)
    res = modularity(net, LAYERS, k=2, n_shuffles=2, norm="l2", progress=False)
    a = res.weights.affinity
    assert a.shape == (16, 16) and torch.equal(a, a.T)
    assert a[2 + 4, 1].item() == pytest.approx(net.conv1.weight[4, 1].norm().item(), rel=1e-6)
    assert a[8 + 3, 2 + 5].item() == pytest.approx(net.conv2.weight[3, 5].norm().item(), rel=1e-6)
    # fc reads the flattened (4, 4, 4) map: unit 1's weights from channel 2 are entries 32..47
    assert a[12 + 1, 8 + 2].item() == pytest.approx(net.fc.weight[1, 32:48].norm().item(), rel=1e-6)
    assert a[0, 12].item() == 0.0  # no edge skips a layer
    # n-cut by its definition, on a graph small enough to write down
    g = torch.tensor([[0., 2., 1., 0.], [2., 0., 0., 0.], [1., 0., 0., 3.], [0., 0., 3., 0.]])
    labels = torch.tensor([0, 0, 1, 1])
    assert normalised_cut(g, labels) == pytest.approx(1 / 5 + 1 / 7)  # vol 3 + 2 and 4 + 3, one edge of 1 between
    assert normalised_cut(g, torch.tensor([0, 1, 2, 3])) == pytest.approx(4.0)


def test_coactivation_is_the_absolute_correlation():
    acts = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    acts[:, 1] = -2 * acts[:, 0] + 1
    acts[:, 3] = 5.0  # never varies: no edges
    c = coactivation_affinity(acts)
    want = torch.corrcoef(acts[:, :3].T).abs()
    want.fill_diagonal_(0)
    assert torch.allclose(c[:3, :3], want.float(), atol=1e-6)
    assert c[0, 1].item() == pytest.approx(1.0) and c[3].abs().sum() == 0


def test_save_load_round_trip_is_exact(tmp_path):
    res = modularity(Halves(), LAYERS, _data(60), k=2, n_shuffles=3, act_layers=["relu1", "fc"], progress=False)
    back = ModularityResult.load(res.save(tmp_path / "m"))
    for f in ("layers", "act_layers", "k", "norm", "n_shuffles", "seed", "nodes", "act_nodes"):
        assert getattr(back, f) == getattr(res, f)
    for name in ("weights", "coactivation"):
        a, b = getattr(res, name), getattr(back, name)
        for t in ("affinity", "labels", "shuffled"):
            assert torch.equal(getattr(a, t), getattr(b, t))
        assert (a.ncut, a.p_value, a.z_score) == (b.ncut, b.p_value, b.z_score)
    again = modularity(Halves(), LAYERS, _data(60), k=2, n_shuffles=3, act_layers=["relu1", "fc"], progress=False)
    assert torch.equal(again.weights.shuffled, res.weights.shuffled)  # seeded


@pytest.mark.parametrize("layers, words", [
    (["conv1", "relu1"], ["'relu1' is a ReLU", "Conv2d and Linear", "conv1, conv2, fc"]),
    (["conv1", "nope"], ["'nope' is not a submodule"]),
    (["conv2", "conv1"], ["forward order"]),
])
def test_bad_layers_are_named(layers, words):
    with pytest.raises(VisionInputError) as err:
        modularity(Halves(), layers, k=2, n_shuffles=1, progress=False)
    for w in words:
        assert w in str(err.value)


def test_images_of_another_format_are_refused():
    with pytest.raises(VisionInputError, match=r"images \(n, 2, 8, 8\) for this spec, got \(5, 2, 9, 9\)"):
        modularity(Halves(), LAYERS, torch.zeros(5, 2, 9, 9), spec=ImageSpec(2, 8, 8), k=2, n_shuffles=1,
                   progress=False)
