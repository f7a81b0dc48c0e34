"""Harvesting on Ray Data: the store equals the one-process harvest's, a partly written store is
finished without rewriting or duplicating a shard, and bad input (a locked store, an unreachable
cluster) fails clearly. One local Ray instance (2 CPUs) serves the module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def tiny_gpt2(device=None):
    return ms.wrap(build("gpt2") if device is None else build("gpt2").to(device))


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
@pytest.mark.parametrize("device", DEVICES)
def test_ray_store_equals_the_one_process_store(local_ray, tmp_path, device):
    tokens = _tokens()
    one = dl.harvest(tiny_gpt2(device), tokens, tmp_path / "one", CFG, progress=False)
    timing: dict = {}
    two = ray_harvest(tiny_gpt2, tokens, tmp_path / "ray", CFG, workers=2, device=device, progress=False,
                      timing=timing)
    assert len(two.shards) == 5 and two.n_rows == 23 * 9
    _same_store(one.path, two.path)
    two.verify()
    # where the time went: every row counted once, by the workers that wrote them
    assert timing["rows"] == 23 * 9 and timing["workers"] in (1, 2) and timing["pool_rows_per_second"] > 0
    assert 0 < timing["first_shard_seconds"] <= timing["seconds"] and timing["worker_cpu_seconds"] > 0
    again = ray_harvest(tiny_gpt2, tokens, tmp_path / "given", CFG, workers=2, device=device, progress=False,
                        model=tiny_gpt2(device))  # the driver plans with the copy it is given
    _same_store(one.path, again.path)


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


_KILLED_JOB = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_distributed_harvest import CFG, tiny_gpt2, _tokens
from mechscope.dictionaries.ray_harvest import ray_harvest
ray_harvest(tiny_gpt2, _tokens(600, seed=2), sys.argv[1], CFG, workers=2, progress=False)
"""


def _ray_job(out: Path) -> subprocess.Popen:
    here = str(Path(__file__).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([here, str(Path(here).parent), os.environ.get("PYTHONPATH", "")])}
    # its own session: the kill reaches the driver and the Ray processes it started
    return subprocess.Popen([sys.executable, "-c", _KILLED_JOB, str(out), here], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_ray_job_resumes_with_no_shard_missing_or_duplicated():
    with tempfile.TemporaryDirectory(prefix="mechscope-ray-kill-") as d:
        out = Path(d) / "killed"
        p = _ray_job(out)
        deadline = time.monotonic() + 600
        listed = 0
        while p.poll() is None and time.monotonic() < deadline and listed < 5:
            try:
                listed = len(json.loads((out / "manifest.json").read_text())["shards"])
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                listed = 0
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        manifest = json.loads((out / "manifest.json").read_text())
        assert not manifest["complete"], "the job finished before it could be killed"
        assert 5 <= len(manifest["shards"]) < 120
        p = _ray_job(out)
        assert p.wait(timeout=600) == 0, p.stderr.read()
        whole = dl.harvest(tiny_gpt2(), _tokens(600, seed=2), Path(d) / "whole", CFG, progress=False).path
        _same_store(whole, out)
        assert sorted(q.name for q in out.iterdir()) == sorted(q.name for q in whole.iterdir())


def test_the_harvest_command_refuses_an_unreachable_cluster_before_loading_the_model(tmp_path):
    from typer.testing import CliRunner

    from mechscope.cli import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["dict", "harvest", "no-such-model", "-s", "resid_post.0", "--out", str(tmp_path / "s")]
    res = CliRunner().invoke(app, [*args, "--ray", "--address", f"127.0.0.1:{port}"])
    assert res.exit_code == 2 and "no Ray cluster answers" in res.output, res.output
    res = CliRunner().invoke(app, [*args, "--address", f"127.0.0.1:{port}"])
    assert res.exit_code == 2 and "give --ray too" in res.output, res.output


def test_the_pool_rate_is_all_rows_over_the_time_any_worker_was_working():
    from mechscope.dictionaries.ray_harvest import _pool_rate

    # a: 300 rows from t=10 to t=13; b: 200 rows from t=11 to t=15, idle from 12 to 14: 500 rows in 5 s
    spans = {"a": [(10.0, 11.0, 100), (11.0, 13.0, 200)], "b": [(11.0, 12.0, 100), (14.0, 15.0, 100)]}
    assert _pool_rate(spans) == pytest.approx(100.0)
    # workers one after the other are no faster than one worker (summing per-worker rates would say 2x)
    assert _pool_rate({"a": [(0.0, 10.0, 1000)], "b": [(10.0, 20.0, 1000)]}) == pytest.approx(100.0)
    assert _pool_rate({}) == 0.0
