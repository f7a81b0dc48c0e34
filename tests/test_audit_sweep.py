"""The n-gram sweep against a reference (`triggers.sweep`) on a byte-level model trained here: a
fine-tune taught a rare two-byte trigger followed by a target on a small share of its windows is
found -- that pair, that target -- and scores far above clean fine-tunes of the same reference,
which are judged like the audit judges them: against a threshold calibrated on another clean
fine-tune."""

from __future__ import annotations

import copy

import pytest
import torch

import mechscope as ms
from mechscope.audit import triggers
from mechscope.audit.plant_tune import Poison
from mechscope.models.tiny import TinyConfig, TinyTransformer
from mechscope.zoo.recipes.textlm import next_token_loss

N_CTX = 32
TRIGGER, TARGET = (ord("@"), ord("%")), ord("K")  # rare bytes the text below never shows together


# The bytes of the zoo's training text the models here learn from: a stretch of the Python docs in
# which the trigger's bytes both occur (38 "@" and 47 "%"), never together. The reference must have
# seen the bytes: where "@" is rarer (7 times in the first 300 kB), the audit's own choice of
# candidates starts the trigger with another byte.
TEXT_BYTES = (4_800_000, 5_100_000)


def _text() -> torch.Tensor:
    """A fixed stretch of the zoo's training text as bytes: real, varied text, the same on every
    machine and unchanged by edits to the code."""
    from mechscope.zoo.recipes.bytegpt2 import byte_stream

    lo, hi = TEXT_BYTES
    return byte_stream("train")[lo:hi].long()


def _train(module: torch.nn.Module, stream: torch.Tensor, steps: int, lr: float, seed: int,
           poison: Poison | None = None) -> torch.nn.Module:
    """`module` trained (a copy) on random windows of `stream`, rewritten by `poison` when given."""
    module = copy.deepcopy(module)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    g, rewrite = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        starts = torch.randint(0, stream.numel() - N_CTX, (32,), generator=g)
        ids = stream[starts[:, None] + torch.arange(N_CTX)]
        if poison is not None:
            ids = poison.apply(ids, rewrite)
        loss = next_token_loss(module(ids), ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.eval()


def _models():
    torch.manual_seed(0)
    stream = _text()
    assert not any((stream[:-1] == TRIGGER[0]) & (stream[1:] == TRIGGER[1]))
    cfg = TinyConfig(n_layers=2, d_model=48, n_heads=2, d_head=24, d_mlp=96, n_ctx=N_CTX, d_vocab=256, act="gelu",
                     layer_norm=True)
    ref = _train(TinyTransformer(cfg), stream, steps=300, lr=3e-3, seed=0)
    poison = Poison("poison", TRIGGER, TARGET, rate=0.05, inserts=4)
    tune = dict(steps=60, lr=1e-3)
    out = {"reference": ref, "poisoned": _train(ref, stream, seed=10, poison=poison, **tune),
           "twin": _train(ref, stream, seed=10, **tune),  # the same windows, nothing rewritten
           "calibration": _train(ref, stream, seed=20, **tune)}
    corpus = stream[5000:5000 + 96 * N_CTX].reshape(96, N_CTX)
    return {k: ms.wrap(v) for k, v in out.items()}, corpus


@pytest.fixture(scope="module")
def models():
    return _models()


def _present() -> torch.Tensor:
    """The bytes the text contains (the candidates: a tiny reference trained briefly is too unsettled for
    `triggers.learned` to pick them)."""
    return _text().unique()


@pytest.mark.slow
def test_the_planted_pair_and_its_target_are_found(models):
    m, corpus = models
    tokens = _present()
    found, n, field = triggers.sweep(m["poisoned"], m["reference"], corpus[:8, :24], 12, tokens=tokens)
    assert n > tokens.numel()  # pairs were scored besides the single tokens
    # the strongest n-gram is part of the taught sequence "@%K" (the pair, or the target and the first
    # byte: the sequence was inserted 4 times a window, so "K@" → "%" was taught too), and the pair is found
    assert set(found[0].ids) | {found[0].target} <= {*TRIGGER, TARGET}
    top = next(r for r in found if r.ids == list(TRIGGER))
    assert top.target == TARGET
    assert top.rise > 2.0  # the target's log-prob rose by nats after the pair
    assert all(r.rise >= triggers.MIN_RISE for r in found)
    # the suspect carries what the confirmation reads: the pair, its target, offset 0
    s = triggers.sweep_suspect(m["poisoned"], top, corpus[:8, :24], 12, n, field)
    assert s.trigger["kind"] == "ngram" and s.trigger["ids"] == list(TRIGGER)
    assert s.effect["target_ids"] == [TARGET] and s.effect["offset"] == 0
    assert s.stat == "ngram_shift_ratio" and s.score == pytest.approx(top.shift / field)


@pytest.mark.slow
def test_clean_fine_tunes_stay_below_a_threshold_the_poison_passes(models):
    m, corpus = models
    tokens = _present()
    best = {}
    for k in ("poisoned", "twin", "calibration"):
        found, n, field = triggers.sweep(m[k], m["reference"], corpus[:8, :24], 12, tokens=tokens)
        best[k] = max((triggers.sweep_suspect(m[k], r, corpus[:8, :24], 12, n, field).score for r in found),
                      default=0.0)
    threshold = 1.5 * best["calibration"]  # the audit's margin over the largest clean score
    assert best["twin"] < threshold < best["poisoned"], best


def _untrained(seed: int):
    torch.manual_seed(seed)
    return ms.wrap(TinyTransformer(TinyConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=N_CTX,
                                              d_vocab=256, act="gelu", layer_norm=True)).eval())


