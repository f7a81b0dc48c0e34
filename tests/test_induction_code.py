"""Code standing in for every part of the zoo induction network: the rules on known answers, the joint
measurement on known answers, and the claim (>= 0.99 of the loss recovered jointly) on held-out sequences."""

from __future__ import annotations

import pytest
import torch

from mechscope import zoo
from mechscope.circuits.head_roles import head_roles
from mechscope.circuits.induction_code import (MATCH_FEATURES, TRAIN_SEED, _code_lines, attention_offsets,
                                               constant_divisor, fit_rule, induction_parts, match_features,
                                               match_pattern, measure_jointly, offset_pattern,
                                               positional_patterns)
from mechscope.core.interventions import Mean
from mechscope.core.run import run
from mechscope.core.site import Kind, Site
from mechscope.zoo.recipes.induction import make_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def net():
    model = zoo.load_zoo("induction")
    hp = model.zoo_run.config()["hparams"] if getattr(model, "zoo_run", None) else None
    return model, hp


def _batch(hp, seed, n=128):
    return make_batch(n, hp, torch.Generator().manual_seed(seed))


def test_match_features_name_the_keys_after_earlier_occurrences():
    ids = torch.tensor([[5, 6, 7, 9, 5, 6, 7]])  # "5 6 7" again from position 4
    f = match_features(ids)
    assert f.shape == (1, 7, 7, len(MATCH_FEATURES))
    # query 5 (token 6, previous token 5): key 2 follows the earlier 6 and its token two back (5) matches
    assert f[0, 5, 2].tolist() == [1, 1, 0, 0, 0]
    assert f[0, 5, :6, 0].nonzero().flatten().tolist() == [2]  # the only key (k <= q) after an earlier 6
    assert f[0, 4, :5, 0].nonzero().flatten().tolist() == [1]  # query 4 (token 5): key 1 follows the first 5
    assert f[0, 4, 1, 1] == 0  # ... but the token before the query (9) is not the token before 5 (none)
    assert f[0, 3, :, 2].tolist() == [1, 0, 0, 0, 0, 0, 0] and f[0, 3, 3, 3] == 1 and f[0, 3, 2, 4] == 1
    shifted = match_features(ids, offset=1)  # the wrong rule: one key later
    assert shifted[0, 5, :6, 0].nonzero().flatten().tolist() == [3]


