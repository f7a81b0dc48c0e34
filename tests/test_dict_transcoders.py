"""Transcoders for every layer: the skip connection and the cross-layer transcoder recover known
maps, a transcoder set round-trips exactly and refuses another model, the replacement model is
exact when the transcoders are, and a SIGKILLed training run resumes with nothing lost or redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
import transformers as tf

import mechscope as ms
import mechscope.dictionaries as dl
from mechscope.cli_dict import parse_layers
from mechscope.dictionaries.files import DictionaryFileError, read_tensors
from mechscope.dictionaries.store import model_fingerprint
from mechscope.dictionaries.transcoder_run import TranscoderRunConfig
from mechscope.dictionaries.transcoder_set import FORMAT, TranscoderSet

from conftest import VOCAB, build


TRAIN = dl.TrainConfig(tokens=256 * 2000, batch_size=256, lr=3e-3)


def _tokens(n: int, seq: int = 12, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


# --- architectures on data with a known answer ---------------------------------------------------------

@pytest.mark.slow
def test_skip_connection_recovers_the_linear_map():
    """y = x A + Σ_j relu(|x·e_j| - t) d_j: the sparse part is even in x, so it has no linear part
    (x is symmetric), and the best linear map from x to y is A. The skip weights must be A."""
    g = torch.Generator().manual_seed(0)
    d_in, d_out, n_feat, n = 16, 12, 6, 40_000
    A = torch.randn(d_in, d_out, generator=g) / d_in ** 0.5
    E = torch.linalg.qr(torch.randn(d_in, n_feat, generator=g))[0]  # orthonormal feature directions
    D = torch.randn(n_feat, d_out, generator=g)
    x = torch.randn(n, d_in, generator=g)
    sparse = ((x @ E).abs() - 1.5).relu() @ D  # each feature fires on ~13% of rows
    y = x @ A + sparse
    lstsq = torch.linalg.lstsq(x, y).solution  # the second way: least squares on the same rows
    assert (lstsq - A).norm() / A.norm() < 0.05
    tc = dl.build("transcoder", d_in=d_in, d_out=d_out, d_sae=24, k=4, skip=True, seed=0)
    dl.train(tc, dl.batches_from_tensors(x, y, batch_size=256), TRAIN, progress=False)
    err = float((tc.W_skip.detach() - A).norm() / A.norm())
    assert err < 0.05, err
    fvu = dl.evaluate(tc, (x[:4096], y[:4096])).fvu
    assert fvu < 0.05, fvu
    # without the skip connection, the same budget leaves the linear part to the latents
    plain = dl.build("transcoder", d_in=d_in, d_out=d_out, d_sae=24, k=4, seed=0)
    dl.train(plain, dl.batches_from_tensors(x, y, batch_size=256), TRAIN, progress=False)
    assert dl.evaluate(plain, (x[:4096], y[:4096])).fvu > 2 * fvu


@pytest.mark.slow
def test_cross_layer_transcoder_recovers_known_decoders():
    """Layer 0's latents write to layers 0 and 1 through known decoders, layer 1's to layer 1; after
    matching, every learned decoder (all target layers together) has cosine >= 0.95 with its truth."""
    g = torch.Generator().manual_seed(1)
    m, d_in, d_out, n = 8, 16, 12, 30_000
    codes = [(torch.rand(n, m, generator=g) < 0.12) * (0.5 + torch.rand(n, m, generator=g)) for _ in range(2)]
    E = [torch.linalg.qr(torch.randn(d_in, m, generator=g))[0].t() for _ in range(2)]  # (m, d_in) orthonormal
    D00, D01, D11 = (torch.randn(m, d_out, generator=g) for _ in range(3))
    x = torch.stack([codes[0] @ E[0], codes[1] @ E[1]], 1)
    y = torch.stack([codes[0] @ D00, codes[0] @ D01 + codes[1] @ D11], 1)
    clt = dl.build("clt", d_in=d_in, d_out=d_out, d_sae=2 * m, k=3, n_layers=2, seed=0)
    dl.train(clt, dl.batches_from_tensors(x, y, batch_size=256), TRAIN, progress=False)
    truth = torch.cat([torch.cat([D00, D01], 1), torch.cat([torch.zeros(m, d_out), D11], 1)])
    # match within each layer's latents (a latent of layer 1 cannot write to layer 0: its block is zero)
    for layer in range(2):
        learned = clt.W_dec.detach()[layer * m:(layer + 1) * m]
        got = dl.match(learned, truth[layer * m:(layer + 1) * m])
        assert got.cos.numel() == m and float(got.cos.min()) >= 0.95, got.cos
    assert float(clt.W_dec.detach()[m:, :d_out].abs().max()) == 0.0  # layer 1 never writes to layer 0
    assert dl.evaluate(clt, (x[:4096], y[:4096])).fvu < 0.05


def test_clt_layer_by_layer_equals_the_whole_forward():
    clt = dl.build("clt", d_in=8, d_out=6, d_sae=30, k=3, n_layers=3, seed=2)
    torch.nn.init.normal_(clt.b_enc)
    x = torch.randn(5, 3, 8)
    codes = {layer: clt.encode_layer(layer, x[:, layer]) for layer in range(3)}
    assert torch.allclose(torch.cat([codes[i] for i in range(3)], 1), clt.encode(x), atol=1e-6)
    whole = clt(x)
    for t in range(3):
        assert torch.allclose(clt.decode_layer(t, codes), whole[:, t], atol=1e-5)


def test_clt_config_is_checked():
    with pytest.raises(ValueError, match="multiple of n_layers"):
        dl.build("clt", d_in=8, d_out=6, d_sae=31, k=3, n_layers=3)
    with pytest.raises(ValueError, match="per layer"):
        dl.build("clt", d_in=8, d_out=6, d_sae=30, k=11, n_layers=3)
    with pytest.raises(ValueError, match="d_out"):
        dl.build("clt", d_in=8, d_sae=30, k=2, n_layers=3)


def test_skip_weights_survive_the_saelens_layout(tmp_path):
    tc = dl.build("transcoder", d_in=8, d_out=6, d_sae=16, k=2, skip=True)
    torch.nn.init.normal_(tc.W_skip)
    back = dl.load(dl.save(tc, tmp_path / "tc"))
    assert dl.weights_equal(tc, back) and torch.equal(back.W_skip, tc.W_skip)


# --- the replacement model is exact when the transcoders are --------------------------------------------

def _relu_gpt2() -> ms.Model:
    cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=48, vocab_size=VOCAB, n_positions=64,
                        activation_function="relu")
    torch.manual_seed(3)
    hf = tf.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger weights than initialisation gives, so that removing the MLPs changes the loss
        hf.transformer.wte.weight.mul_(10)
        for blk in hf.transformer.h:
            blk.mlp.c_fc.weight.mul_(5)
            blk.mlp.c_proj.weight.mul_(20)
    return ms.wrap(hf)


def _manifest(model, kind: str, layers: list[int]) -> dict:
    return {"format": FORMAT, "kind": kind, "model": "relu-gpt2", "model_fingerprint": model_fingerprint(model.module),
            "layers": layers, "sites": {str(L): {"input": f"blocks.{L}.ln2.hook_normalized",
                                                 "output": f"blocks.{L}.hook_mlp_out"} for L in layers},
            "d_model": 32, "d_out": 32, "trained": True}


def _exact_set(model, kind: str) -> TranscoderSet:
    """Transcoders equal to the model's ReLU MLPs: W_enc = c_fc, TopK with k = d_sae (every unit
    kept, then ReLU), W_dec = c_proj; for the CLT the same blocks, layer 0 -> 1 at zero."""
    blocks = model.module.transformer.h
    if kind == "per-layer":
        tcs = {}
        for L, blk in enumerate(blocks):
            tc = dl.build("transcoder", d_in=32, d_out=32, d_sae=48, k=48)
            tc.load_state_dict({"W_enc": blk.mlp.c_fc.weight, "b_enc": blk.mlp.c_fc.bias,
                                "W_dec": blk.mlp.c_proj.weight, "b_dec": blk.mlp.c_proj.bias})
            tcs[L] = tc
        return TranscoderSet(_manifest(model, kind, [0, 1]), transcoders=tcs)
    clt = dl.build("clt", d_in=32, d_out=32, d_sae=96, k=48, n_layers=2)
    W_dec = torch.zeros(96, 64)
    W_dec[:48, :32], W_dec[48:, 32:] = blocks[0].mlp.c_proj.weight, blocks[1].mlp.c_proj.weight
    clt.load_state_dict({"W_enc": torch.stack([b.mlp.c_fc.weight for b in blocks]),
                         "b_enc": torch.cat([b.mlp.c_fc.bias for b in blocks]), "W_dec": W_dec,
                         "b_dec": torch.cat([b.mlp.c_proj.bias for b in blocks])})
    return TranscoderSet(_manifest(model, kind, [0, 1]), clt=clt)


@pytest.mark.parametrize("kind", ["per-layer", "clt"])
def test_replacement_model_of_exact_transcoders_has_kl_0_and_recovers_everything(kind):
    model = _relu_gpt2()
    tset = _exact_set(model, kind)
    toks = _tokens(12, seq=10, seed=4)
    s = dl.replacement_scores(model, tset, toks, batch_size=5)
    assert abs(s.kl) < 1e-6 and abs(s.replaced - s.clean) < 1e-5
    assert abs(s.vs_zero.value - 1) < 1e-5 and abs(s.vs_mean.value - 1) < 1e-5
    assert abs(s.zero - s.clean) > 0.05 and abs(s.mean - s.clean) > 0.05  # the MLPs matter
    # a transcoder that is wrong by a little at layer 1 moves the KL away from 0 (a random offset: a
    # constant one would vanish in the final layer norm)
    wrong = torch.randn(32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        (tset.transcoders[1].b_dec if kind == "per-layer" else tset.clt.b_dec[32:]).add_(wrong)
    worse = dl.replacement_scores(model, tset, toks, batch_size=5)
    assert worse.kl > 1e-3 and abs(worse.vs_zero.value - 1) > 1e-3  # (random tokens: it may even lower the loss)


def test_parse_layers():
    assert parse_layers("all", 4) == (0, 1, 2, 3)
    assert parse_layers("0-2,5", 30) == (0, 1, 2, 5)
    import typer
    with pytest.raises(typer.BadParameter, match="layers 0-3"):
        parse_layers("2-4", 4)


# --- a trained set: round trip, model check, resume after SIGKILL --------------------------------------

def _run_config(**kw) -> TranscoderRunConfig:
    base = dict(layers=(0, 1), d_latent=48, k=4, train=dl.TrainConfig(tokens=6000, batch_size=256),
                seqs_per_shard=40, eval_batch=8)
    return TranscoderRunConfig(**(base | kw))


def test_the_finished_layers_of_a_set_still_training_load_and_check_the_model(tmp_path):
    from mechscope.dictionaries.transcoder_set import (layer_file, load_finished_layers, write_dictionary_file,
                                                       write_manifest)

    model = _relu_gpt2()
    full = _exact_set(model, "per-layer")
    path = tmp_path / "set"
    path.mkdir()
    write_manifest(path, {**full.manifest, "trained": False})  # layer 1 is still training
    write_dictionary_file(path / layer_file(0), full.transcoders[0], {})
    for got in (load_finished_layers(path, model), load_finished_layers(path, model, [0])):
        assert list(got) == [0] and dl.weights_equal(got[0], full.transcoders[0])
    with pytest.raises(DictionaryFileError, match=r"no transcoder yet for layers \[1\]"):
        load_finished_layers(path, model, [0, 1])
    with pytest.raises(DictionaryFileError, match="trained on another model"):
        load_finished_layers(path, ms.wrap(build("gpt2")))
    (path / layer_file(0)).unlink()
    with pytest.raises(DictionaryFileError, match="no layer is trained yet"):
        load_finished_layers(path, model)


@pytest.mark.parametrize("kw", [dict(skip=True), dict(clt=True), dict(activation="relu")], ids=["skip", "clt", "relu"])
def test_transcoder_set_round_trip_is_exact_and_checks_the_model(tmp_path, kw):
    model = ms.wrap(build("gpt2"))
    tset = dl.train_transcoder_set(model, _tokens(600), _tokens(8, seed=8), _run_config(**kw), tmp_path / "set",
                                   progress=False)
    back = dl.load_transcoder_set(tmp_path / "set", model)
    assert back.manifest["complete"] and back.layers == [0, 1]
    pairs = [(tset.clt, back.clt)] if kw.get("clt") else [(tset.transcoders[L], back.transcoders[L]) for L in (0, 1)]
    for a, b in pairs:
        assert type(a) is type(b) and a.config == b.config and dl.weights_equal(a, b)
    if kw.get("skip"):
        assert back.transcoders[0].W_skip is not None
    m = back.manifest
    if kw.get("activation") == "relu":
        assert m["architecture"] == "relu_transcoder" and isinstance(back.transcoders[0], dl.ReLUTranscoder)
        assert back.transcoders[0].config.target_l0 == 4
    for L in ("0", "1"):
        assert set(m["per_layer"][L]) >= {"fvu", "l0", "dead_fraction"} and 0 < m["per_layer"][L]["fvu"] < 2
    rep = m["replacement"]
    assert rep["loss_zero_ablated"] != rep["loss_clean"] and rep["kl"] >= 0
    assert {"recovered_vs_zero", "recovered_vs_mean"} <= set(rep)
    # the manifest's scores are what replacement_scores gives for the loaded set on the same tokens
    again = dl.replacement_scores(model, back, _tokens(8, seed=8), batch_size=8)
    assert again.kl == pytest.approx(rep["kl"], rel=1e-6) and again.replaced == pytest.approx(rep["loss_replaced"])

    other = ms.wrap(build("gpt2", seed=1))
    with pytest.raises(DictionaryFileError, match=r"fingerprint .*load the model it was trained on"):
        dl.load_transcoder_set(tmp_path / "set", other)
    # a damaged tensor file is named
    f = tmp_path / "set" / ("clt.safetensors" if kw.get("clt") else "layer_001.safetensors")
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(DictionaryFileError, match=f.name):
        dl.load_transcoder_set(tmp_path / "set")


def test_another_run_in_the_same_directory_is_refused(tmp_path):
    model = ms.wrap(build("gpt2"))
    cfg = _run_config(layers=(1,), train=dl.TrainConfig(tokens=2000, batch_size=256))
    dl.train_transcoder_set(model, _tokens(300), _tokens(4, seed=8), cfg, tmp_path / "set", progress=False)
    with pytest.raises(DictionaryFileError, match="another transcoder run"):
        dl.train_transcoder_set(model, _tokens(300), _tokens(4, seed=8), _run_config(layers=(1,), d_latent=64,
                                train=dl.TrainConfig(tokens=2000, batch_size=256)), tmp_path / "set", progress=False)


_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from conftest import build, VOCAB
    import mechscope as ms, mechscope.dictionaries as dl
    from mechscope.dictionaries.transcoder_run import TranscoderRunConfig
    model = ms.wrap(build("gpt2"))
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (1200, 12), generator=g)
    cfg = TranscoderRunConfig(layers=(0, 1), d_latent=64, k=4, skip=True, seqs_per_shard=100,
                              train=dl.TrainConfig(tokens=int(sys.argv[3]), batch_size=128))
    dl.train_transcoder_set(model, tokens, tokens[:8], cfg, sys.argv[1], progress=False)
""")