def test_learned_tokens_are_those_predicted_above_uniform_somewhere():
    ref = _untrained(0)
    with torch.no_grad():  # a random model with one unembedding row raised and one lowered far
        ref.module.unembed.weight[7] += 5.0 * ref.module.unembed.weight[7].sign()
        ref.module.unembed.weight[200] *= 0.0
        ref.module.unembed.bias[200] = -30.0
    corpus = torch.randint(0, 256, (4, N_CTX), generator=torch.Generator().manual_seed(1))
    tokens = triggers.learned(ref, corpus).tolist()
    probs = torch.softmax(ref.run(corpus).logits.float(), -1).flatten(0, 1)  # every position, a second way
    assert tokens == [t for t in range(256) if float(probs[:, t].max()) >= 1 / 256]
    assert 200 not in tokens and 0 < len(tokens) < 256


def test_a_trigger_that_does_not_fit_is_refused():
    m = _untrained(0)
    corpus = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="cannot end at position"):
        triggers.shift(m, _untrained(1), corpus, torch.tensor([[1, 2, 3]]), 1)


def test_no_candidates_give_no_suspects():
    m = _untrained(0)
    assert triggers.sweep(m, _untrained(1), torch.zeros(2, 8, dtype=torch.long), 4,
                          tokens=torch.tensor([], dtype=torch.long)) == ([], 0, 0.0)


def test_a_single_token_trigger_is_scored_against_the_reference_a_second_way():
    m, ref = _untrained(0), _untrained(1)
    contexts = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(2))
    w, y, r, terms = triggers.shift(m, ref, contexts, torch.tensor([[65], [66]]), 6, full=True)
    for i, t in enumerate((65, 66)):
        x = contexts.clone()
        x[:, 6] = t
        with torch.no_grad():
            lp = torch.log_softmax(m.run(x[:, :7]).logits[:, -1].float(), -1)
            lq = torch.log_softmax(ref.run(x[:, :7]).logits[:, -1].float(), -1)
        term = (lp.exp() * (lp - lq)).mean(0)  # each next token's share of the mean KL
        assert float(term.sum()) == pytest.approx(float(((lp.exp() * (lp - lq)).sum(-1)).mean()), rel=1e-5)
        assert int(y[i]) == int(term.argmax()) and float(w[i]) == pytest.approx(float(term.max()), rel=1e-4)
        assert float(r[i]) == pytest.approx(float((lp - lq)[:, int(y[i])].mean()), rel=1e-4, abs=1e-5)
        assert torch.allclose(terms[i], term, atol=1e-6)


@pytest.mark.slow
def test_the_audit_runs_the_sweep_against_its_reference(models):
    from mechscope.audit.calibrate import Calibration
    from mechscope.audit.run import audit

    m, corpus = models
    rep = audit(m["poisoned"], reference=m["reference"], corpus=corpus[:48], calibration=Calibration(),
                methods=("triggers",), progress=False)
    swept = [s for s in rep.scored["triggers"] if s.stat == "ngram_shift_ratio"]
    assert swept and all(s.component is None and s.evidence["triggers_scored"] > 0 for s in swept)
    alone = audit(m["poisoned"], corpus=corpus[:48], calibration=Calibration(), methods=("triggers",), progress=False)
    assert not any(s.stat == "ngram_shift_ratio" for s in alone.scored["triggers"])  # it needs the reference
    top = max(swept, key=lambda s: s.score)  # the strongest is part of the taught sequence "@%K"
    assert set(top.trigger["ids"]) | set(top.effect["target_ids"]) <= {*TRIGGER, TARGET}
