"""The induction scrubbing study's machinery on a tiny random Llama (grouped-query attention): the
repeated sequences and their target mask, the head sets, and two known answers -- the heads' own
attention pattern fed as the "code" recovers exactly 1 under both ablations, and, scored by the KL
from the clean run (whose only minimum is the clean run itself), the uniform control recovers less."""

import pytest
import torch

from mechscope.circuits.explanations import Explanation
from mechscope.core.run import run
from mechscope.core.site import Kind, Site
from mechscope.studies.induction_scrub import (InductionScrubConfig, head_sets, measure, run_study, rules,
                                               sequences)


def own_pattern(model, layer):
    """The heads' own attention pattern from this run, applied to their own values: z exactly as the model."""
    vsite, psite = Site(Kind.V, layer), Site(Kind.PATTERN, layer)
    n_heads = model.n_heads

    def fn(x, ctx):
        v = ctx.cache[vsite]
        v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
        return torch.einsum("bhqk,bkhd->bqhd", ctx.cache[psite].to(v.dtype), v).to(x.dtype)

    return Explanation("own_pattern", Site(Kind.Z, layer), fn, needs=[vsite, psite])


def test_sequences_repeat_and_mask_the_predictable_targets(llama):
    ids, repeat = sequences(llama.model, 3, half=5, seed=0, low=10)
    assert ids.shape == (3, 10) and bool((ids[:, :5] == ids[:, 5:]).all()) and int(ids.min()) >= 10
    # targets t predict ids[t + 1]: the queries 5..8 of the second copy (its first token is not predictable)
    assert repeat.shape == (3, 9) and repeat[0].nonzero().flatten().tolist() == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="low=1000"):
        sequences(llama.model, 3, half=5, seed=0, low=1000)


def test_head_sets_rank_and_threshold():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.2]])
    sets = dict(head_sets(scores, (1, 3), 0.3))
    assert sets["top 1"] == [(0, 1)] and sets["top 3"] == [(0, 1), (1, 0), (1, 1)]
    assert sets["score > 0.3"] == [(0, 1), (1, 0)]


def sharpen(fam, by=6.0):
    """Scale every query and key map: the random model's near-uniform attention becomes peaked."""
    with torch.no_grad():
        for name, p in fam.hf.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(by)
    return fam.model


def kl_from_clean(logits, labels):
    """Per sequence: KL(clean || run) of the next-token distributions over the repeated half's targets; the clean
    run is its unique minimum (0), so any pattern but the heads' own recovers less than 1."""
    ref, mask = labels
    logp = logits[:, :-1].double().log_softmax(-1)
    kl = (ref.exp() * (ref - logp)).sum(-1)
    return (kl * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("loss", ["repeat", "kl"])
def test_own_pattern_recovers_exactly_one_and_uniform_less(llama, loss):
    model = sharpen(llama)
    ids, repeat = sequences(model, 10, half=6, seed=1, low=0)
    ref, _ = sequences(model, 8, half=6, seed=2, low=0)
    heads = [(0, 1), (1, 0), (1, 3)]
    explain = {"own": own_pattern, "uniform_causal": rules("first")["uniform_causal"]}
    kw = {}
    if loss == "kl":
        kw = {"loss": kl_from_clean, "labels": (run(model, ids).logits[:, :-1].double().log_softmax(-1), repeat)}
    rows = {(r["code"], r["ablation"]): r for r in measure(model, heads, explain, ids, repeat, ref, n_boot=50, **kw)}
    for abl in ("mean", "resample"):
        own, uni = rows["own", abl], rows["uniform_causal", abl]
        assert own["loss_ablated"] != pytest.approx(own["loss_clean"], abs=1e-4)
        assert own["loss_code"] == pytest.approx(own["loss_clean"], abs=1e-6)
        assert own["recovered"] == pytest.approx(1.0, abs=1e-5)
        if loss == "kl":
            assert own["loss_clean"] == pytest.approx(0.0, abs=1e-9)
            assert uni["recovered"] < own["recovered"] - 1e-3
    assert rows["uniform_causal", "mean"]["numbers"] == 0 and rows["uniform_causal", "mean"]["lines"] > 0


def test_study_end_to_end_on_a_tiny_model(llama):
    cfg = InductionScrubConfig(select=4, measure=6, reference=4, half=5, sizes=(1, 2, 8), threshold=-1.0, low=0,
                               n_boot=20)
    out = run_study(cfg, log=lambda *_: None, model=llama.model)
    table = out["figures"]["table"]
    assert [t["heads"] for t in table] == ["top 1", "top 2", "top 8", "score > -1.0"]
    assert table[-1]["which"] == table[2]["which"] and table[-1]["rows"] is table[2]["rows"]  # measured once
    assert {(r["code"], r["ablation"]) for r in table[0]["rows"]} == {
        (c, a) for c in ("strict_induction", "uniform_causal") for a in ("mean", "resample")}
    assert set(out["checks"]) == {"rule_beats_uniform_mean", "rule_beats_uniform_resample"}
    assert out["kind"] == "replication" and isinstance(out["pass"], bool)
    # the rule's size: its lines, counted once per layer it stands in for; no fitted numbers
    r = table[1]["rows"][0]
    layers = len({h.split("H")[0] for h in table[1]["which"]})
    assert r["lines"] == layers * out["figures"]["rule_lines"] and r["numbers"] == 0
