"""Probes, concept erasure and the probe-vs-feature comparison, on data with a planted concept."""

import pytest
import torch

from mechscope.features.probes import compare, fit_probe, leace, roc_auc

G = torch.Generator().manual_seed(0)
N, D = 600, 12
LABELS = (torch.rand(N, generator=G) < 0.5).float()
DIRECTION = torch.randn(D, generator=G)
X = torch.randn(N, D, generator=G) + 1.5 * LABELS[:, None] * DIRECTION / DIRECTION.norm()


def test_roc_auc_known_answers():
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.tensor([0, 1, 0, 1])) == 0.5
    with pytest.raises(ValueError, match="both"):
        roc_auc(torch.tensor([1.0]), torch.tensor([1]))


def test_probe_finds_the_planted_direction():
    probe = fit_probe(X[:400], LABELS[:400])
    assert roc_auc(probe.logits(X[400:]), LABELS[400:]) > 0.8
    w = probe.w / probe.scale
    cos = float(w @ DIRECTION / (w.norm() * DIRECTION.norm()))
    assert cos > 0.8


def test_leace_removes_all_linear_information():
    eraser = leace(X, LABELS)
    erased = eraser(X.double())
    zc = LABELS.double() - LABELS.double().mean()
    cov = (erased - erased.mean(0)).T @ zc / N
    assert cov.abs().max() < 1e-10  # no linear function of the erased data covaries with the concept
    # fitted on one half, the eraser leaves a probe on the other half near chance
    half = leace(X[:400], LABELS[:400])
    probe = fit_probe(half(X[:400].double()).float(), LABELS[:400])
    assert abs(roc_auc(probe.logits(half(X[400:].double()).float()), LABELS[400:]) - 0.5) < 0.1
    # the rest of the data is left alone: the change lies in a rank-1 subspace
    assert torch.linalg.matrix_rank(erased - X.double(), atol=1e-8) == 1


def test_compare_probe_with_the_best_feature():
    feats = torch.stack([torch.randn(N, generator=G), X @ DIRECTION / DIRECTION.norm(), -X[:, 0]], dim=1)
    c = compare(X, LABELS, feats, torch.arange(400), torch.arange(400, 600))
    assert c.best_feature == 1 and c.best_feature_auc > 0.8 and c.probe_auc > 0.8 and c.n_test == 200
