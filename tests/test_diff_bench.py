"""diff-bench's definitions of a finding that names the domain or the rule."""

import torch

from mechscope.core.score import Score
from mechscope.diff.bench import names_domain, names_rule, written_tokens
from mechscope.diff.report import Finding


def finding(kind, tokens, key_tokens=()):
    return Finding(kind, "k", "t", Score(value=1.0, metric="m"), tokens=tuple(tokens), key_tokens=tuple(key_tokens))


def test_a_finding_names_the_domain_by_the_tokens_it_says_b_writes():
    is_python = torch.zeros(20, dtype=torch.bool)
    is_python[[1, 2, 3, 4]] = True
    # a behaviour finding: the context is left out, its five largest rises count
    f = finding("behaviour", [9, 1, 2, 3, 10, 11, 4, 4], key_tokens=[9])
    assert written_tokens(f) == (1, 2, 3, 10, 11)
    assert names_domain(f, is_python) == (True, 0.6)
    assert names_domain(finding("behaviour", [9, 1, 2, 10, 11, 12], [9]), is_python) == (False, 0.4)
    # a weight or activation finding: its first ten tokens
    assert names_domain(finding("activation", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 1]), is_python)[1] == 0.4
    assert names_domain(finding("weight", [1, 2]), is_python) == (False, 0.0)  # too few tokens to say


def test_a_finding_names_the_rule_with_both_tokens():
    assert names_rule(finding("behaviour", [5, 7, 1], [5]), 5, 7)
    assert not names_rule(finding("behaviour", [5, 1, 2], [5]), 5, 7)
    assert not names_rule(finding("weight", [7, 1, 2]), 5, 7)
