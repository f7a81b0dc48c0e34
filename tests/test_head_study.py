"""The head-role study: exact OV diagonal scores, known heads found on the hand-written model, SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

import mechscope as ms
from mechscope.circuits.handwritten import handwritten_induction
from mechscope.circuits.head_role_checks import ov_diagonal_scores
from mechscope.models.tiny import TinyConfig, TinyTransformer
from mechscope.studies.heads import HeadStudyConfig, analyse

torch.set_num_threads(1)


def _brute_ov_diag(model, max_tokens: int, seed: int = 0) -> torch.Tensor:
    """The score from the whole (tokens, vocab) block of every head, as its definition reads."""
    w = model.weights(fold_ln=True)
    V = w.W_E.shape[0]
    g = torch.Generator().manual_seed(seed)
    toks = torch.arange(V) if V <= max_tokens else torch.randperm(V, generator=g)[:max_tokens]
    E = w.W_E[toks].double()
    E = E - E.mean(-1, keepdim=True)
    out = torch.empty(w.n_layers, w.n_heads)
    for l in range(w.n_layers):
        for h in range(w.n_heads):
            rows = E @ w.W_V[l, h].double() @ w.W_O[l, h].double() @ w.W_U.double()
            diag = rows[torch.arange(len(toks)), toks]
            out[l, h] = ((diag - rows.mean(-1)) / rows.std(-1)).mean()
    return out


@pytest.mark.parametrize("max_tokens", [512, 40])  # every token, and a seeded sample of them
def test_ov_diagonal_scores_match_the_full_block(max_tokens):
    torch.manual_seed(0)
    module = TinyTransformer(TinyConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=None, n_ctx=16,
                                        d_vocab=96, layer_norm=True))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))  # norms and biases away from their identity initialisation
    model = module.mechscope_adapter()
    got = ov_diagonal_scores(model, max_tokens=max_tokens)
    want = _brute_ov_diag(model, max_tokens)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_study_names_the_heads_the_model_was_built_with():
    """The hand-written induction model: previous-token head L0H0, induction head L1H0 (by construction)."""
    model = handwritten_induction()
    f = analyse(model, HeadStudyConfig(n=12, batch=16, low=0, n_boot=200), bos=None)
    assert f["previous_token"]["found"] and f["previous_token"]["heads"][0]["head"] == "L0H0"
    assert f["induction"]["found"] and f["induction"]["heads"][0]["head"] == "L1H0"
    assert f["induction"]["heads"][0]["ov_copying"] > 0.99
    # it has no copy-suppression head: the study says it fell back to the best candidate
    assert not f["copy_suppression"]["found"]
    assert [c["heads"] for c in f["causal_per_head"]["induction"]] == [["L1H0"]]
    c = f["causal"]
    assert c["induction"]["pass"] and c["induction"]["effect"] > 2.0
    assert c["previous_token"]["pass"] and c["previous_token"]["effect"] < -0.5
    json.dumps(f)  # every figure is plain data


@pytest.mark.slow
def test_smollm2_head_study():
    model = ms.load("smollm2-135m")
    tok = model.tokenizer
    f = analyse(model, HeadStudyConfig(n=12, batch=8, n_boot=200, top=1), bos=tok.bos_token_id, tokenizer=tok)
    assert f["previous_token"]["found"] and f["induction"]["found"]
    # the induction heads sit above the first previous-token head
    first_prev = min(int(r["head"][1:].split("H")[0]) for r in f["previous_token"]["heads"])
    assert all(int(r["head"][1:].split("H")[0]) > first_prev for r in f["induction"]["heads"])
    assert f["causal"]["induction"]["pass"]
    assert [len(v) for v in f["causal_per_head"].values()] == [1] * 5  # the best head of each role, alone
    paris = f["logit_lens"][0]
    assert paris["rank_per_layer"][-1] == 0 and paris["rank_per_layer"][0] > 0
