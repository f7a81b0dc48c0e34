"""A first convolution as polynomial detectors: exact on a network whose kernels are such detectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechscope as ms
from mechscope.causal.scrub import scrub
from mechscope.circuits.conv_code import conv_hypothesis, polynomial_filters


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.conv1(x)))))


def test_polynomial_filters_are_orthonormal_and_signed():
    f = polynomial_filters(3, 2).flatten(1)
    assert torch.allclose(f @ f.T, torch.eye(6, dtype=f.dtype), atol=1e-12)
    assert f[1].reshape(3, 3)[:, 2].sum() > 0  # d/dx grows to the right


@pytest.mark.parametrize("degree", [1, 2])
def test_detectors_recover_a_network_made_of_them_exactly(degree):
    torch.manual_seed(0)
    net = Small()
    with torch.no_grad():  # kernels inside the span of the degree-1 filters: edges and brightness
        coef = torch.randn(3, 4)
        net.conv1.weight.copy_(torch.einsum("tc,tij->cij", coef, polynomial_filters(3, 1).float())[:, None])
    model = ms.wrap(net)
    train, test = torch.rand(64, 1, 8, 8), torch.rand(128, 1, 8, 8)
    labels = net(test).argmax(-1)
    hyp = conv_hypothesis(model, "conv1", train, degree=degree)
    got = scrub(model, hyp, test, "mean", labels=labels, n_boot=50)
    assert abs(got.recovered.value - 1) <= 1e-4
    assert hyp.size.numbers == 4 * (3 if degree == 1 else 6) + 4
    assert hyp.info["fit_r2_train"] > 0.9999


def test_detectors_fall_short_on_a_kernel_outside_their_span():
    torch.manual_seed(0)
    net = Small()
    model = ms.wrap(net)
    train, test = torch.rand(64, 1, 8, 8), torch.rand(128, 1, 8, 8)
    ref = net(test).detach()

    def kl(out, ref):  # the network's own output distribution: 0 exactly for the network itself
        return (ref.log_softmax(-1).exp() * (ref.log_softmax(-1) - out.log_softmax(-1))).sum(-1).double()

    got = scrub(model, conv_hypothesis(model, "conv1", train, degree=0), test, "zero", labels=ref, loss=kl, n_boot=50)
    assert got.recovered.value < 0.999
    with pytest.raises(ValueError, match="nn.Conv2d"):
        conv_hypothesis(model, "fc", train)
