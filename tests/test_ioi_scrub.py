"""The IOI scrubbing study's machinery on a tiny random model: the logit-difference loss, the circuit
hypothesis and its two known answers (every head kept: exactly 1; no head kept and the same draw as
the ablation: exactly 0), and the hypothesis run against hand-made patches."""

import pytest
import torch

from mechscope.causal.scrub import scrub
from mechscope.core.interventions import Patch
from mechscope.core.run import run
from mechscope.core.site import Kind, Site
from mechscope.studies.ioi_scrub import circuit_hypothesis, neg_logit_diff

from conftest import make_ids


@pytest.fixture
def setup(llama):
    model = llama.model
    n_heads = model.n_heads_at(Site(Kind.Z, 0))
    ids = make_ids(batch=12, seed=3)
    ref = make_ids(batch=9, seed=4)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 101, (12, 2), generator=g)
    return model, n_heads, ids, ref, labels


def test_loss_is_minus_the_logit_difference(setup):
    model, _, ids, _, labels = setup
    logits = run(model, ids).logits
    want = torch.tensor([-(float(logits[i, -1, a]) - float(logits[i, -1, b]))
                         for i, (a, b) in enumerate(labels.tolist())])
    torch.testing.assert_close(neg_logit_diff(logits, labels).float(), want, rtol=1e-5, atol=1e-5)


def test_every_head_kept_recovers_exactly_one(setup):
    model, n_heads, ids, ref, labels = setup
    heads = [(layer, h) for layer in range(model.n_layers) for h in range(n_heads)]
    res = scrub(model, circuit_hypothesis(model.n_layers, n_heads, heads), ids, "resample", labels=labels,
                loss=neg_logit_diff, reference=ref, each=False, n_boot=50)
    assert res.loss_hypothesis == res.loss_clean and res.loss_ablated != res.loss_clean
    assert res.recovered.value == 1.0


def test_no_head_kept_with_the_ablations_draw_recovers_zero(setup):
    model, n_heads, ids, ref, labels = setup
    hyp = circuit_hypothesis(model.n_layers, n_heads, [])
    one = ref[:1]  # a single reference prompt: the hypothesis and the ablation draw the same one
    res = scrub(model, hyp, ids, "resample", labels=labels, loss=neg_logit_diff, reference=one, each=False, n_boot=50)
    assert res.loss_hypothesis == pytest.approx(res.loss_ablated, abs=1e-9)
    assert res.recovered.value == pytest.approx(0.0, abs=1e-9)


def test_hypothesis_run_matches_hand_made_patches(setup):
    model, n_heads, ids, ref, labels = setup
    keep = [(0, 1), (1, 0)]
    hyp = circuit_hypothesis(model.n_layers, n_heads, keep)
    res = scrub(model, hyp, ids, "resample", labels=labels, loss=neg_logit_diff, reference=ref, each=False,
                n_boot=50, seed=7)
    # the same draw by hand: one class, seeded uniform choice among the reference rows
    g = torch.Generator().manual_seed(7)
    pick = (torch.rand(ids.shape[0], generator=g) * ref.shape[0]).long().clamp_max(ref.shape[0] - 1)
    sites = [Site(Kind.Z, layer) for layer in range(model.n_layers)]
    cache = run(model, ref, capture=sites).cache
    ivs = []
    for s in sites:
        out = [h for h in range(n_heads) if (s.layer, h) not in keep]
        ivs.append(Patch(s, value=cache[s][pick], heads=out))
    ld = -neg_logit_diff(run(model, ids, interventions=ivs).logits, labels)
    assert -res.loss_hypothesis == pytest.approx(float(ld.mean()), rel=1e-6, abs=1e-6)
    clean = -neg_logit_diff(run(model, ids).logits, labels)
    assert -res.loss_clean == pytest.approx(float(clean.mean()), rel=1e-6, abs=1e-6)
    share = (-res.loss_hypothesis + res.loss_ablated) / (-res.loss_clean + res.loss_ablated)
    assert res.recovered.value == pytest.approx(share, rel=1e-9)
