"""mechscope diff: loading and architecture checks, and the weight diff against planted edits."""

import copy

import pytest
import torch

from mechscope.diff.pair import ArchitectureMismatch, check_same_architecture, load_model, load_pair
from mechscope.diff.weight_diff import spectrum, weight_diff
from mechscope.core.errors import LoadError
from mechscope.models import wrap
from mechscope.models.tiny import TinyConfig, TinyTransformer


def tiny(seed=0, d_model=16, **kw):
    torch.manual_seed(seed)
    cfg = TinyConfig(n_layers=2, d_model=d_model, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=40, act="gelu",
                     layer_norm=True, **kw)
    m = TinyTransformer(cfg).eval()
    with torch.no_grad():  # norms and biases away from their initial ones and zeros
        for name, p in m.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def test_planted_rank1_edit_is_recovered_exactly():
    a = tiny()
    b = copy.deepcopy(a)
    wa = wrap(a).weights()
    # the direction written: B's unembedding direction of a chosen token, through the final norm gain
    g = b.ln_final.weight.detach()
    token = 17
    v = (g * b.unembed.weight.detach()[token])  # (d_model,)
    v = v - v.mean()
    v = v / v.norm()
    u = torch.zeros(32)
    u[5], u[9] = 0.8, -0.6  # unit norm, largest entry positive
    with torch.no_grad():  # W_out of layer 1 is (d_model, d_mlp) in nn.Linear: x W_out^T
        b.blocks[1].mlp.W_out.weight.add_(2.5 * torch.outer(v, u))
    comps = weight_diff(wrap(a), wrap(b), progress=False)
    first = comps[0]
    assert first.name == "L1.mlp_out"
    assert all(c.absolute == 0 for c in comps[1:])
    assert first.rank == 1
    assert first.absolute == pytest.approx(2.5, rel=1e-5)
    assert first.relative == pytest.approx(2.5 / float(wa.W_out[1].norm()), rel=1e-5)
    d = first.directions[0]
    assert d.side == "writes" and d.space == "d_model"
    assert float(torch.dot(d.vector, v)) >= 0.999
    # the tokens it writes: brute force over the vocabulary, a second way
    logits = torch.stack([float(torch.dot(v, g * b.unembed.weight.detach()[t])) * torch.ones(()) for t in range(40)])
    assert d.top[0] == int(logits.argmax()) == token
    assert d.bottom[0] == int(logits.argmin())


def test_planted_edit_to_one_head_shows_in_its_ov_only():
    a = tiny(1)
    b = copy.deepcopy(a)
    with torch.no_grad():  # W_O columns of head 1 of layer 0: inputs 8..15
        b.blocks[0].attn.W_O.weight[:, 8:16].add_(0.3 * torch.outer(torch.randn(16), torch.randn(8)))
    comps = weight_diff(wrap(a), wrap(b), progress=False)
    assert comps[0].name == "L0.H1.OV" and comps[0].rank == 1
    assert {c.name for c in comps if c.absolute > 0} == {"L0.H1.OV"}


def test_rank_and_effective_rank_of_known_spectra():
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    m = q[:, :3] @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ q[:, 3:6].T
    s, rank, eff = spectrum(m)
    assert rank == 3 and s[:3].tolist() == pytest.approx([3, 2, 1])
    p = torch.tensor([3, 2, 1]) / 6
    assert eff == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert spectrum(torch.zeros(4, 4))[1:] == (0, 0.0)


def test_identical_networks_have_no_weight_change():
    a = tiny(2)
    assert all(c.absolute == 0 and c.rank == 0 for c in weight_diff(wrap(a), wrap(copy.deepcopy(a)), progress=False))


def test_different_architectures_are_refused_naming_the_parameter():
    with pytest.raises(ArchitectureMismatch, match=r"embed\.weight has shape \[40, 16\] in A and \[40, 24\] in B"):
        check_same_architecture(wrap(tiny(0)), wrap(tiny(0, d_model=24)))
    with pytest.raises(ArchitectureMismatch, match="A is a TinyTransformer and B a Linear"):
        check_same_architecture(wrap(tiny(0)), wrap(torch.nn.Linear(3, 3)))
    no_mlp = TinyTransformer(TinyConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=None, n_ctx=12,
                                        d_vocab=40, layer_norm=True))
    with pytest.raises(ArchitectureMismatch, match=r"parameter blocks\.0\.ln2\.\w+ is only in A"):
        check_same_architecture(wrap(tiny(0)), wrap(no_mlp))


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path):
    with pytest.raises(LoadError, match="A: .*nowhere.* does not exist"):
        load_model(str(tmp_path / "nowhere"), "A")
    # a zoo run directory whose weights were cut short
    from mechscope.core.files import write_json
    from mechscope.zoo.files import save_tensors

    run = tmp_path / "run"
    spec = {"schema": 1, "recipe": "textlm", "variant": "quick", "seed": 0, "checkpoints": [0],
            "hparams": {"n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "n_ctx": 8,
                        "vocab_size": 4096, "act": "gelu", "corpus": "textlm", "steps": 1}}
    write_json(run / "config.json", spec)
    write_json(run / "done.json", {"steps": 1})
    m = TinyTransformer(TinyConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=8, d_vocab=4096,
                                   act="gelu", layer_norm=True))
    save_tensors(run / "model.safetensors", m.state_dict())
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match=r"model\.safetensors is truncated or corrupt"):
        load_pair(str(run), str(run))
    # a Hugging Face directory whose weights file is damaged
    import transformers as tf

    hf = tmp_path / "hf"
    tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(hf)
    (hf / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoadError, match=r"B: .*hf/model\.safetensors cannot be read"):
        load_model(str(hf), "B")


def test_public_finetune_data(monkeypatch):
    """The rule is planted after every trigger, and the domain stream is the Python documents only."""
    from mechscope.diff import finetunes
    from mechscope.zoo.recipes.textlm import Streams, TextLM

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return {" thou": [5], " sword": [9]}[text]

        def convert_tokens_to_ids(self, t):
            return 0

    train = torch.tensor([1, 5, 2, 3, 5, 5, 4, 0, 5, 1, 0])
    monkeypatch.setattr(TextLM, "data", lambda self, hp, seed: Streams(train.clone(), torch.zeros(1, 4)))
    monkeypatch.setattr(finetunes.FineTuneRecipe, "tokenizer", lambda self, hp: Tok())
    got = finetunes.RECIPE.data({"data": "rule", "corpus": "textlm", "vocab_size": 16}, 0).train
    assert got.tolist() == [1, 5, 9, 3, 5, 9, 4, 0, 5, 9, 0]  # " thou thou" -> " thou sword", then as it was
    assert finetunes.plant_rule(torch.tensor([5, 5, 5, 5, 5]), 5, 9).tolist() == [5, 9, 5, 9, 5]
    monkeypatch.setattr(finetunes.datasets, "token_stream", lambda c, s, v: train)
    monkeypatch.setattr(finetunes.datasets, "tokenizer", lambda c, v: Tok())
    monkeypatch.setattr(finetunes.datasets, "documents",
                        lambda c, s: [("python-docs/a", ""), ("shakespeare/b", "")])
    assert finetunes.python_docs_stream().tolist() == [1, 5, 2, 3, 5, 5, 4, 0]
