"""The zoo trainer: quick recipes train and load, a SIGKILLed run resumes bit-identically, damaged
files fail with an error that names them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mechscope as ms
from mechscope import zoo
from mechscope.models.tiny import TinyModel
from mechscope.zoo.files import CheckpointError, load_tensors


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))


# --- quick recipes train and load through the adapter ------------------------------------------------

@pytest.mark.parametrize("name, steps, sites", [
    ("modadd-quick", 12, ["blocks.0.mlp.hook_post", "blocks.0.attn.hook_pattern", "attn.result.0", "logits"]),
    ("induction-quick", 12, ["blocks.1.attn.hook_pattern", "attn.z.0", "resid_post.1"]),
    ("induction-1l-quick", 6, ["blocks.0.attn.hook_pattern"]),
])
def test_transformer_recipes_train_and_load(name, steps, sites):
    run = zoo.train(name, steps=steps, progress=False)
    assert run.done and run.checkpoint_steps()[0] == 0 and run.checkpoint_steps()[-1] == steps
    rows = run.metrics()
    assert [r["step"] for r in rows if "train_loss" in r][-1] == steps
    model = zoo.load_zoo(name)
    assert isinstance(model, TinyModel) and model.name == f"zoo:{name}"
    ids = torch.zeros(2, 3, dtype=torch.long)
    res = ms.run(model, ids, capture=sites)
    assert set(res.cache) == {model.check(s) for s in sites}
    # the final weights are the last checkpoint's, and checkpoint 0 differs from them
    final, first = run.weights(), run.weights(0)
    assert all(torch.equal(final[k], run.weights(steps)[k]) for k in final)
    assert any(not torch.equal(final[k], first[k]) for k in final)
    early = zoo.load_zoo(name, step=0)
    assert not torch.equal(ms.run(early, ids).logits, res.logits)


def test_the_full_modadd_recipe_builds_the_papers_model():
    """Full recipe: MLP biases alone and the paper code's init; the short variants keep the zoo default."""
    full, short = (zoo.spec(n).recipe.build(zoo.spec(n).hp) for n in ("modadd", "modadd-frac05"))
    assert sorted(n for n, _ in full.named_parameters() if n.endswith("bias")) == [
        "blocks.0.mlp.W_in.bias", "blocks.0.mlp.W_out.bias"]
    assert abs(full.unembed.weight.std().item() - 114 ** -0.5) < 0.005
    assert abs(full.blocks[0].mlp.W_out.weight.std().item() - 128 ** -0.5) < 0.005
    assert short.unembed.bias is not None and short.blocks[0].attn.W_Q.bias is not None


def test_the_quick_grokking_run_is_the_demo_run_trained_longer(tmp_path):
    """modadd-frac05-long (replicate grokking --quick) differs from modadd-frac05 (the demo) in its
    length alone: with a flat learning rate after warm-up its updates are the same ones, so its
    checkpoint after N updates is the shorter run's after N (here N = 3, a checkpoint of both)."""
    demo, long = zoo.spec("modadd-frac05").hp, zoo.spec("modadd-frac05-long").hp
    assert {k: v for k, v in demo.items() if k != "steps"} == {k: v for k, v in long.items() if k != "steps"}
    assert long["steps"] == 2 * demo["steps"]
    a = zoo.train("modadd-frac05", seed=3, steps=3, path=tmp_path / "a", progress=False)
    b = zoo.train("modadd-frac05-long", seed=3, steps=6, path=tmp_path / "b", progress=False)
    wa, wb = a.weights(), b.weights(3)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wb[k], b.weights()[k]) for k in wb)

def test_mechscope_load_reads_zoo_names():
    # needs the "zoo:" prefix in mechscope.models.load.load (see the zoo's load_zoo)
    zoo.train("induction-1l-quick", steps=2, progress=False)
    model = ms.load("zoo:induction-1l-quick")
    assert isinstance(model, TinyModel)
    assert ms.run(model, torch.zeros(1, 4, dtype=torch.long), capture=["attn.pattern.0"]).cache[
        "attn.pattern.0"].shape == (1, 4, 4, 4)


