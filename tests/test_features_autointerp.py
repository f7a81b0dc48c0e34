"""Automated interpretation recovers planted rules and scores them on held-out documents."""

import torch

from mechscope.features.autointerp import explain_all, explain_feature, heldout, pearson
from mechscope.features.rules import Bigram, CurrentToken, InsideQuotes, Position, PreviousToken, TokenTable

G = torch.Generator().manual_seed(0)
IDS = torch.randint(0, 12, (80, 16), generator=G)
TABLE = TokenTable.build(IDS)


def _planted():
    prev = TABLE.prev
    return torch.stack([
        torch.isin(IDS, torch.tensor([3, 7])).float() * 1.5,          # current token in {3, 7}
        (prev == 5).float() * 2.0,                                     # previous token is 5
        (torch.arange(16) == 0).float().expand_as(IDS) * 0.7,          # first position
        ((prev == 4) & (IDS == 9)).float() * 3.0,                      # the bigram 4 9
    ], dim=-1)


def test_planted_rules_are_found_and_predict_held_out_text_exactly():
    values = _planted() + 0.01 * torch.rand(80, 16, 4, generator=G)  # a little noise below the rule
    train, test = torch.arange(50), torch.arange(50, 80)
    found = explain_all(values, TABLE, train, test, threshold=0.05)
    truth = [CurrentToken(frozenset({3, 7})), PreviousToken(frozenset({5})), Position("==", 0),
             Bigram(frozenset({(4, 9)}))]
    for (expl, train_corr, held), want in zip(found, truth):
        torch.testing.assert_close(expl.rule.mask(TABLE), want.mask(TABLE))
        assert held.corr > 0.99 and held.recall > 0.95 and train_corr > 0.99
    assert abs(found[0][0].scale - 1.5) < 0.02 and abs(found[3][0].scale - 3.0) < 0.02


def test_scores_are_honest_for_an_unexplainable_feature():
    noise = torch.rand(80, 16, generator=G)
    expl, c = explain_feature(noise[:40], TABLE.subset(torch.arange(40)))
    held = heldout(expl, noise[40:60], TABLE.subset(torch.arange(40, 60)))
    assert held.corr < 0.3  # random values: nothing generalises


def test_context_flags_from_text():
    words = ['He', ' said', ' "', 'hi', ' there', '"', ' and', ' left']
    table = TokenTable.build(torch.arange(8)[None], decode=lambda t: words[t])
    assert table.in_quotes[0].tolist() == [False, False, False, True, True, True, False, False]
    assert InsideQuotes().describe() and pearson(torch.ones(3), torch.ones(3)) == 0.0
    code = ['x', '\n', '>>>', ' print', '(', '1', ')', '\n', 'y']
    t2 = TokenTable.build(torch.arange(9)[None], decode=lambda t: code[t])
    assert t2.in_code[0].tolist() == [False, False, False, True, True, True, True, True, False]