def _run_subprocess(out: Path, tokens: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out), str(Path(__file__).parent), str(tokens)],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_during_training_then_resume_keeps_finished_layers_and_ends_equal():
    with tempfile.TemporaryDirectory(prefix="mechscope-tc-sigkill-") as d:
        _sigkill_then_resume(Path(d))


def _sigkill_then_resume(tmp: Path, tokens: int = 80_000) -> None:
    whole, killed = tmp / "whole", tmp / "killed"
    p = _run_subprocess(whole, tokens)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()

    p = _run_subprocess(killed, tokens)
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline and not (killed / "layer_000.safetensors").is_file():
        time.sleep(0.01)
    time.sleep(0.2)  # inside layer 1's training
    p.send_signal(signal.SIGKILL)
    p.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["trained"], "the run finished before it could be killed"
    assert (killed / "layer_000.safetensors").is_file() and not (killed / "layer_001.safetensors").is_file()
    mtime0 = (killed / "layer_000.safetensors").stat().st_mtime_ns

    p = _run_subprocess(killed, tokens)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    assert (killed / "layer_000.safetensors").stat().st_mtime_ns == mtime0  # kept, not trained again
    a, b = json.loads((whole / "manifest.json").read_text()), json.loads((killed / "manifest.json").read_text())
    assert b["complete"] and a["run_hash"] == b["run_hash"]
    for L in ("0", "1"):
        for key in ("fvu", "l0", "dead_fraction", "train_tokens"):
            assert a["per_layer"][L][key] == b["per_layer"][L][key]
    assert a["replacement"]["kl"] == b["replacement"]["kl"]
    for name in ("layer_000.safetensors", "layer_001.safetensors"):
        ta, _ = read_tensors(whole / name)
        tb, _ = read_tensors(killed / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert {q.name for q in whole.iterdir()} == {q.name for q in killed.iterdir()}


def test_epochs_pass_over_the_same_harvest_several_times(tmp_path):
    from typer.testing import CliRunner

    from audit_support import quick_text_model
    from mechscope.cli import app

    quick_text_model()  # trained into the session's cache on first use
    common = ["dict", "transcoders", "zoo:textlm-quick", "--layers", "0", "--tokens", "2000", "--batch", "256",
              "--d-latent", "64", "-k", "4", "--eval-sequences", "2", "--seq-len", "32"]
    runs = {}
    for epochs in (1, 3):
        r = CliRunner().invoke(app, [*common, "--epochs", str(epochs), "--out", str(tmp_path / f"e{epochs}")])
        assert r.exit_code == 0, r.output
        runs[epochs] = json.loads((tmp_path / f"e{epochs}" / "manifest.json").read_text())
    one, three = runs[1], runs[3]
    assert one["training"]["harvest_rows"] == three["training"]["harvest_rows"]  # the same harvest
    assert three["training"]["tokens_per_layer"] == 3 * one["training"]["tokens_per_layer"] == 6000
    assert three["per_layer"]["0"]["train_tokens"] > 2 * one["per_layer"]["0"]["train_tokens"]
    r = CliRunner().invoke(app, [*common, "--epochs", "0", "--out", str(tmp_path / "e0")])
    assert r.exit_code != 0 and "--epochs must be at least 1" in r.output


def test_relu_transcoder_runs_are_checked_and_topk_runs_keep_their_hash():
    with pytest.raises(ValueError, match="activation must be 'topk' or 'relu'"):
        _run_config(activation="gelu")
    for kw in (dict(clt=True), dict(skip=True)):
        with pytest.raises(ValueError, match="ReLU transcoders are per-layer"):
            _run_config(activation="relu", **kw)
    with pytest.raises(ValueError, match="needs d_out"):
        dl.ReLUTranscoderConfig(d_in=8, d_sae=16)
    # a TopK run hashes as it did before the ReLU fields existed, so its sets resume; a ReLU run differs
    topk, relu = _run_config(), _run_config(activation="relu")
    assert "activation" not in topk.hashed() and "l1_coefficient" not in topk.hashed()
    assert relu.hashed()["activation"] == "relu" and relu.architecture == "relu_transcoder"
    assert topk.architecture == "transcoder" and _run_config(clt=True).architecture == "clt"
    # a ReLU run started from TopK (the default) hashes apart from one trained from scratch, which
    # hashes as ReLU runs did before the TopK start existed
    assert "relu_start" not in topk.hashed() and relu.hashed()["relu_start"] == "topk"
    assert "relu_start" not in _run_config(activation="relu", relu_start="random").hashed()
    with pytest.raises(ValueError, match="relu_start must be 'topk' or 'random'"):
        _run_config(activation="relu", relu_start="warm")


def test_relu_transcoder_from_topk_keeps_its_weights_and_fine_tunes_without_reinitialising():
    """`from_topk` copies a trained TopK transcoder and lowers the encoder bias by the median k-th
    largest pre-activation t, so codes are ReLU(pre - t) and about k fire per row; the trainer's
    `initialise=False` keeps those weights (a vanishing learning rate leaves the outputs unchanged,
    where the usual initialisation moves them); the fine-tuned L1 reaches its target L0 without
    losing the TopK's fit, where a ReLU transcoder trained from scratch on as many rows does not fit."""
    from mechscope.dictionaries.relu_transcoder import from_topk

    g = torch.Generator().manual_seed(0)
    d_in, d_out, n_feat, n = 16, 12, 24, 8192
    E = torch.randn(d_in, n_feat, generator=g) / d_in ** 0.5
    D = torch.randn(n_feat, d_out, generator=g)
    x = torch.randn(n, d_in, generator=g)
    y = ((x @ E) - 0.6).relu() @ D
    batches = lambda b=256: [(x[i:i + b], y[i:i + b]) for i in range(0, n, b)]  # noqa: E731
    topk = dl.build("transcoder", d_in=d_in, d_out=d_out, d_sae=48, k=6, seed=1)
    dl.train(topk, batches() * 6, dl.TrainConfig(tokens=6 * n, batch_size=256, lr=3e-3), progress=False)

    relu = from_topk(topk, x[:2048])
    pre = topk.preactivations(x).detach()
    t = float(topk.preactivations(x[:2048]).detach().topk(6, dim=-1).values[:, -1].median())
    for name in ("W_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(relu, name), getattr(topk, name))
    assert torch.allclose(relu.b_enc, topk.b_enc - t)
    assert torch.allclose(relu.codes(x), (pre - t).relu(), atol=1e-6)
    assert 5 <= float((relu.codes(x) > 0).sum(-1).float().median()) <= 6 and relu.config.target_l0 == 6

    before = relu(x).detach()
    kept = from_topk(topk, x[:2048])
    dl.train(kept, batches(), dl.TrainConfig(tokens=n, batch_size=256, lr=1e-30, initialise=False), progress=False)
    assert (kept(x) - before).abs().max() < 1e-4 * before.abs().max()
    reset = from_topk(topk, x[:2048])
    dl.train(reset, batches(), dl.TrainConfig(tokens=n, batch_size=256, lr=1e-30), progress=False)
    assert (reset(x) - before).abs().max() > 1e-2 * before.abs().max()  # the usual start resets b_dec

    fvu_topk = dl.evaluate(topk, (x, y)).fvu
    dl.train(relu, batches() * 4, dl.TrainConfig(tokens=4 * n, batch_size=256, lr=1e-3, initialise=False),
             progress=False)
    m = dl.evaluate(relu, (x, y))
    assert abs(m.l0 - 6) < 2 and m.fvu < fvu_topk + 0.05, (m.l0, m.fvu, fvu_topk)
    # the same ten passes from scratch: the L1 shuts nearly everything before the encoder has learnt
    scratch = dl.build("relu_transcoder", d_in=d_in, d_out=d_out, d_sae=48, target_l0=6.0, seed=1)
    dl.train(scratch, batches() * 10, dl.TrainConfig(tokens=10 * n, batch_size=256, lr=3e-3), progress=False)
    assert dl.evaluate(scratch, (x, y)).fvu > m.fvu + 0.3

    with pytest.raises(ValueError, match="TopK transcoder without a skip"):
        from_topk(dl.build("transcoder", d_in=d_in, d_out=d_out, d_sae=48, k=6, skip=True), x)
    with pytest.raises(ValueError, match="TopK transcoder"):
        from_topk(dl.build("topk", d_in=d_in, d_sae=48, k=6), x)
    with pytest.raises(ValueError, match=r"MLP-input rows \(rows, 16\)"):
        from_topk(topk, x[:, :8])