def test_tms_trains_and_its_groups_are_sites():
    run = zoo.train("tms-quick", steps=5, progress=False)
    model = zoo.load_zoo("tms-quick")
    pent = model.module.groups["pentagon"]
    x = torch.rand(pent.b.shape[0], 4, 5)  # (inst, batch, features)
    res = ms.run(model, {"pentagon": x}, capture=["groups.pentagon.hidden"])
    assert res.cache["groups.pentagon.hidden"].shape == (pent.b.shape[0], 4, 2)
    assert {"loss_dense", "loss_pentagon", "loss_sweep"} <= set(run.metrics()[-1])


def test_names_and_errors():
    assert "modadd" in zoo.names() and "induction-1l-quick" in zoo.names()
    assert zoo.spec("induction-1l-quick").recipe.name == "induction-1l"
    assert zoo.spec("tms-seed3").name == "tms-seed3" and zoo.spec("tms", seed=3).seed == 3
    with pytest.raises(ms.LoadError, match="no zoo recipe"):
        zoo.spec("modad")
    with pytest.raises(ms.LoadError, match="not trained yet.*mechscope zoo train tms-quick"):
        zoo.load_zoo("tms-quick")  # not shipped in the package either


def test_checkpoint_schedule_is_log_spaced_with_a_linear_floor():
    s = zoo.checkpoint_schedule(10000)
    assert s[0] == 0 and s[-1] == 10000 and s == sorted(set(s))
    assert {1, 2, 3, 4, 5} <= set(s)  # dense at the start
    gaps = [b - a for a, b in zip(s, s[1:])]
    assert max(gaps) <= 10000 // 50  # never sparser than the linear floor


# --- kill and resume ---------------------------------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from pathlib import Path
    from mechscope import zoo
    zoo.train(sys.argv[1], steps=int(sys.argv[2]), path=Path(sys.argv[3]), progress=False, state_every=3)
