"""Comparing dictionaries: MMCS and the matching on sets with known answers."""

from __future__ import annotations

import math

import torch

import mechscope.dictionaries as dl


def test_mmcs_of_a_permuted_copy_is_one_and_the_matching_finds_the_permutation():
    D = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    c = dl.compare(D, 3.0 * D[perm])  # scale does not matter
    assert math.isclose(c.mmcs_ab, 1.0, abs_tol=1e-12) and math.isclose(c.mmcs_ba, 1.0, abs_tol=1e-12)
    m = c.matching
    assert torch.equal(perm[m.b], m.a) and m.share_above(0.999) == 1.0


def test_orthogonal_sets_and_asymmetry():
    E = torch.eye(8)
    assert dl.mmcs(E[:4], E[4:]) == 0.0
    # B holds A and as many directions orthogonal to it: A is fully found in B, half of B in A
    assert dl.mmcs(E[:4], E) == 1.0 and dl.mmcs(E, E[:4]) == 0.5


def test_matching_is_greedy_by_descending_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    u = lambda deg: torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg))])  # noqa: E731
    b = torch.stack([u(10), u(60)])
    m = dl.match(a, b)
    # cos(a0,b0)=cos10 is the largest: paired first; a1 takes b1 (cos 30)
    assert m.a.tolist() == [0, 1] and m.b.tolist() == [0, 1]
    assert torch.allclose(m.cos, torch.tensor([math.cos(math.radians(10)), math.cos(math.radians(30))],
                                              dtype=torch.float64))


def test_a_trained_dictionary_is_compared_through_its_decoder_directions():
    d = dl.build("topk", d_in=8, d_sae=12, k=2, seed=4)
    assert math.isclose(dl.mmcs(d, d.W_dec.detach() * 2), 1.0, abs_tol=1e-12)
    assert dl.cosines(d, d).shape == (12, 12)
