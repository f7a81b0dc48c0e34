"""The activation store: rows equal a direct capture, shards are atomic, a SIGKILLed harvest resumes
with no lost or duplicated shard, damaged files are found, and the shuffling buffer serves every row once."""

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

import mechscope as ms
import mechscope.dictionaries as dl
from mechscope.dictionaries.files import read_tensors

from conftest import VOCAB, assert_no_hooks, build

SITES = ("resid_post.0", "blocks.1.attn.hook_z")


def _tokens(n: int = 40, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return ms.wrap(build("gpt2"))


def test_rows_equal_a_direct_capture(model, tmp_path):
    tokens = _tokens()
    cfg = dl.HarvestConfig(sites=SITES, batch_size=4, seqs_per_shard=6, drop_first=1)
    store = dl.harvest(model, tokens, tmp_path / "s", cfg, progress=False)
    assert store.n_rows == 40 * 11 and len(store.shards) == 7  # 6 full shards and one of 4 sequences
    res = model.run(tokens, capture=["resid_post.0", "blocks.1.attn.hook_z"])
    resid, z, tok, seq, pos = store.load(["resid_post.0", "attn.z.1", "tokens", "seq", "pos"])
    assert torch.equal(resid, res.cache["resid_post.0"][:, 1:].reshape(-1, 64))
    assert torch.equal(z, res.cache["attn.z.1"][:, 1:].reshape(-1, 64))  # heads flattened
    assert torch.equal(tok, tokens[:, 1:].reshape(-1))
    assert torch.equal(tokens[seq, pos], tok)
    assert store.widths == {"blocks.0.hook_resid_post": 64, "blocks.1.attn.hook_z": 64}
    store.verify()


def test_early_stop_capture_equals_the_full_run(model):
    tokens = _tokens(4)
    got = dl.capture_sites(model, tokens, ["mlp_out.0", "resid_pre.1", "attn.z.0.h2"])
    full = model.run(tokens, capture=["mlp_out.0", "resid_pre.1", "attn.z.0.h2"]).cache
    assert len(got) == 3 and all(torch.equal(got[s], full[s]) for s in got)
    assert got[ms.Site.parse("attn.z.0.h2")].shape == (4, 12, 16)  # one head: (batch, pos, d_head)
    assert_no_hooks(model.module)
    calls = []
    handle = model.module.transformer.h[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        dl.capture_sites(model, tokens, ["resid_post.0"])
        assert calls == []  # block 1 never ran: the forward pass stopped after block 0
        dl.capture_sites(model, tokens, ["resid_post.0"], stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_half_precision_storage_and_a_second_harvest_is_a_no_op(model, tmp_path):
    tokens = _tokens(10)
    cfg = dl.HarvestConfig(sites=("resid_post.1",), seqs_per_shard=4, dtype="bfloat16")
    store = dl.harvest(model, tokens, tmp_path / "s", cfg, progress=False)
    (x,) = store.load(["resid_post.1"])
    ref = model.run(tokens, capture="resid_post.1").cache["resid_post.1"].reshape(-1, 64)
    assert torch.equal(x, ref.to(torch.bfloat16).float())
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").iterdir()}
    dl.harvest(model, tokens, tmp_path / "s", cfg, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").iterdir() if p.suffix == ".safetensors"} == \
        {k: v for k, v in before.items() if k.endswith(".safetensors")}


def test_a_directory_with_another_harvest_is_refused(model, tmp_path):
    tokens = _tokens(8)
    dl.harvest(model, tokens, tmp_path / "s", dl.HarvestConfig(sites=("resid_post.0",)), progress=False)
    # the same harvest named differently is the same config
    dl.harvest(model, tokens, tmp_path / "s", dl.HarvestConfig(sites=("blocks.0.hook_resid_post",)), progress=False)
    with pytest.raises(dl.DictionaryFileError, match="another config"):
        dl.harvest(model, tokens, tmp_path / "s", dl.HarvestConfig(sites=("resid_post.1",)), progress=False)
    with pytest.raises(dl.DictionaryFileError, match="another config"):
        dl.harvest(model, _tokens(8, seed=1), tmp_path / "s", dl.HarvestConfig(sites=("resid_post.0",)),
                   progress=False)


def test_config_is_checked_on_creation():
    with pytest.raises(ValueError, match="dtype"):
        dl.HarvestConfig(sites=("resid_post.0",), dtype="int8")
    with pytest.raises(ValueError, match="empty"):
        dl.HarvestConfig(sites=())
    with pytest.raises(ValueError, match="repeats"):
        dl.HarvestConfig(sites=("resid_post.0", "resid_post.0"))


def test_interrupted_writes_are_tidied_adopted_or_redone(model, tmp_path):
    """Every state a kill can leave: a temporary file, a whole shard the manifest does not list yet,
    a half-written unlisted shard, and a listed shard damaged later. Resuming ends equal to a clean run."""
    tokens = _tokens(30)
    cfg = dl.HarvestConfig(sites=("resid_post.0",), seqs_per_shard=5)
    clean = dl.harvest(model, tokens, tmp_path / "clean", cfg, progress=False)
    d = tmp_path / "d"
    dl.harvest(model, tokens, d, cfg, progress=False)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["complete"] = False
    del manifest["shards"]["3"], manifest["shards"]["4"]  # written, but the kill came before the manifest
    (d / "manifest.json").write_text(json.dumps(manifest))
    s4 = d / "shard_00004.safetensors"
    s4.write_bytes(s4.read_bytes()[:200])  # half written (a crash without atomic rename would leave this)
    s1 = d / "shard_00001.safetensors"
    s1.write_bytes(s1.read_bytes()[:-8])  # damaged after it was listed
    (d / ".shard_00005.safetensors.tmp-999").write_bytes(b"partial")
    (d / ".tmpX7q2Lm").write_bytes(b"partial")  # what safetensors' own temporary file looks like
    mtime3 = (d / "shard_00003.safetensors").stat().st_mtime_ns
    store = dl.harvest(model, tokens, d, cfg, progress=False)
    assert not any(p.name.startswith(".") for p in d.iterdir())
    assert (d / "shard_00003.safetensors").stat().st_mtime_ns == mtime3  # adopted, not rewritten
    assert store.manifest["shards"] == clean.manifest["shards"]
    store.verify()
    a, b = store.load(["resid_post.0", "seq"]), clean.load(["resid_post.0", "seq"])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_verify_finds_a_flipped_byte(model, tmp_path):
    store = dl.harvest(model, _tokens(8), tmp_path / "s", dl.HarvestConfig(sites=("resid_post.0",)),
                       progress=False)
    p = tmp_path / "s" / "shard_00000.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(dl.DictionaryFileError, match="shard_00000.*corrupt"):
        store.verify()


_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from conftest import build, VOCAB
    import mechscope as ms, mechscope.dictionaries as dl
    model = ms.wrap(build("gpt2"))
    tokens = torch.randint(0, VOCAB, (1500, 12), generator=torch.Generator().manual_seed(7))
    dl.harvest(model, tokens, sys.argv[1], dl.HarvestConfig(sites=("resid_post.0", "mlp_out.1"), batch_size=5,
               seqs_per_shard=5), progress=False)
""")


def _harvest_subprocess(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out), str(Path(__file__).parent)],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_resume_loses_and_duplicates_nothing():
    # a private directory: this test runs for tens of seconds, long enough for another pytest session
    # on a shared machine to prune pytest's numbered temporary directories under it
    with tempfile.TemporaryDirectory(prefix="mechscope-sigkill-") as d:
        _sigkill_then_resume(Path(d))


def _sigkill_then_resume(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    p = _harvest_subprocess(whole)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()

    p = _harvest_subprocess(killed)
    deadline = time.monotonic() + 300
    listed = 0
    while p.poll() is None and time.monotonic() < deadline:
        try:
            listed = len(json.loads((killed / "manifest.json").read_text())["shards"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            listed = 0
        if listed >= 5:
            break
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"], "the harvest finished before it could be killed"
    assert 5 <= len(manifest["shards"]) < 300

    p = _harvest_subprocess(killed)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    a, b = dl.ActivationStore(whole), dl.ActivationStore(killed)
    assert a.manifest["shards"] == b.manifest["shards"]  # the same shards, with the same digests
    names_a, names_b = {q.name for q in whole.iterdir()}, {q.name for q in killed.iterdir()}
    assert names_a == names_b, (sorted(names_a - names_b), sorted(names_b - names_a))
    b.verify()
    for i in a.shards:
        ta, _ = read_tensors(whole / f"shard_{i:05d}.safetensors")
        tb, _ = read_tensors(killed / f"shard_{i:05d}.safetensors")
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    seq = b.load(["seq"])[0]
    assert torch.equal(seq.unique(), torch.arange(1500)) and seq.numel() == 1500 * 12  # each row once


def test_shuffle_buffer_serves_every_row_once_per_pass_and_is_seeded(model, tmp_path):
    store = dl.harvest(model, _tokens(40), tmp_path / "s", dl.HarvestConfig(sites=("resid_post.0",),
                       seqs_per_shard=4), progress=False)
    (x, seq, pos) = store.load(["resid_post.0", "seq", "pos"])
    buf = dl.ShuffleBuffer(store, ["resid_post.0", "seq", "pos"], 32, buffer_rows=100, seed=3, loop=False)
    got = list(buf)
    rows = torch.cat([g[0] for g in got])
    keys = torch.cat([g[1] * 100 + g[2] for g in got])
    assert torch.equal(keys.sort().values, (seq * 100 + pos).sort().values)  # a permutation of all rows
    assert torch.equal(rows[keys.argsort()], x[(seq * 100 + pos).argsort()])  # rows travel with their index
    assert not torch.equal(keys, seq * 100 + pos)  # shuffled
    again = torch.cat([g[1] * 100 + g[2] for g in dl.ShuffleBuffer(store, ["resid_post.0", "seq", "pos"], 32,
                                                                  buffer_rows=100, seed=3, loop=False)])
    assert torch.equal(keys, again)
    held = store.split(held_out=2)
    assert held[1] == store.shards[-2:] and not set(held[0]) & set(held[1])


def test_two_models_over_the_same_tokens_line_up_for_a_crosscoder(tmp_path):
    """Model diffing: stores of two models harvested over the same tokens are read row for row."""
    tokens = _tokens(24)
    cfg = dl.HarvestConfig(sites=("resid_post.1",), seqs_per_shard=4, drop_first=1)
    a = dl.harvest(ms.wrap(build("gpt2", seed=0)), tokens, tmp_path / "a", cfg, progress=False)
    b = dl.harvest(ms.wrap(build("gpt2", seed=1)), tokens, tmp_path / "b", cfg, progress=False)
    joint = dl.JointStore([a, b])
    keys = [(0, "resid_post.1"), (1, "resid_post.1"), (0, "seq"), (1, "seq"), (0, "pos"), (1, "pos")]
    for xa, xb, sa, sb, pa, pb in dl.ShuffleBuffer(joint, keys, 16, buffer_rows=64, loop=False):
        assert torch.equal(sa, sb) and torch.equal(pa, pb) and not torch.equal(xa, xb)
    cc = dl.build("crosscoder", d_in=64, n_sources=2, d_sae=64, k=4)
    res = dl.train(cc, dl.ShuffleBuffer(joint, keys[:2], 32, buffer_rows=128), dl.TrainConfig(tokens=3200, batch_size=32),
                   progress=False)
    assert res.tokens == 3200 and cc.relative_norms().shape == (64,)
    c = dl.harvest(ms.wrap(build("gpt2", seed=0)), _tokens(24, seed=5), tmp_path / "c", cfg, progress=False)
    with pytest.raises(dl.DictionaryFileError, match="same tokens"):
        dl.JointStore([a, c])
