"""The RASP-style language and its compiler: programs evaluate as written, compiled weights agree
with them on every input of the domain, and mistakes fail clearly."""

import itertools

import pytest
import torch

from mechscope.rasp import (EQ, LT, TRUE, Aggregate, Leak, Map, Select, SelectorWidth, SequenceMap, compile_program,
                            evaluate, indices, run_program, tokens)


def _reverse():
    length = SelectorWidth(Select(tokens, tokens, TRUE), name="length")
    opp = SequenceMap(lambda l, i: l - i - 1, length, indices, name="opp")
    return Aggregate(Select(indices, opp, EQ), tokens, name="reverse")


def test_programs_evaluate_as_written():
    assert run_program(_reverse(), "abcd") == list("dcba")
    hist = SelectorWidth(Select(tokens, tokens, EQ), name="hist")
    assert run_program(hist, "abca") == [2, 1, 1, 2]
    smaller = SelectorWidth(Select(tokens, tokens, LT), name="smaller")
    srt = Aggregate(Select(smaller, indices, EQ), tokens, name="sort")
    assert run_program(srt, [3, 0, 2]) == [0, 2, 3]
    prev = Aggregate(Select(indices, Map(lambda i: i - 1, indices, name="pi"), EQ), tokens, name="prev")
    assert run_program(prev, "xyz") == [None, "x", "y"]
    # causal selection sees only earlier keys
    assert run_program(hist, "abca", causal=True) == [1, 1, 1, 2]
    assert evaluate(hist, "ab")[tokens] == ["a", "b"]


@pytest.mark.parametrize("causal", [False, True])
def test_compiled_models_agree_with_their_programs_on_every_input(causal):
    hist = SelectorWidth(Select(tokens, tokens, EQ), name="hist")
    shifted = Map(lambda h: min(h, 2), hist, name="capped")  # an MLP on top of a selector width
    c = compile_program(shifted, "abc", 4, causal=causal)
    assert c.verify() == sum(3 ** n for n in range(1, 5))
    c = compile_program(_reverse(), "ab", 5, leaks=[Leak(tokens)])
    assert c.verify() == sum(2 ** n for n in range(1, 6))
    assert c.module.cfg.n_layers == 3 and not c.module.cfg.layer_norm


def test_a_wrong_weight_is_caught_by_verification():
    c = compile_program(_reverse(), "abc", 3)
    with torch.no_grad():
        c.module.blocks[2].attn.W_V.weight.mul_(-1.0)  # the copy now writes the wrong sign
    with pytest.raises(AssertionError, match="program says"):
        c.verify()


def test_placement_and_ground_truth_follow_the_program():
    c = compile_program(_reverse(), "abc", 4)
    where = {op.name: (op.layer, op.where) for op in c.ops}
    assert where == {"length.frac": (0, "attn"), "length": (0, "mlp"), "opp": (1, "mlp"), "reverse": (2, "attn")}
    inputs = [xs for xs in itertools.product("abc", repeat=3)]
    zero, mean = c.ground_truth("zero", inputs), c.ground_truth("mean", inputs)
    assert mean < zero  # positions and length are constant on fixed-length data: only zero ablation removes them
    senders = {s for s, _ in mean}
    assert {s[0].short for s in senders} == {"resid_pre.0", "attn.z.2"}


def test_mistakes_fail_clearly():
    a = Map(lambda x: x, tokens, name="same")
    b = Map(lambda x: x, a, name="same")
    with pytest.raises(ValueError, match="unique"):
        compile_program(b, "ab", 2)
    many = Aggregate(Select(tokens, tokens, EQ), indices, name="first_match")
    with pytest.raises(ValueError, match="at most one"):
        run_program(many, "aa")
    c = compile_program(_reverse(), "ab", 2)
    with pytest.raises(ValueError, match="unknown ablation kind"):
        c.ground_truth("shuffle", [("a", "b")])