def test_match_pattern_is_causal_and_attends_to_the_token_after_the_match():
    ids = torch.tensor([[5, 6, 7, 9, 5, 6, 7]])
    pat = match_pattern(ids, torch.tensor([8.0, 4.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(pat.sum(-1), torch.ones(1, 7))
    assert float(pat[0].triu(1).abs().sum()) == 0
    assert int(pat[0, 5].argmax()) == 2 and float(pat[0, 5, 2]) > 0.99
    assert int(match_pattern(ids, torch.tensor([8.0, 4.0, 0.0, 0.0, 0.0]), offset=1)[0, 5].argmax()) == 3


def test_fit_rule_recovers_the_weights_that_made_a_pattern():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (64, 20), generator=g)  # a small vocabulary: many matches
    true = torch.tensor([3.0, 1.5, 1.0, -1.0, 0.5])
    got = fit_rule(match_pattern(ids, true), ids, torch.ones(ids.shape, dtype=torch.bool))
    assert torch.allclose(got, true, atol=0.05), got


def test_code_lines_counts_code_not_docstrings():
    # def, inner def, its return, the needs line, return fn: the docstring and the blank line are left out
    assert _code_lines(constant_divisor) == 5


def test_positional_patterns_are_the_network_attention_on_positions(net):
    model, hp = net
    pos = positional_patterns(model)
    assert pos.shape == (4, 64, 64) and torch.allclose(pos.sum(-1), torch.ones(4, 64))
    assert float(pos.triu(1).abs().sum()) == 0
    # the head the probe calls previous-token attends by position to q - 1
    prev = pos.diagonal(-1, dim1=1, dim2=2)[:, 4:].mean(1)
    net_pat = run(model, _batch(hp, 5).ids, capture=[Site(Kind.PATTERN, 0)]).cache[Site(Kind.PATTERN, 0)]
    net_prev = net_pat.diagonal(-1, dim1=2, dim2=3)[..., 4:].mean((0, 2))
    assert int(prev.argmax()) == int(net_prev.argmax()) and float(prev.max()) > 0.9


def test_measure_jointly_known_answers(net):
    """Code that returns the component itself recovers exactly 1; code that returns its mean recovers 0."""
    model, hp = net
    data, ref = _batch(hp, 11, 64), _batch(hp, 12, 64)
    z0 = Site(Kind.Z, 0)
    ident = lambda x, ctx: x  # noqa: E731
    ident.needs = ()
    same = measure_jointly(model, [dict(name="id", site=z0, heads=[1, 2], fn=ident)], data, ref, n_boot=100)
    assert same["vs_mean"].value == pytest.approx(1.0, abs=1e-9)
    assert same["vs_resample"].value == pytest.approx(1.0, abs=1e-9) and same["kl_network_to_code"] < 1e-9
    mean = Mean.of(z0, run(model, ref.ids, capture=[z0]).cache[z0])
    as_mean = lambda x, ctx: mean.mean  # noqa: E731
    as_mean.needs = ()
    zero = measure_jointly(model, [dict(name="mean", site=z0, heads=[1, 2], fn=as_mean)], data, ref, n_boot=100)
    assert zero["vs_mean"].value == pytest.approx(0.0, abs=1e-9)


def test_every_part_replaced_at_once_recovers_99_percent_on_held_out_sequences(net):
    model, hp = net
    parts = induction_parts(model, _batch(hp, TRAIN_SEED, 256))
    assert {p["name"] for p in parts} >= {"embed", "unembed", *(f"L{l}H{h}" for l in (0, 1) for h in range(4))}
    assert sum(p["fitted"] for p in parts) == 4 + 4 * 2 + 1  # offsets, match weights, divisor
    assert all(p["lines"] > 0 for p in parts)
    held, ref = _batch(hp, 4242), _batch(hp, 4243)  # neither the fits' sequences nor the command's
    joint = measure_jointly(model, parts, held, ref, n_boot=300)
    for kind in ("vs_mean", "vs_resample"):
        s = joint[kind]
        assert s.value >= 0.99 and s.ci[0] >= 0.98, (kind, s)
    wrong = measure_jointly(model, induction_parts(model, _batch(hp, TRAIN_SEED, 256), induction_offset=1),
                            held, ref, n_boot=300)
    for kind in ("vs_mean", "vs_resample"):  # matching one key too late: measurably worse, CIs apart
        assert wrong[kind].ci[1] < joint[kind].ci[0] - 0.1, (kind, wrong[kind], joint[kind])


def test_offset_patterns_and_the_offsets_read_off_the_network(net):
    model, hp = net
    pat = offset_pattern(5, 2)
    assert pat.tolist()[4] == [0, 0, 1, 0, 0] and pat.tolist()[1] == [1, 0, 0, 0, 0]
    offsets = attention_offsets(model, _batch(hp, TRAIN_SEED, 64).ids)
    roles = head_roles(model, n=24, batch=16, vocab=hp["d_vocab"])
    assert offsets[int(roles.previous_token[0].argmax())] == 1  # the probe's previous-token head: one back
    with pytest.raises(ValueError, match="unknown features"):
        fit_rule(torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool),
                 features=("match_next",))


def test_the_positional_layer0_rule_also_recovers_99_percent(net):
    model, hp = net
    parts = induction_parts(model, _batch(hp, TRAIN_SEED, 256), layer0="positional")
    joint = measure_jointly(model, parts, _batch(hp, 4242), _batch(hp, 4243), n_boot=300)
    assert joint["vs_mean"].value >= 0.99 and joint["vs_resample"].value >= 0.99


def test_one_part_measured_alone_agrees_with_explain_score(net):
    """measure_jointly on a single part is the one-component score of circuits.explain."""
    from mechscope.circuits.explain import score

    model, hp = net
    parts = {p["name"]: p for p in induction_parts(model, _batch(hp, TRAIN_SEED, 128))}
    data, ref = _batch(hp, 21, 64), _batch(hp, 22, 64)
    for name in ("L1H1", "unembed"):
        p = parts[name]
        mine = measure_jointly(model, [p], data, ref, n_boot=100)
        theirs = score(model, data, p["site"], p["fn"], heads=p["heads"], reference=ref.ids, n_boot=100)
        assert mine["loss_code"] == pytest.approx(theirs.loss_explained, abs=1e-9)
        assert mine["vs_mean"].value == pytest.approx(theirs.vs_mean.value, abs=1e-9)
        assert mine["vs_resample"].value == pytest.approx(theirs.vs_resample.value, abs=1e-9)


def test_induction_parts_refuses_other_networks_and_leaves_the_model_without_grads(net):
    from mechscope.circuits.handwritten import handwritten_induction

    with pytest.raises(ValueError, match="two-layer attention-only"):
        induction_parts(handwritten_induction(), _batch(net[1], TRAIN_SEED, 8))
    model, hp = net
    induction_parts(model, _batch(hp, TRAIN_SEED, 32))
    assert all(p.grad is None for p in model.module.parameters())
