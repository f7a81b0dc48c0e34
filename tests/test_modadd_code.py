"""Modular addition as code, on networks of other shapes trained here (not the zoo), loaded from a
safetensors file through the generic adapter: the analyses take the sites and the input encoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import mechscope as ms
from mechscope.causal.scrub import scrub
from mechscope.circuits.explanations import key_frequencies, modadd_fourier
from mechscope.circuits.explain import score
from mechscope.circuits.modadd_code import angle_sum, answer_logits, fourier_columns, modadd_hypothesis
from mechscope.circuits.modadd_layout import ModAddLayout
from mechscope.replications.grokking import progress_losses

P = 23


class Concat(nn.Module):
    """Two embedding tables concatenated into one hidden ReLU layer, then an unembedding."""

    def __init__(self, d: int = 32, h: int = 128):
        super().__init__()
        self.ea, self.eb = nn.Embedding(P, d), nn.Embedding(P, d)
        self.mlp, self.act, self.out = nn.Linear(2 * d, h), nn.ReLU(), nn.Linear(h, P)

    def forward(self, ids):
        return self.out(self.act(self.mlp(torch.cat([self.ea(ids[:, 0]), self.eb(ids[:, 1])], -1))))


class Bilinear(nn.Module):
    """A bilinear layer: (E_a[a] L) * (E_b[b] R), then an unembedding."""

    def __init__(self, d: int = 32, h: int = 64):
        super().__init__()
        self.ea, self.eb = nn.Embedding(P, d), nn.Embedding(P, d)
        self.left, self.right = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False)
        self.prod, self.out = nn.Identity(), nn.Linear(h, P, bias=False)

    def forward(self, ids):
        return self.out(self.prod(self.left(self.ea(ids[:, 0])) * self.right(self.eb(ids[:, 1]))))


def _pairs():
    a, b = torch.arange(P).repeat_interleave(P), torch.arange(P).repeat(P)
    return torch.stack([a, b], 1), (a + b) % P


def _train(cls, steps, lr, wd, tmp_path):
    """Full-batch AdamW on 80% of the pairs; saved to safetensors and loaded into a fresh module."""
    torch.manual_seed(0)
    net = cls()
    x, y = _pairs()
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(0))
    tr, te = perm[:int(0.8 * P * P)], perm[int(0.8 * P * P):]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    for _ in range(steps):
        loss = F.cross_entropy(net(x[tr]), y[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    fresh = cls()
    fresh.load_state_dict(load_file(str(path)))
    return ms.wrap(fresh.eval()), x, y, tr, te


def test_angle_sum_is_the_identity():
    a, b = torch.arange(P).repeat_interleave(P), torch.arange(P).repeat(P)
    got = angle_sum(fourier_columns(a, P, [1, 5]), fourier_columns(b, P, [1, 5]))
    assert torch.allclose(got, fourier_columns(a + b, P, [1, 5]), atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("cls,steps,lr,wd,hidden", [(Concat, 3000, 1e-2, 1.0, "act"), (Bilinear, 2000, 3e-3, 1.0, "prod")])
def test_modadd_analyses_on_a_network_of_another_shape(cls, steps, lr, wd, hidden, tmp_path):
    torch.set_num_threads(1)
    model, x, y, tr, te = _train(cls, steps, lr, wd, tmp_path)
    assert (model.module(x[te]).argmax(-1) == y[te]).float().mean() == 1.0  # it generalised
    layout = ModAddLayout.pair_ids(P, embeds=(("ea", None), ("eb", None)), neurons=hidden, hidden=hidden,
                                   logits="out")
    # a small network: fewer neurons per frequency than the zoo's 512 (min_neurons, share lowered for it)
    freqs = key_frequencies(model, layout=layout, min_neurons=3, share=0.6)
    assert 2 <= len(freqs) <= 8

    # the whole network as code: >= 99% of the loss on held-out pairs against mean and resample ablation
    hyp = modadd_hypothesis(model, layout, freqs=freqs, train_inputs=x[tr])
    assert [p.component.label for p in hyp.parts] == ["ea", "eb", hidden, "out"]
    for ablation in ("mean", "resample"):
        got = scrub(model, hyp, x[te], ablation, labels=y[te], n_boot=100, each=False)
        assert got.recovered.value >= 0.99, str(got)
    assert hyp.size.numbers == sum(int(t.numel()) for p in hyp.parts for t in p.numbers.values())

    # restricted and excluded loss from the answer logits over every pair (the grokking replication's)
    logits, labels = answer_logits(model, layout)
    assert torch.equal(logits, model.module(x))
    losses = progress_losses(logits, labels, tr, P, freqs)
    assert losses["restricted_loss"] < 1.0 < losses["excluded_loss"]

    # the Fourier explanation of the hidden layer, through the same layout
    expl = modadd_fourier(model, freqs, train_inputs=x[tr], layout=layout, site=hidden)
    assert 0 < expl.info["fit_r2"] <= 1
    s = score(model, x[te], None, expl, labels=y[te], n_boot=50)
    assert s.vs_mean.value > 0.9


def test_wrong_layout_is_named():
    net = Bilinear()
    layout = ModAddLayout.pair_ids(P, embeds=(("ea", None), ("eb", None)), neurons="hidden", hidden="prod",
                                   logits="out")
    with pytest.raises(Exception, match="hidden"):
        key_frequencies(ms.wrap(net), layout=layout)
