"""Brief fine-tunes of a Hugging Face causal LM: the result loads, records what it did, and a run killed
part-way resumes to the same weights as one that was not."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_diff_cli import save_gpt2

import mechscope as ms
from mechscope.diff import hf_finetune as hft
from mechscope.core.paths import cache_dir
from mechscope.diff.hf_finetune import HFTune, train_hf_finetune, tune_dir


def _tune(base, **kw):
    return HFTune(model=str(base), data="shakespeare", steps=12, batch=4, seq_len=16, lr=1e-2, warmup=2, **kw)


def _cache(tmp_path, name, monkeypatch):
    data = cache_dir() / "data"  # the zoo's prepared texts (make data), shared with the fresh cache
    (tmp_path / name).mkdir()
    (tmp_path / name / "data").symlink_to(data)
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / name))


def test_a_fine_tune_loads_records_its_losses_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    base = save_gpt2(tmp_path / "a")
    _cache(tmp_path, "cache1", monkeypatch)
    t = _tune(base)
    out = train_hf_finetune(t, progress=False, checkpoint_every=4, eval_windows=4)
    assert out == tune_dir(t) and not any(p.name.startswith(".") for p in out.parent.iterdir())
    rec = json.loads((out / "finetune.json").read_text())
    assert len(rec["train_losses"]) == 12 and rec["heldout_windows"] == 4
    assert rec["heldout_loss_b"] < rec["heldout_loss_a"]  # it learned the domain's text
    b = ms.load(out)
    a = ms.load(base)
    assert b.tokenizer is not None
    moved = [n for n, p in b.module.named_parameters() if not torch.equal(p, dict(a.module.named_parameters())[n])]
    assert moved
    assert train_hf_finetune(t, progress=False) == out  # cached: nothing trained again

    # killed after the checkpoint of step 8, then resumed
    _cache(tmp_path, "cache2", monkeypatch)
    real = hft.windows

    def dies_at_10(stream, tune, step):
        if step == 10:
            raise KeyboardInterrupt
        return real(stream, tune, step)

    monkeypatch.setattr(hft, "windows", dies_at_10)
    with pytest.raises(KeyboardInterrupt):
        train_hf_finetune(t, progress=False, checkpoint_every=4, eval_windows=4)
    assert not tune_dir(t).exists()  # nothing half-written where the result goes
    from safetensors import safe_open

    with safe_open(str(tune_dir(t).parent / f".{t.name}.partial" / "state.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "8"
    monkeypatch.setattr(hft, "windows", real)
    again = train_hf_finetune(t, progress=False, checkpoint_every=4, eval_windows=4)
    w1, w2 = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert json.loads((again / "finetune.json").read_text())["train_losses"] == rec["train_losses"]


def test_bad_recipes_are_refused():
    with pytest.raises(ValueError, match="not one of"):
        HFTune(data="poems")
    with pytest.raises(ValueError, match="positive"):
        HFTune(steps=0)
    assert HFTune(steps=10, warmup=2, lr=1.0).lr_at(0) == 0.5 and HFTune(steps=10, warmup=2, lr=1.0).lr_at(2) == 1.0


@pytest.mark.slow
def test_the_real_model_bench_runs_its_pairs_and_states_its_checks(tmp_path, monkeypatch):
    from mechscope.diff.bench import run_hf_bench

    base = save_gpt2(tmp_path / "a")
    _cache(tmp_path, "cache", monkeypatch)
    res = run_hf_bench(str(base), steps=12, windows=8, progress=False, batch=4, tune_seq_len=16, lr=1e-2, seq_len=16)
    f = res["figures"]
    assert set(res["checks"]) == {"domain_in_top3", "control_quiet"}
    assert res["pass"] == all(c["pass"] for c in res["checks"].values())
    assert res["checks"]["control_quiet"]["got"] == f["above_threshold"]["control-heldout"]
    assert set(f["train_s"]) == {"python-docs", "control", "control-heldout"}
    for name in ("python-docs", "control"):  # each fine-tune learned its own text
        assert f["heldout_loss"][name]["heldout_loss_b"] < f["heldout_loss"][name]["heldout_loss_a"]
    assert all(0 <= s <= 1 for s in f["domain_top3_python_share"]) and len(f["domain_top3_python_share"]) <= 3
    assert f["kl_per_token"]["python-docs"] > 0 and len(res["top_findings"]["python-docs"]) > 0
