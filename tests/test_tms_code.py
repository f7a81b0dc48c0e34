"""tms as code: a toy model's geometry read as a hypothesis, checked on a freshly built network."""

from __future__ import annotations

import torch

import mechscope as ms
from mechscope.causal.scrub import scrub
from mechscope.circuits.tms_code import tms_hypothesis
from mechscope.zoo.recipes.tms import TMS, BatchFirstTMS, _groups, sample


def _network():
    torch.manual_seed(0)
    groups = {k: v for k, v in _groups(2, 1, k=2, sweep_batch=64).items() if k != "sweep"}
    tms = TMS(groups)
    with torch.no_grad():  # some features barely represented, as sparse instances leave them
        for toy in tms.groups.values():
            toy.W[..., -1] *= 0.1
            toy.b.uniform_(-0.3, 0.1)
    g = torch.Generator().manual_seed(1)
    xs = {name: sample(256, toy.feature_prob, toy.b.shape[1], g).transpose(0, 1).contiguous()
          for name, toy in tms.groups.items()}
    return tms, xs


def test_batch_first_view_is_the_network():
    tms, xs = _network()
    view = BatchFirstTMS(tms)
    out = view(**xs)
    ref = tms(**{k: v.transpose(0, 1) for k, v in xs.items()})
    for name in xs:
        assert torch.allclose(out[name], ref[name].transpose(0, 1), atol=1e-6)


def test_geometry_as_code_is_exact_and_pruning_costs_loss():
    tms, xs = _network()
    view = BatchFirstTMS(tms)
    names = view.instance_names(list(xs))
    model = ms.wrap(view)
    every = tms_hypothesis(view, threshold=0.0)  # every feature kept: the code is the network
    got = scrub(model, every, xs, "mean", loss=view.losses, labels=xs, groups=names, n_boot=50)
    assert abs(got.recovered.value - 1) <= 1e-6
    assert all(abs(s.value - 1) <= 1e-5 for s in got.groups.values())
    assert [p.component for p in got.parts] == ["groups.dense.hidden", "groups.dense.out",
                                                "groups.pentagon.hidden", "groups.pentagon.out"]
    # dropping the weak features (norm 0.1 x) loses loss in some instance, and the numbers shrink
    pruned = tms_hypothesis(view, threshold=0.5)
    low = scrub(model, pruned, xs, "mean", loss=view.losses, labels=xs, groups=names, n_boot=50, each=False)
    assert min(s.value for s in low.groups.values()) < 0.999
    assert pruned.size.numbers < every.size.numbers
    dense = every.parts[0].numbers["directions"]
    assert dense.shape == (2 * 20, 5)  # 2 instances x 20 features, each a 5-d direction
