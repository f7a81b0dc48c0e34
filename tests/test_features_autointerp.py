"""Automated interpretation recovers planted rules and scores them on held-out documents."""

import pytest
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


def test_substitution_known_answers():
    # A perfect explanation recovers exactly 1; one predicting zero (or the mean) exactly 0 against
    # zero (mean) ablation; the interval and the ablation travel with the score.
    from mechscope.core import Kind, Site
    from mechscope.features import FeatureSet
    from mechscope.features.rules import Explanation, Position
    from mechscope.features.substitution import substitution_scores
    from mechscope.models.tiny import TinyConfig, TinyTransformer
    import mechscope as ms

    torch.manual_seed(0)
    model = ms.wrap(TinyTransformer(TinyConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16,
                                               d_vocab=12)))
    site = Site(Kind.MLP_POST, 0)
    feats = FeatureSet.neurons(site, d=32)
    docs = IDS[:12]
    acts = model.run(docs, capture=[site]).cache[site][..., 5]  # (doc, pos)

    class Exact:
        def predict(self, table):
            return acts

        def describe(self, decode=None):
            return "the feature's own values"

    kw = dict(mean_value=float(acts.mean()), reference="the same documents", dataset="random tokens")
    exact = substitution_scores(model, feats, 5, Exact(), docs, TABLE.subset(torch.arange(12)), **kw)
    assert abs(exact["zero"].value - 1) < 1e-6 and abs(exact["mean"].value - 1) < 1e-6
    nothing = Explanation(Position("==", 99), 1.0)  # never fires: predicts 0 everywhere
    zero = substitution_scores(model, feats, 5, nothing, docs, TABLE.subset(torch.arange(12)), **kw)
    assert abs(zero["zero"].value) < 1e-9
    assert zero["mean"].how["ablation"] == "mean" and zero["mean"].ci is not None and zero["mean"].n == 12
    # clean losses computed once for many features give the same scores as per-feature clean runs
    from mechscope.features.substitution import document_losses
    shared = substitution_scores(model, feats, 5, nothing, docs, TABLE.subset(torch.arange(12)), **kw,
                                 clean_losses=document_losses(model, docs))
    assert shared["mean"].value == zero["mean"].value and shared["zero"].ci == zero["zero"].ci
    with pytest.raises(ValueError, match="one loss per document"):
        substitution_scores(model, feats, 5, nothing, docs, TABLE.subset(torch.arange(12)), **kw,
                            clean_losses=torch.zeros(3))