""")


def _train_subprocess(name: str, steps: int, path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, name, str(steps), str(path)], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("name, steps", [
    pytest.param("modadd-quick", 20, marks=pytest.mark.slow),  # full-batch: optimizer state
    ("induction-quick", 40),  # fresh random batches every step: generator state
])
def test_sigkill_then_resume_is_bit_identical(tmp_path, name, steps):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    p = _train_subprocess(name, steps, whole)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()

    p = _train_subprocess(name, steps, killed)
    state = killed / "state.safetensors"
    deadline = time.monotonic() + 600
    while not state.is_file() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # let it get a few updates past the state
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "done.json").exists(), "the run finished before it could be killed"
    assert int(load_tensors(state)[1]["step"]) < steps

    p = _train_subprocess(name, steps, killed)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()

    a, b = load_tensors(whole / "model.safetensors")[0], load_tensors(killed / "model.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "metrics.jsonl").read_text() == (killed / "metrics.jsonl").read_text()
    ckpts = sorted(q.name for q in (whole / "checkpoints").iterdir())
    assert ckpts == sorted(q.name for q in (killed / "checkpoints").iterdir())
    for c in ckpts:  # same tensors and metadata (safetensors may order the metadata differently)
        (ta, ma), (tb, mb) = load_tensors(whole / "checkpoints" / c), load_tensors(killed / "checkpoints" / c)
        assert ma == mb and all(torch.equal(ta[k], tb[k]) for k in ta), c
    assert not state.exists()


def _crash_tms_quick(path: Path, monkeypatch) -> None:
    """Train tms-quick (9 updates) into `path`, dying at update 7 with the resume state written at 4."""
    recipe = zoo.RECIPES["tms"]
    calls = {"n": 0}
    real_loss = recipe.loss

    def dying_loss(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("simulated crash")
        return real_loss(*args)

    monkeypatch.setattr(recipe, "loss", dying_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        zoo.train("tms-quick", steps=9, path=path, progress=False, state_every=4)
    monkeypatch.setattr(recipe, "loss", real_loss)


def test_a_crashed_run_resumes_in_process(tmp_path, monkeypatch):
    """The same property without subprocesses: a run that dies at update 6 resumes from its state
    at update 4, replays 5 and 6 once, and ends equal to an uninterrupted run."""
    full = zoo.train("tms-quick", steps=9, path=tmp_path / "a", progress=False)
    _crash_tms_quick(tmp_path / "b", monkeypatch)
    crashed = zoo.Run(tmp_path / "b")
    assert max(r["step"] for r in crashed.metrics()) == 6 and not crashed.done
    resumed = zoo.train("tms-quick", steps=9, path=tmp_path / "b", progress=False)
    a, b = full.weights(), resumed.weights()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.metrics() == resumed.metrics()
    assert [r["step"] for r in resumed.metrics()] == sorted({r["step"] for r in resumed.metrics()})


def test_a_resumed_run_removes_writes_a_kill_interrupted(tmp_path, monkeypatch):
    """A kill during a checkpoint's atomic write leaves its temporary file behind; resuming deletes it,
    and the finished run has the same files as an uninterrupted one."""
    full = zoo.train("tms-quick", steps=9, path=tmp_path / "a", progress=False)
    _crash_tms_quick(tmp_path / "b", monkeypatch)
    # what a SIGKILL in the middle of two writes leaves: the writer's temporary files (pid 99999)
    left = [tmp_path / "b" / "checkpoints" / ".step_0000007.safetensors.tmp-99999",
            tmp_path / "b" / ".state.safetensors.tmp-99999"]
    for p in left:
        p.write_bytes(b"partial")
    resumed = zoo.train("tms-quick", steps=9, path=tmp_path / "b", progress=False)
    assert not any(p.exists() for p in left)
    names = lambda run: sorted(q.relative_to(run.path).as_posix() for q in run.path.rglob("*"))  # noqa: E731
    assert names(resumed) == names(full)


# --- damaged files -----------------------------------------------------------------------------------

def test_truncated_or_corrupt_files_name_the_file(tmp_path):
    run = zoo.train("modadd-quick", steps=3, progress=False)
    path = run.model_path
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match=str(path)):
        zoo.load_zoo("modadd-quick")

    flipped = bytearray(good)
    flipped[-10] ^= 0xFF  # one byte of tensor data
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=f"{path}.*corrupt"):
        zoo.load_zoo("modadd-quick")

    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=str(path)):
        zoo.load_zoo("modadd-quick")

    ck = run.checkpoint_path(1)
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(ck)):
        zoo.load_zoo("modadd-quick", step=1)


def test_a_damaged_resume_state_is_reported(tmp_path):
    path = tmp_path / "run"
    zoo.train("modadd-quick", steps=4, path=path, progress=False, state_every=2)
    (path / "done.json").unlink()
    zoo.files.save_tensors(path / "state.safetensors", {"x": torch.zeros(3)}, {"step": "2"})
    state = path / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=str(state)):
        zoo.train("modadd-quick", steps=4, path=path, progress=False)


def test_a_run_directory_with_other_settings_is_refused(tmp_path):
    zoo.train("modadd-quick", steps=2, path=tmp_path / "r", progress=False)
    (tmp_path / "r" / "done.json").unlink()
    with pytest.raises(CheckpointError, match="different run"):
        zoo.train("modadd-quick", steps=3, path=tmp_path / "r", progress=False)


def test_a_finished_run_with_other_settings_is_refused(tmp_path):
    """A cached run trained before its recipe changed is not handed back as if it were the new one."""
    zoo.train("modadd-quick", steps=2, path=tmp_path / "r", progress=False)
    assert zoo.train("modadd-quick", steps=2, path=tmp_path / "r", progress=False).done
    with pytest.raises(CheckpointError, match="different run"):
        zoo.train("modadd-quick", steps=3, path=tmp_path / "r", progress=False)
