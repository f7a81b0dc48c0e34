"""The replications' measurements on inputs whose answers are known by construction."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mechscope.replications import Check, Replication
from mechscope.replications.grokking import (embedding_power, fourier_basis, neuron_frequencies,
                                             progress_losses)
from mechscope.replications.tms import feature_dimensionality, has_peak_near

P = 13


def test_fourier_basis_is_orthonormal():
    F = fourier_basis(P)
    torch.testing.assert_close(F @ F.T, torch.eye(P, dtype=torch.float64))


def test_neurons_made_of_one_frequency_are_found():
    a = torch.arange(P, dtype=torch.float64)[:, None]
    b = torch.arange(P, dtype=torch.float64)[None, :]
    w = lambda k: 2 * math.pi * k / P  # noqa: E731
    acts = torch.stack([torch.cos(w(3) * (a + b)) + 2,  # frequency 3 only (plus a constant)
                        torch.relu(torch.cos(w(5) * a) + torch.cos(w(5) * b)),  # ReLU of freq 5: harmonics
                        torch.cos(w(2) * a) + torch.cos(w(4) * b)], -1)  # half and half
    best, share = neuron_frequencies(acts, P)
    assert best[0] == 3 and share[0] == pytest.approx(1.0)
    assert best[1] == 5 and 0.5 < share[1] < 1.0
    assert share[2] == pytest.approx(0.5)


def test_embedding_power_of_a_pure_frequency():
    x = torch.arange(P, dtype=torch.float64)
    W_E = torch.stack([torch.cos(2 * math.pi * 4 * x / P), torch.sin(2 * math.pi * 4 * x / P)], 1)
    power = embedding_power(W_E, P)
    assert power[3] == pytest.approx(1.0) and power.sum() == pytest.approx(1.0)


def test_restricted_loss_keeps_key_frequencies_and_excluded_loss_removes_them():
    a = torch.arange(P).repeat_interleave(P)
    b = torch.arange(P).repeat(P)
    c = torch.arange(P)
    labels = (a + b) % P
    # logits = 8 * cos(w (a + b - c)) for frequencies 2 and 5: the generalising algorithm exactly
    angle = ((a + b)[:, None] - c[None, :]).double() * 2 * math.pi / P
    logits = sum(8 * torch.cos(k * angle) for k in (2, 5))
    out = progress_losses(logits, labels, torch.arange(P * P), P, [2, 5])
    assert out["restricted_loss"] == pytest.approx(out["full_loss"], rel=1e-9)
    assert out["excluded_loss"] == pytest.approx(math.log(P), rel=1e-6)  # nothing left: uniform


def test_feature_dimensionality_of_known_geometries():
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = torch.stack([torch.cos(angles), torch.sin(angles)])[None]  # (1, 2, 5)
    torch.testing.assert_close(feature_dimensionality(pentagon), torch.full((1, 5), 0.4, dtype=torch.float64))
    pair = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]])  # antipodal pair and a dead feature
    torch.testing.assert_close(feature_dimensionality(pair), torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64))
    eye = torch.eye(3)[None]
    torch.testing.assert_close(feature_dimensionality(eye), torch.ones(1, 3, dtype=torch.float64))


def test_histogram_peaks():
    values = torch.tensor([0.5] * 10 + [0.4] * 6 + [0.45] * 2 + [1.0] * 8)
    assert has_peak_near(values, 0.5) == pytest.approx(0.5)
    assert has_peak_near(values, 0.4) == pytest.approx(0.4)
    assert has_peak_near(values, 0.25) is None
    # a cluster straddling 1/2 (as trained weights give) is one bin, not two half-height ones
    jitter = torch.tensor([0.499, 0.501] * 5 + [0.47] * 4 + [0.53] * 4)
    assert has_peak_near(jitter, 0.5) == pytest.approx(0.5)
    assert has_peak_near(torch.tensor([0.36] * 9 + [0.38] * 5 + [0.4] * 3), 0.4) is None  # a shoulder is no peak
    # counting noise: a bin a little above flat neighbours is no peak; a clear excess is
    flat = [0.36] * 100 + [0.38] * 100 + [0.42] * 100 + [0.44] * 100
    assert has_peak_near(torch.tensor(flat + [0.4] * 115), 0.4) is None
    assert has_peak_near(torch.tensor(flat + [0.4] * 140), 0.4) == pytest.approx(0.4)
    # a few features in an otherwise empty stretch hold less than 1% of the values: no peak
    assert has_peak_near(torch.tensor([0.5] * 500 + [0.4] * 4), 0.4) is None


def test_replication_json_line_follows_checks_md():
    rep = Replication("demo", [Check("a", ">= 1", 2, True), Check("b", "< 0", "could not run", False)],
                      {"x": 1.5})
    line = json.loads(rep.json_line())
    assert line["kind"] == "replication" and line["pass"] is False
    assert line["checks"]["b"] == {"target": "< 0", "got": "could not run", "pass": False}
    assert set(line["machine"]) >= {"cpu_threads", "torch", "gpu"}


def test_tms_sweep_and_learning_rate_schedule():
    from mechscope import zoo

    full, short = zoo.spec("tms"), zoo.spec("tms-short")
    sweep = full.hp["groups"]["sweep"]
    assert sweep["feature_probs"][0] == 1.0 and sweep["feature_probs"][-1] == pytest.approx(0.1)
    assert len(sweep["feature_probs"]) > len(short.hp["groups"]["sweep"]["feature_probs"])  # a finer sweep
    recipe, hp = full.recipe, full.hp
    assert recipe.lr(0, hp) == pytest.approx(hp["lr"])  # cosine decay from lr to 0
    assert recipe.lr(hp["steps"] // 2, hp) == pytest.approx(hp["lr"] / 2)
    assert recipe.lr(hp["steps"] - 1, hp) < 1e-3 * hp["lr"]
