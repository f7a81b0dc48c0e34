"""A run resumed at a block's entrance computes what the whole run computes, and causal scoring that
starts at the feature's site gives the whole-model scores."""

import pytest
import torch
import transformers as tf

import mechscope as ms
from mechscope.core import Kind, Site, resume_point, run_from
from mechscope.features import FeatureSet
from mechscope.features.rules import CurrentToken, Explanation, PreviousToken, TokenTable
from mechscope.features.substitution import clean_runs, document_losses, substitution_scores_many
from mechscope.models.tiny import TinyConfig, TinyTransformer

VOCAB = 50


def _tiny() -> ms.models.base.ModelBase:
    torch.manual_seed(0)
    return ms.wrap(TinyTransformer(TinyConfig(n_layers=3, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=24,
                                              d_vocab=VOCAB, layer_norm=True)))


def _llama() -> ms.models.base.ModelBase:
    torch.manual_seed(0)
    return ms.wrap(tf.LlamaForCausalLM._from_config(
        tf.LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=VOCAB), attn_implementation="eager").eval())


MODELS = {"tiny": _tiny, "llama": _llama}
DOCS = torch.randint(0, VOCAB, (10, 16), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("family", sorted(MODELS))
def test_resume_point_names_the_entrance_of_the_first_block_to_run(family):
    model = MODELS[family]()
    assert resume_point(model, "resid_post.1") == Site(Kind.RESID_PRE, 2)
    assert resume_point(model, "resid_post.2") == Site(Kind.RESID_PRE, 2)  # the last block: from its entrance
    assert resume_point(model, "resid_pre.1") == Site(Kind.RESID_PRE, 1)
    assert resume_point(model, "mlp_out.2") == Site(Kind.RESID_PRE, 2)
    assert resume_point(model, "resid_pre.0") is None and resume_point(model, "mlp_out.0") is None


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_resumed_run_equals_the_whole_run_with_the_same_intervention(family):
    model = MODELS[family]()
    for site in ("resid_post.0", "mlp_out.1", "resid_post.2"):
        entry = resume_point(model, site)
        clean = ms.run(model, DOCS, capture=[entry]).cache[entry]
        at = entry if site.startswith("resid_post") and entry.layer > int(site[-1]) else site
        iv = ms.Add(at, 2.0 * torch.randn(32, generator=torch.Generator().manual_seed(4)), positions=[2, 5])
        whole = ms.run(model, DOCS, interventions=[iv], capture=["resid_post.2"])
        part = run_from(model, DOCS, entry, clean, interventions=[iv], capture=["resid_post.2"])
        torch.testing.assert_close(part.logits, whole.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(part.cache["resid_post.2"], whole.cache["resid_post.2"], atol=1e-5, rtol=1e-5)
        # the intervention acts: the comparison is not between two unchanged runs
        assert (whole.logits - ms.run(model, DOCS).logits).abs().max() > 1e-3
    # the blocks before the entrance are skipped: the value given is what block 2 reads
    entry = Site(Kind.RESID_PRE, 2)
    clean = ms.run(model, DOCS, capture=[entry]).cache[entry]
    other = run_from(model, DOCS, entry, torch.zeros_like(clean)).logits
    assert (other - ms.run(model, DOCS).logits).abs().max() > 1e-3
    with pytest.raises(ValueError, match="never computes blocks.0.hook_resid_post"):
        run_from(model, DOCS, entry, clean, interventions=[ms.Zero("resid_post.0")])
    with pytest.raises(ValueError, match="resid_pre.L"):
        run_from(model, DOCS, "resid_post.1", clean)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("site", ["resid_post.1", "mlp_out.1"])
def test_causal_scores_from_the_site_equal_the_whole_model_scores(family, site):
    model = MODELS[family]()
    s = model.check(site)
    u = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(5)), dim=-1)
    feats = FeatureSet.from_directions(s, 4.0 * u, normalise=False)
    table = TokenTable.build(DOCS)
    values = torch.cat([feats.encode(ms.run(model, DOCS[k:k + 4], capture=[s]).cache[s])
                        for k in range(0, len(DOCS), 4)])[..., 1]  # (doc, pos)
    expls = [Explanation(CurrentToken(frozenset({1, 2, 3, 4, 5})), 1.5),
             Explanation(PreviousToken(frozenset(range(20))), -0.7)]
    kw = dict(mean_value=0.2, reference="the same documents", dataset="random tokens", batch_size=4)
    losses, resume = clean_runs(model, s, DOCS, batch_size=4)
    torch.testing.assert_close(losses, document_losses(model, DOCS, batch_size=4), atol=1e-6, rtol=1e-6)
    whole = substitution_scores_many(model, feats, 1, expls, DOCS, table, **kw)
    part = substitution_scores_many(model, feats, 1, expls, DOCS, table, **kw, clean_losses=losses, values=values,
                                    resume=resume)
    for w, p in zip(whole, part):
        for a in ("zero", "mean"):
            for k in ("loss_clean", "loss_ablated", "loss_explained"):
                assert abs(w[a].how[k] - p[a].how[k]) <= 1e-5
            assert abs(w[a].value - p[a].value) <= 1e-4
        assert abs(w["mean"].how["loss_explained"] - w["mean"].how["loss_clean"]) > 1e-4  # a real change
    with pytest.raises(ValueError, match="resume must be"):
        substitution_scores_many(model, feats, 1, expls, DOCS, table, **kw, resume=resume[:3])
