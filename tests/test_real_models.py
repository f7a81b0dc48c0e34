"""Real networks, offline: SmolLM2-135M (from its GGUF package) and all-MiniLM-L6-v2."""

import pytest
import torch

import mechscope as ms
from mechscope.core.site import Kind, Site

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return ms.load("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return ms.load("minilm-l6")


def test_smollm_architecture(smollm):
    assert (smollm.n_layers, smollm.n_heads, smollm.n_kv_heads, smollm.d_model) == (30, 9, 3, 576)
    w = smollm.weights()
    assert w.W_Q.shape == (30, 9, 576, 64) and w.W_K.shape == (30, 9, 576, 64)
    assert w.W_K_grouped.shape == (30, 3, 576, 64)


def test_smollm_capital_of_france(smollm):
    res = smollm.run(smollm.to_tokens("The capital of France is"))
    top = smollm.to_str_tokens(res.logits[0, -1].topk(1).indices)[0]
    assert top == " Paris"


def test_smollm_ioi_prefers_indirect_object(smollm):
    tok = smollm.tokenizer
    res = smollm.run(smollm.to_tokens("When Mary and John went to the store, John gave a drink to"))
    mary, john = (tok.encode(n, add_special_tokens=False)[0] for n in (" Mary", " John"))
    assert res.logits[0, -1, mary] > res.logits[0, -1, john] + 1.0


def test_smollm_capture_is_exact_and_patch_identity(smollm):
    ids = smollm.to_tokens(["When Mary and John went to the store, John gave a drink to"])["input_ids"]
    bare = smollm.module(ids).logits
    sites = [Site(Kind.PATTERN, 12), Site(Kind.Z, 12), Site(Kind.RESID_MID, 12), Site(Kind.MLP_POST, 5)]
    res = smollm.run(ids, capture=sites)
    assert torch.equal(res.logits, bare)
    patched = smollm.run(ids, interventions=[ms.Patch(s, value=res.cache[s]) for s in sites])
    assert torch.equal(patched.logits, bare)


def test_smollm_bos_and_padding_are_explicit(smollm):
    plain = smollm.to_tokens("Hello world")
    with_bos = smollm.to_tokens("Hello world", prepend_bos=True)
    assert with_bos["input_ids"][0, 0] == smollm.tokenizer.bos_token_id
    assert torch.equal(with_bos["input_ids"][0, 1:], plain["input_ids"][0])
    batch = smollm.to_tokens(["Hi", "The capital of France is"])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    # right padding: the short prompt's logits at its last real token match the unpadded run
    res = smollm.run(batch)
    n = int(batch["attention_mask"][0].sum())
    alone = smollm.run(smollm.to_tokens("Hi"))
    torch.testing.assert_close(res.logits[0, n - 1], alone.logits[0, -1], atol=1e-4, rtol=1e-4)


def _embed(model, texts):
    batch = model.to_tokens(texts)
    res = model.run(batch, capture=[Site(Kind.RESID_POST, model.n_layers - 1)])
    h = res.cache[Site(Kind.RESID_POST, model.n_layers - 1)]  # (batch, pos, d_model)
    m = batch["attention_mask"].unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1)  # mean pooling, as sentence-transformers does
    return torch.nn.functional.normalize(e, dim=-1)


def test_minilm_ranks_paraphrase_above_unrelated(minilm):
    e = _embed(minilm, ["A man is playing a guitar.", "Someone is strumming a guitar.",
                        "The stock market fell sharply today."])
    para, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert para > unrelated + 0.3, (para, unrelated)


def test_minilm_last_layer_equals_model_output(minilm):
    batch = minilm.to_tokens(["A man is playing a guitar."])
    res = minilm.run(batch, capture=["blocks.5.hook_resid_post"])
    assert torch.equal(res.cache["blocks.5.hook_resid_post"], res.output.last_hidden_state)
