"""Data-parallel dictionary training: two gloo processes (torchrun, one thread each) train the
dictionary one process trains on the same rows and global batches; a checkpointed run resumes to the
same dictionary; a killed rank stops the job with a message naming it and the checkpoint; a world
size that does not divide the shards is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

import mechscope as ms
import mechscope.dictionaries as dl
from mechscope.dictionaries.checkpoint import Checkpointing
from mechscope.dictionaries.ddp import merged_batches, rank_batches
from mechscope.dictionaries.exchange import GradBucket, SharedMemory, ShardedExchange
from mechscope.dictionaries.shards import ShardedAdam, Shards
from mechscope.dictionaries.train import Reducer, _adam
from mechscope.dictionaries.files import read_tensors

from conftest import VOCAB, build

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parent.parent
SITE = "blocks.0.hook_resid_post"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tokens = torch.randint(0, VOCAB, (64, 17), generator=torch.Generator().manual_seed(0))
    return dl.harvest(ms.wrap(build("gpt2")), tokens, tmp_path_factory.mktemp("ddp") / "store",
                      dl.HarvestConfig(sites=("resid_post.0",), seqs_per_shard=8, drop_first=1), progress=False)


def _torchrun(store, out: Path, n: int, *extra: str, tokens: int = 7680, d_sae: int = 128) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "mechscope.dictionaries.train", "--store", str(store.path), "--out", str(out), "--d-sae", str(d_sae),
           "-k", "8", "--tokens", str(tokens), "--batch", "256", "--buffer-rows", "512", "--threads", "1", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_process(store, world: int, tokens: int = 7680, d_sae: int = 128, device: str = "cpu", **kw):
    """One process on the global batches the ranks see together (rank slices concatenated in rank order)."""
    batches = ((b[0].to(device),) for b in merged_batches(store, [SITE], 256, world, buffer_rows=512))
    sae = dl.build("topk", d_in=64, d_sae=d_sae, k=8, seed=0, site=SITE, model=store.manifest["model"]).to(device)
    return dl.train(sae, batches, dl.TrainConfig(tokens=tokens, batch_size=256), progress=False, **kw)


def test_merged_batches_are_the_rank_slices_side_by_side(store):
    ranks = [iter(rank_batches(store, [SITE], 256, r, 2, buffer_rows=512)) for r in range(2)]
    merged = iter(merged_batches(store, [SITE], 256, 2, buffer_rows=512))
    for _ in range(20):  # past the first refill of each rank's shuffle buffer
        parts = [next(it)[0] for it in ranks]
        got = next(merged)[0]
        assert got.shape == (256, 64) and torch.equal(got, torch.cat(parts))
    assert not torch.equal(next(merged)[0], next(iter(rank_batches(store, [SITE], 256, 0, 1, buffer_rows=512)))[0])


@pytest.mark.slow
@pytest.mark.parametrize("exchange", ["shared memory", "all-reduce"])
def test_two_gloo_processes_train_the_one_process_dictionary(store, tmp_path, exchange):
    how = ["--checkpoint-every", "10", *(["--all-reduce"] if exchange == "all-reduce" else [])]
    p = _torchrun(store, tmp_path / "ddp", 2, *how)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "resuming" not in err
    got, _ = read_tensors(tmp_path / "ddp" / "sae_weights.safetensors")
    ref = _one_process(store, 2).dictionary
    # the command run as one process, replaying the two ranks' batches (--streams 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    one = subprocess.run([sys.executable, "-m", "mechscope.dictionaries.train", "--store", str(store.path), "--out",
                          str(tmp_path / "one"), "--d-sae", "128", "-k", "8", "--tokens", "7680", "--batch", "256",
                          "--buffer-rows", "512", "--threads", "1", "--streams", "2", "--checkpoint-every", "10"],
                         env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    cli, _ = read_tensors(tmp_path / "one" / "sae_weights.safetensors")
    # tolerance: the gradient mean over two halves rounds differently from the mean over the whole batch;
    # after 30 Adam steps the weights agree to 1e-5 of their largest entry (measured: about 1.5e-7)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        want = getattr(ref, name).detach()
        assert (got[name] - want).abs().max() <= 1e-5 * want.abs().max(), name
        assert torch.equal(cli[name], want), name  # one process both ways: the same sums, bit for bit
    report = json.loads((tmp_path / "ddp" / "train.json").read_text())
    assert report["world"] == 2 and report["tokens"] == 7680 and report["streams"] == 2
    assert report["gradient_exchange"] == exchange
    assert 0 < report["collective_seconds"] < report["seconds"]
    # the checkpoint of step 20 holds Adam's whole state, gathered from the two ranks' shards: the
    # one-process moments, to rounding (relative to each moment's largest value, as the weights)
    ck, meta = read_tensors(tmp_path / "ddp" / "checkpoint.safetensors")
    ref_ck, ref_meta = read_tensors(tmp_path / "one" / "checkpoint.safetensors")
    assert json.loads(meta["state"])["step"] == json.loads(ref_meta["state"])["step"] == 20
    moments = sorted(k for k in ref_ck if k.startswith("opt."))
    assert moments == sorted(k for k in ck if k.startswith("opt.")) and len(moments) == 12  # 4 parameters
    for k in moments:
        assert (ck[k] - ref_ck[k]).abs().max() <= 1e-4 * ref_ck[k].abs().max(), k
    # run again, it resumes from step 20 (each rank takes its shard of the moments): the same dictionary
    first = {k: v.clone() for k, v in got.items()}
    p = _torchrun(store, tmp_path / "ddp", 2, *how)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert f"resuming from step 20 in {tmp_path / 'ddp' / 'checkpoint.safetensors'}" in err, err
    again, _ = read_tensors(tmp_path / "ddp" / "sae_weights.safetensors")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(again[name], first[name]), name
    assert json.loads((tmp_path / "ddp" / "train.json").read_text())["curve"] == report["curve"]


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpointed_run_resumes_to_the_same_dictionary(store, tmp_path, device):
    whole = _one_process(store, 1, device=device).dictionary

    class Stop(Exception):
        pass

    def stopping(batches, after):
        for i, b in enumerate(batches):
            if i == after:
                raise Stop
            yield b

    ck = Checkpointing(tmp_path / "ck.safetensors", every=10)
    streams = iter(rank_batches(store, [SITE], 256, 0, 1, buffer_rows=512))
    sae = dl.build("topk", d_in=64, d_sae=128, k=8, seed=0, site=SITE, model=store.manifest["model"]).to(device)
    with pytest.raises(Stop):  # killed during step 15: the checkpoint holds step 10
        dl.train(sae, stopping(((b[0].to(device),) for b in streams), 15), dl.TrainConfig(tokens=7680, batch_size=256),
                 progress=False, checkpointing=ck)
    assert json.loads(read_tensors(ck.path)[1]["state"])["step"] == 10
    resumed = _one_process(store, 1, device=device, checkpointing=ck).dictionary
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
    other = dl.build("topk", d_in=64, d_sae=64, k=8, seed=0).to(device)
    with pytest.raises(dl.files.DictionaryFileError, match="checkpoint of another training"):
        dl.train(other, ((b[0].to(device),) for b in rank_batches(store, [SITE], 256, 0, 1, buffer_rows=512)),
                 dl.TrainConfig(tokens=7680, batch_size=256), progress=False, checkpointing=ck)


def _topk_grads(sae, x):
    sae.zero_grad(set_to_none=True)
    sae.loss(x, x).total.backward()
    return {n: p.grad for n, p in sae.named_parameters()}


def test_the_gradient_bucket_holds_the_scaled_gradients_in_the_parameters_layout():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    sae = dl.build("topk", d_in=8, d_sae=32, k=4, seed=0)
    assert sae.W_enc.stride() == (1, 8)  # stored transposed: the bucket keeps that layout
    want = {n: g.clone() for n, g in _topk_grads(sae, x).items()}
    params = list(sae.parameters())
    flat = torch.full((sum(p.numel() for p in params),), float("nan"))
    bucket = GradBucket(params, flat, 0.25)
    base = flat.untyped_storage().data_ptr()
    for n, p in sae.named_parameters():  # adopted by autograd, not cloned: the gradient is the bucket
        p.grad = None
    got = _topk_grads(sae, x)
    for n, p in sae.named_parameters():
        assert base <= got[n].data_ptr() < base + flat.numel() * 4, n
        assert got[n].stride() == p.stride(), n
        assert torch.equal(got[n], want[n] * 0.25), n
    bucket.settle()
    assert not torch.isnan(flat).any()  # every value written, in place
    sae.zero_grad(set_to_none=True)
    sae.W_dec.sum().backward()  # reaches W_dec only: the others must read zero, not last step's values
    bucket.settle()
    assert torch.equal(sae.W_dec.grad, torch.full_like(sae.W_dec, 0.25))
    for p in (sae.W_enc, sae.b_enc, sae.b_dec):
        assert torch.equal(p.grad, torch.zeros_like(p)) and base <= p.grad.data_ptr() < base + flat.numel() * 4
    bucket.remove()
    got = _topk_grads(sae, x)
    assert torch.equal(got["W_enc"], want["W_enc"]) and not base <= got["W_enc"].data_ptr() < base + flat.numel() * 4


class Threads:
    """`world` ranks as threads of this process, with the collectives the exchange uses (sums in rank order)."""

    def __init__(self, world: int):
        self.world, self.wait = world, threading.Barrier(world, timeout=60).wait
        self.names: dict[int, str] = {}
        self.box: dict[int, torch.Tensor] = {}

    def share(self, name: str) -> str:  # rank 0's name to every rank, as the process group's broadcast does
        if name:
            self.names[0] = name
        self.wait()
        return self.names[0]

    def _all(self, rank: int, t: torch.Tensor) -> list[torch.Tensor]:
        self.box[rank] = t.clone()
        self.wait()
        every = [self.box[r] for r in range(self.world)]
        self.wait()  # every rank has read the box before it is written again
        return every

    def all_reduce(self, rank: int, t: torch.Tensor) -> None:
        every = self._all(rank, t)
        total = every[0].clone()
        for x in every[1:]:
            total += x
        t.copy_(total)

    def gather(self, rank: int, t: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._all(rank, t))

    def run(self, fn):
        """fn(rank) in every thread; their results by rank (the first failure is raised)."""
        got, errors = {}, []

        def rank(r: int) -> None:
            try:
                got[r] = fn(r)
            except Exception as e:  # pragma: no cover - raised below
                errors.append(e)
                threading.Barrier.abort(self.wait.__self__)

        threads = [threading.Thread(target=rank, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return got


def test_shared_memory_gives_each_rank_the_sum_of_its_pieces():
    world, numel = 3, 1001
    ranges = {r: [(100 * r, 100 * (r + 1)), (300 + 233 * r, 300 + 233 * (r + 1))] for r in range(world)}
    values = torch.randn(world, numel, generator=torch.Generator().manual_seed(2)) * 1e3
    group = Threads(world)

    def rank(r: int) -> dict:
        s = SharedMemory(numel, torch.float32, r, world, group.wait, group.share)
        out = {}
        for step in range(2):  # the slots are reused: the second sum must not see the first's values
            s.slot().copy_(values[r] * (step + 1))
            s.reduce_(ranges[r])
            out[step] = s.slot().clone()
            for a, b in ranges[r]:  # the shared parameters: each rank writes its ranges, all read all
                s.params[a:b] = r + 10 * step
            s.barrier()
            out["params", step] = s.params.clone()
            s.barrier()
        return out

    got = group.run(rank)
    for r in range(world):
        own = torch.zeros(numel, dtype=torch.bool)
        for a, b in ranges[r]:
            own[a:b] = True
        for step in range(2):
            v = values * (step + 1)
            others = [q for q in range(world) if q != r]  # its own values, then its peers' in rank order
            assert torch.equal(got[r][step][own], ((v[r] + v[others[0]]) + v[others[1]])[own]), r
            assert torch.equal(got[r][step][~own], v[r][~own]), r  # the rest of its slot is its own
            for q in range(world):
                for a, b in ranges[q]:
                    assert bool((got[r]["params", step][a:b] == q + 10 * step).all()), (r, q)
    assert not list(Path("/dev/shm").glob(f"mechscope-grads-{os.getpid()}-*"))  # the file's name is gone


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared memory", "all-reduce"])
def test_ranks_that_each_update_their_shard_take_the_whole_adam_step(arch, shared):
    """Two ranks (threads) each update their share of the parameters, and exchange them: every rank holds the
    dictionary, and the gathered state the Adam moments, of one process stepping on the same mean gradients
    (a sum of two terms is the same in either order, so the gradients agree bit for bit; Adam's fused kernel
    rounds a value in a vector lane and in its scalar tail differently, and a piece's tail is not the whole
    tensor's: the steps agree to rounding, and every rank holds the same dictionary bit for bit)."""
    world, steps = 2, 4
    kw = dict(d_in=6, d_sae=9, **({"k": 3} if arch == "topk" else {}))  # 9 latents: rows 4 and 5
    xs = torch.randn(steps, world, 32, 6, generator=torch.Generator().manual_seed(3))

    def fresh():
        sae = dl.build(arch, seed=0, **kw)
        sae.init_decoder_bias_(xs[0].reshape(-1, 6).mean(0))
        sae.init_from_batch_(xs[0].reshape(-1, 6), xs[0].reshape(-1, 6))
        sae.constrain_()
        return sae.train(), _adam(sae, 1e-2, (0.9, 0.999))

    ref, ref_opt = fresh()
    params = [p for g in ref_opt.param_groups for p in g["params"]]
    for step in range(steps):  # the exchange's mean: each rank's gradient halved, summed
        total = [torch.zeros_like(p) for p in params]
        for r in range(world):
            grads = torch.autograd.grad(ref.loss(xs[step, r], xs[step, r]).total, params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g * (1.0 / world)
        for p, t in zip(params, total):
            p.grad = t
        Reducer().step(ref, ref_opt)
    group = Threads(world)

    def rank(r: int):
        sae, full = fresh()
        shards = Shards([p for g in full.param_groups for p in g["params"]], sae.W_dec, world)
        mine = [p for g in full.param_groups for p in g["params"]]
        ex = ShardedExchange(mine, shards, r, world, shared=shared, all_reduce=lambda t: group.all_reduce(r, t),
                             gather=lambda t: group.gather(r, t), barrier=group.wait, share=group.share)
        opt = ShardedAdam(full, shards, r, lambda t: group.gather(r, t))
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            sae.loss(xs[step, r], xs[step, r]).total.backward()
            ex.step(sae, opt)
        state = opt.state_dict()["state"]
        ex.close()
        return {k: v.clone() for k, v in sae.state_dict().items()}, state, shards.latents[r]

    got = group.run(rank)
    assert [got[r][2] for r in range(world)] == [slice(0, 4), slice(4, 9)]
    want = ref_opt.state_dict()["state"]

    def close(a, b):  # rounding of a few steps: within 1e-6 of the largest value (a misplaced piece is off by O(1))
        same_layout = a.shape == b.shape and a.stride() == b.stride()
        return same_layout and float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())

    for r in range(world):
        weights, state, _ = got[r]
        for name, v in ref.state_dict().items():
            assert close(weights[name], v), (r, name)
            assert torch.equal(weights[name], got[0][0][name]), (r, name)
        assert state.keys() == want.keys()
        for i in want:
            assert torch.equal(state[i]["step"], want[i]["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert close(state[i][key], want[i][key]), (r, i, key)
                assert torch.equal(state[i][key], got[0][1][i][key]), (r, i, key)


@pytest.mark.parametrize("fails", ["share", "barrier"])
def test_rank_0_removes_the_shared_memory_file_when_a_peer_fails_during_attach(fails):
    made = []

    def dead_peer() -> None:  # a peer died or timed out: the process group raises
        raise RuntimeError("peer gone")

    def share(name: str) -> str:
        made.append(name)
        assert Path(name).exists()  # rank 0 created the file before the broadcast
        if fails == "share":
            dead_peer()
        return name

    barrier = dead_peer if fails == "barrier" else (lambda: None)
    with pytest.raises(RuntimeError, match="peer gone"):
        SharedMemory(1001, torch.float32, 0, 2, barrier, share)
    assert made and not Path(made[0]).exists()
    assert not list(Path("/dev/shm").glob(f"mechscope-grads-{os.getpid()}-*"))


def test_a_world_size_that_does_not_divide_the_shards_is_refused(store):
    with pytest.raises(ValueError, match=r"8 training shards, which 3 processes cannot share equally.*\[1, 2, 4, 8\]"):
        rank_batches(store, [SITE], 256, 0, 3)
    with pytest.raises(ValueError, match="cannot be split equally over 2 processes"):
        rank_batches(store, [SITE], 255, 0, 2)


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_with_a_clear_message(store, tmp_path):
    out = tmp_path / "ddp"
    p = _torchrun(store, out, 2, "--checkpoint-every", "5", tokens=256 * 4000, d_sae=512)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.safetensors").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1]
    ranks = {c.environ().get("RANK"): c for c in psutil.Process(p.pid).children(recursive=True)
             if "mechscope.dictionaries.train" in " ".join(c.cmdline())}
    ranks["1"].send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "rank 0 of 2 stopped" in err and "run the same command again to resume" in err, err
    tensors, meta = read_tensors(out / "checkpoint.safetensors")  # whole: its digest checks out
    assert json.loads(meta["state"])["step"] % 5 == 0
    assert not (out / "sae_weights.safetensors").exists()
