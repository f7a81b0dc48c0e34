"""Harvesting on Ray Data: the store equals the one-process harvest's, a partly written store is
finished without rewriting or duplicating a shard, and bad input (a locked store, an unreachable
cluster) fails clearly. One local Ray instance (2 CPUs) serves the module."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed
ray = pytest.importorskip("ray", reason="Ray is in the `distributed` extra (make test installs it)")

import mechscope as ms  # noqa: E402
import mechscope.dictionaries as dl  # noqa: E402
from mechscope.dictionaries.files import DictionaryFileError, read_tensors  # noqa: E402
from mechscope.dictionaries.ray_harvest import ray_harvest  # noqa: E402
from mechscope.dictionaries.store import harvest_lock  # noqa: E402

from conftest import VOCAB, build  # noqa: E402

CFG = dl.HarvestConfig(sites=("resid_post.0", "blocks.1.attn.hook_z"), batch_size=3, seqs_per_shard=5,
                       drop_first=1)


def tiny_gpt2(device=None):
    model = ms.wrap(build("gpt2"))
    return model if device is None else model.to(device)


def _tokens(n: int = 23, seq: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def _same_store(a: Path, b: Path) -> None:
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    assert list(ma["shards"]) == list(mb["shards"])  # the same shards in the same order
    assert ma == mb
    for entry in ma["shards"].values():
        ta, meta_a = read_tensors(a / entry["file"])
        tb, meta_b = read_tensors(b / entry["file"])
        assert ta.keys() == tb.keys() and meta_a == meta_b
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and (ta[k].double() - tb[k].double()).abs().max() <= 1e-6


@pytest.mark.slow
def test_ray_store_equals_the_one_process_store(local_ray, tmp_path):
    tokens = _tokens()
    one = dl.harvest(tiny_gpt2(), tokens, tmp_path / "one", CFG, progress=False)
    two = ray_harvest(tiny_gpt2, tokens, tmp_path / "ray", CFG, workers=2, progress=False)
    assert len(two.shards) == 5 and two.n_rows == 23 * 9
    _same_store(one.path, two.path)
    two.verify()


@pytest.mark.slow
def test_a_partly_written_store_is_finished_without_rewriting_a_shard(local_ray, tmp_path):
    tokens = _tokens(seed=1)
    whole = dl.harvest(tiny_gpt2(), tokens, tmp_path / "whole", CFG, progress=False).path
    # a store as a killed job leaves it: shards 0 and 1 listed, shard 3 written but not yet listed,
    # a temporary file of an interrupted write, and a stray shard of another harvest
    part = tmp_path / "part"
    part.mkdir()
    manifest = json.loads((whole / "manifest.json").read_text())
    manifest["shards"] = {k: v for k, v in manifest["shards"].items() if k in ("0", "1")}
    manifest["complete"] = False
    manifest.pop("n_rows")
    (part / "manifest.json").write_text(json.dumps(manifest))
    for i in (0, 1, 3):
        shutil.copy2(whole / f"shard_{i:05d}.safetensors", part)
    (part / ".shard_00002.safetensors.tmp-999").write_bytes(b"half a shard")
    kept = {i: (part / f"shard_{i:05d}.safetensors").stat().st_mtime_ns for i in (0, 1, 3)}
    ray_harvest(tiny_gpt2, tokens, part, CFG, workers=2, progress=False)
    _same_store(whole, part)
    assert {i: (part / f"shard_{i:05d}.safetensors").stat().st_mtime_ns for i in (0, 1, 3)} == kept
    assert sorted(p.name for p in part.iterdir()) == sorted(p.name for p in whole.iterdir())


def test_a_store_being_written_is_refused(local_ray, tmp_path):
    with harvest_lock(tmp_path / "s"):
        with pytest.raises(DictionaryFileError, match="being written by another harvest"):
            ray_harvest(tiny_gpt2, _tokens(), tmp_path / "s", CFG, progress=False)
        with pytest.raises(DictionaryFileError, match="being written by another harvest"):
            dl.harvest(tiny_gpt2(), _tokens(), tmp_path / "s", CFG, progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists()  # nothing was written


def test_an_unreachable_cluster_fails_fast_and_clearly(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        ray_harvest(tiny_gpt2, _tokens(), tmp_path / "s", CFG, address=f"127.0.0.1:{port}", progress=False)
    with pytest.raises(ValueError, match="is not host:port"):
        ray_harvest(tiny_gpt2, _tokens(), tmp_path / "t", CFG, address="nowhere", progress=False)
