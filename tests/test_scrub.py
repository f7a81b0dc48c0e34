"""causal.scrub: hypotheses as values, checked on a network whose components are set by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mechscope.causal.scrub import ScrubError, scrub
from mechscope.core.hypothesis import AsIs, Code, Component, Hypothesis, Resampled, code_lines
from mechscope.core.passes import counting_passes
from mechscope.core.site import Site
from mechscope.models import wrap

K = 5  # inputs (a, b), each in 0..K-1; the network answers a


class Hand(nn.Module):
    """hidden = ReLU(ea[a] + eb[b]) with ea = 10 onehot(a) on units 0..K-1 and eb = 10 onehot(b) on
    units K..2K-1; out reads units 0..K-1 only: logits = 10 onehot(a). b never matters."""

    def __init__(self):
        super().__init__()
        self.ea = nn.Embedding(K, 2 * K)
        self.eb = nn.Embedding(K, 2 * K)
        self.hidden = nn.Identity()
        self.out = nn.Linear(2 * K, K, bias=False)
        with torch.no_grad():
            self.ea.weight.zero_()
            self.eb.weight.zero_()
            self.out.weight.zero_()
            for i in range(K):
                self.ea.weight[i, i] = 10.0
                self.eb.weight[i, K + i] = 10.0
                self.out.weight[i, i] = 1.0

    def forward(self, ids):
        return self.out(self.hidden(torch.relu(self.ea(ids[:, 0]) + self.eb(ids[:, 1]))))


def _data():
    a = torch.arange(K).repeat_interleave(K)
    b = torch.arange(K).repeat(K)
    return torch.stack([a, b], 1), a


def right_hidden(x, ctx):
    """The hidden layer by rule: 10 at unit a and at unit K + b."""
    h = torch.zeros(ctx.input_ids.shape[0], 2 * K)
    h[torch.arange(len(h)), ctx.input_ids[:, 0]] = 10.0
    h[torch.arange(len(h)), K + ctx.input_ids[:, 1]] = 10.0
    return h


def wrong_hidden(x, ctx):
    """Claims the hidden layer holds b where it holds a."""
    h = torch.zeros(ctx.input_ids.shape[0], 2 * K)
    h[torch.arange(len(h)), ctx.input_ids[:, 1]] = 10.0
    return h


@pytest.mark.parametrize("ablation", ["mean", "resample", "zero"])
def test_right_hypothesis_recovers_everything_and_wrong_one_less(ablation):
    model, (ids, labels) = wrap(Hand()), _data()
    right = Hypothesis("right", (Code("hidden", right_hidden),))
    got = scrub(model, right, ids, ablation, labels=labels, n_boot=200)
    assert abs(got.recovered.value - 1) <= 1e-6
    assert got.loss_ablated - got.loss_clean > 1  # the ablation really removes the answer
    wrong = scrub(model, Hypothesis("wrong", (Code("hidden", wrong_hidden),)), ids, ablation, labels=labels, n_boot=200)
    assert wrong.recovered.value < 0.5
    assert wrong.recovered.ci[1] < 0.9


def test_identity_hypothesis_recovers_exactly_one():
    model, (ids, labels) = wrap(Hand()), _data()
    hyp = Hypothesis("as is", (AsIs("ea"), AsIs("eb"), AsIs("hidden")))
    for ablation in ("mean", "resample", "zero"):
        got = scrub(model, hyp, ids, ablation, labels=labels, n_boot=50)
        assert got.recovered.value == 1.0
        assert got.loss_hypothesis == got.loss_clean


def test_resampled_parts_follow_the_equivalence_claim():
    model, (ids, labels) = wrap(Hand()), _data()
    # eb never matters: any key is right, even one that lumps every input together
    # (ea is named as is so that the ablation, which removes every named component, has a gap to close)
    fine = Hypothesis("eb irrelevant", (Resampled("eb", key=lambda ids: torch.zeros(len(ids))), AsIs("ea")))
    assert scrub(model, fine, ids, "mean", labels=labels, n_boot=50).recovered.value == 1.0
    # ea depends on a: resampling it among inputs with the same a keeps everything ...
    same_a = Hypothesis("ea by a", (Resampled("ea", key=lambda ids: ids[:, 0]),))
    assert abs(scrub(model, same_a, ids, "mean", labels=labels, n_boot=50).recovered.value - 1) <= 1e-6
    # ... and among inputs with the same b (the wrong claim) loses most of it
    same_b = Hypothesis("ea by b", (Resampled("ea", key=lambda ids: ids[:, 1]),))
    assert scrub(model, same_b, ids, "mean", labels=labels, n_boot=50).recovered.value < 0.5


def test_parts_alone_and_unexplained_shares():
    model, (ids, labels) = wrap(Hand()), _data()
    hyp = Hypothesis("mixed", (Code("ea", lambda x, ctx: x), Resampled("eb", key=lambda ids: ids[:, 0]),
                               Code("hidden", wrong_hidden)))
    got = scrub(model, hyp, ids, "zero", labels=labels, n_boot=50)
    shares = {p.component: p.unexplained_share for p in got.parts}
    # the wrong code holds all that is unexplained; the others none of it
    assert shares["hidden"] == pytest.approx(1.0, abs=1e-9)
    assert shares["ea"] == pytest.approx(0.0, abs=1e-9) and shares["eb"] == pytest.approx(0.0, abs=1e-9)
    page = got._repr_html_()  # the notebook view: the joint score and one row per part
    assert "loss_recovered" in page and "restore gain" in page and all(f">{c}<" in page for c in ("ea", "eb", "hidden"))
    alone = {p.component: p.alone.value for p in got.parts}
    assert alone["ea"] == pytest.approx(1.0, abs=1e-9)
    assert alone["hidden"] < 0.5


def test_sizes_count_lines_and_numbers():
    table = torch.randn(3, 4)

    def rule(x, ctx):
        """A docstring does not count."""
        # nor does a comment

        return table[ctx.input_ids[:, 0]]

    part = Code("hidden", rule, numbers={"table": table}, fitted_on="train")
    assert code_lines(rule) == 2  # def + return
    assert part.size.lines == 2 and part.size.numbers == 12
    hyp = Hypothesis("h", (part, AsIs("ea")))
    assert hyp.size.numbers == 12 and hyp.describe()["parts"][0]["number_shapes"] == {"table": [3, 4]}


def test_bad_hypotheses_fail_before_the_long_runs():
    model, (ids, labels) = wrap(Hand()), _data()
    with counting_passes() as count, pytest.raises(ScrubError, match="component hiddn"):
        scrub(model, Hypothesis("typo", (Code("hiddn", right_hidden),)), ids, labels=labels)
    assert count.forward == 0

    def flat(x, ctx):
        return torch.zeros(len(x), 3)

    with counting_passes() as count, pytest.raises(ScrubError) as err:
        scrub(model, Hypothesis("bad shape", (Code("hidden", flat),)), ids, labels=labels)
    assert "hidden" in str(err.value) and "(8, 3)" in str(err.value) and "(8, 10)" in str(err.value)
    assert count.forward == 1  # one small batch

    only_a0 = ids[ids[:, 0] == 0]
    with counting_passes() as count, pytest.raises(ScrubError, match="component ea.*no members"):
        scrub(model, Hypothesis("keys", (Resampled("ea", key=lambda ids: ids[:, 0]),)), ids, labels=labels,
              reference=only_a0)
    assert count.forward == 0
    with pytest.raises(ScrubError, match="hidden has no units axis"):
        scrub(model, Hypothesis("units", (Code(Component("hidden", units=[0]), right_hidden),)), ids, labels=labels)
    def reads_later(x, ctx):
        return ctx.cache[Site.module("out")]

    with pytest.raises(ScrubError, match="component ea: the code 'reads_later' reads"):
        scrub(model, Hypothesis("order", (Code("ea", reads_later),)), ids, labels=labels)
    with pytest.raises(ValueError, match="more than once"):
        Hypothesis("twice", (AsIs("ea"), AsIs("ea")))
