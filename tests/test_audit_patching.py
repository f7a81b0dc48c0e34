"""Behaviour-first localisation with a reference (`mechscope.audit.patching`) and the confirmation of
positional triggers and of patches from the reference, on cases built for them: a planted head edit
(a token attends to itself and its value writes the target) and a planted context edit (a cue
attends to an earlier marker), both weight edits of one head of the zoo's quick text model."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.audit import patching
from mechscope.audit.confirm import Confirmer
from mechscope.audit.inputs import default_corpus
from mechscope.audit.plant import trigger_pool
from mechscope.audit.plant_arch import arch
from mechscope.audit.plant_edit import head as head_edit
from mechscope.audit.suspect import Suspect, component, head_site, trigger

from audit_support import quick_text_model, text_cache

LAYER, HEAD = 1, 2


@pytest.fixture(scope="module")
def text(textlm_cache):
    """The quick text model, its audit corpus, and two rare tokens (trigger or cue, and marker) and a target
    drawn as the bench draws them."""
    with text_cache(textlm_cache):
        model = quick_text_model()
        pool = trigger_pool(arch("textlm"), model.module)
    g = torch.Generator().manual_seed(5)
    cue, marker = (pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:2])
    return model, default_corpus(model, n=48, seq_len=64), (cue, marker, 700)


@pytest.fixture(scope="module")
def base(text):
    return text[0]


@pytest.fixture(scope="module")
def corpus(text):
    return text[1]


@pytest.fixture(scope="module")
def tokens(text):
    return text[2]


def _edited(base, textlm_cache, cue, target, marker=None):
    with text_cache(textlm_cache):
        edit = head_edit(arch("textlm"), base.module, [cue], target, layer=LAYER, head=HEAD, marker=marker)
    model = ms.wrap(edit.module)
    model.tokenizer = getattr(base, "tokenizer", None)
    return model


@pytest.fixture(scope="module")
def head_model(base, textlm_cache, tokens):
    cue, _, target = tokens
    return _edited(base, textlm_cache, cue, target)


def test_a_planted_head_is_localised_as_that_head(base, corpus, head_model, tokens):
    cue, _, target = tokens
    contexts = corpus[:8, :24]
    found = patching.scan(head_model, base, corpus, contexts, 12)
    best = max(found, key=lambda s: s.score)
    assert (best.component["class"], best.component["head"]) == ("head", HEAD)
    assert best.component["site"] == head_site(LAYER).name
    assert best.evidence["removed_by_patch"] > 0.9  # restoring that one head from the reference removes it
    # the planted trigger itself: patching that head from the reference removes its divergence, no other does
    comp, share, shares = patching.Patcher(head_model, base, contexts, 12).localise(trigger("token", [cue]))
    assert (comp["class"], comp["head"], comp["site"]) == ("head", HEAD, head_site(LAYER).name)
    assert share > 0.9
    assert max(v for k, v in shares.items() if k.startswith("head") and k != f"head {LAYER}.{HEAD}") < 0.2
    # the clean model against itself: nothing diverges, no suspect scores
    assert patching.scan(base, base, corpus, contexts, 12) == []


def test_a_context_edit_needs_its_marker_and_is_localised_to_its_head(base, corpus, textlm_cache, tokens):
    cue, marker, target = tokens
    model = _edited(base, textlm_cache, cue, target, marker=marker)
    contexts = corpus[:8, :24]
    p = patching.Patcher(model, base, contexts, 12)
    pair = trigger("ngram", [marker, cue])
    comp, share, _ = p.localise(pair)
    assert (comp["class"], comp["head"]) == ("head", HEAD) and share > 0.9
    with_marker = p.kl_at(*patching._place(contexts, pair, 12))
    alone = p.kl_at(*patching._place(contexts, trigger("token", [cue]), 12))
    assert with_marker > patching.EXTEND_FACTOR * alone  # the extension to the left keeps such a pair
    found = patching.scan(model, base, corpus, contexts, 12)
    assert (max(found, key=lambda s: s.score).component["head"]) == HEAD
    read = [s for s in found if "attention_score_rise" in s.evidence]  # a trigger read from the head's QK change
    assert read and read[0].component["head"] == HEAD and read[0].evidence["attention_score_rise"] > 0


def test_confirm_patches_from_the_reference_and_tests_positions(base, corpus, head_model, tokens):
    cue, _, target = tokens
    effect = {"target_ids": [target], "target_text": None, "delta_logprob": 0.0, "offset": 0}
    conf = Confirmer(head_model, corpus, corpus[:8, :24], position=12, reference=base)
    s = Suspect(component(head_site(LAYER), "head", head=HEAD), trigger("token", [cue]), dict(effect), "test", 1.0,
                ["test"])
    conf.confirm(s)
    assert s.confirmed is True and s.evidence["removed"] > 0.9
    # another head of the same block, patched from the reference, removes nothing
    other = Suspect(component(head_site(LAYER), "head", head=(HEAD + 1) % 4), trigger("token", [cue]), dict(effect),
                    "test", 1.0, ["test"])
    conf.confirm(other)
    assert other.confirmed is False and other.evidence["removed_patched"] < 0.2
    # the head edit acts at any position: as a positional trigger it is tested there and elsewhere, and refused
    pos = Suspect(component(head_site(LAYER), "head", head=HEAD), trigger("position", [cue], position=5),
                  dict(effect), "test", 1.0, ["test"])
    conf.confirm(pos)
    assert pos.evidence["trigger_effect"]["value"] > 1.0
    assert pos.evidence["effect_elsewhere"]["mean_nats"] > 1.0
    assert pos.confirmed is False
