"""mechscope.dynamics: the measures proved a second way, the series' errors, and end to end on a tiny run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechscope.dynamics import CheckpointSeries, HeldOut, SeriesError, analyse, effective_rank, measure_series
from mechscope.dynamics.measures import DEFAULT_LLC, factored_singular_values, frequency_buckets, llc_component_tag
from mechscope.models.tiny import TinyConfig, TinyTransformer


def test_effective_rank_of_known_matrices():
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for r in (1, 3, 7):  # r equal singular values: exactly r
        m = q[:, :r] @ q[:, :r].T * 2.5
        assert effective_rank(torch.linalg.svdvals(m)) == pytest.approx(r, rel=1e-9)
    # singular values 3 and 1: exp of the entropy of (3/4, 1/4)
    want = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(torch.tensor([3.0, 1.0, 0.0])) == pytest.approx(want)
    assert effective_rank(torch.zeros(4)) == 0.0


def test_factored_singular_values_equal_those_of_the_product():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(20, 4, generator=g), torch.randn(4, 16, generator=g)
    got = factored_singular_values(a, b)
    want = torch.linalg.svdvals((a.double() @ b.double()))[:4]
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)


def test_frequency_buckets_split_occurrences_evenly():
    t = torch.tensor([0] * 8 + [1] * 4 + [2] * 2 + [3] * 2)  # 16 occurrences, token 0 is half of them
    b = frequency_buckets(t, 4)
    # rarest first: 2 and 3 (4 occurrences) then 1 (4) then 0 (8)
    assert b[t == 2].unique().tolist() == [0] and b[t == 3].unique().tolist() == [0]
    assert b[t == 1].unique().tolist() == [1] and b[t == 0].unique().tolist() == [2]


def _tiny(seed: int) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(TinyConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=10))


def _series_of(modules: list[TinyTransformer], steps: list[int]) -> CheckpointSeries:
    return CheckpointSeries(steps, [(lambda m=m: m.mechscope_adapter()) for m in modules],
                            [f"mem{s}" for s in steps], "in memory")


def test_loss_measures_equal_a_direct_computation():
    mods = [_tiny(s) for s in range(3)]
    ids = torch.randint(0, 10, (16, 12), generator=torch.Generator().manual_seed(2))
    held = HeldOut.next_token(ids)
    m = measure_series(_series_of(mods, [0, 10, 100]), {"heldout": held}, llc=False, progress=False)
    for i, mod in enumerate(mods):
        with torch.no_grad():
            logp = F.log_softmax(mod(ids).double(), -1)[:, :-1]  # (batch, pos - 1, vocab)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (batch, pos - 1)
        assert m.find("log10_loss")[0].values[i] == pytest.approx(math.log10(float(nll.mean())), rel=1e-9)
        for p in (0, 5, 10):
            got = m.find("log10_loss.position", "model", str(p))[0].values[i]
            assert got == pytest.approx(math.log10(float(nll[:, p].mean())), rel=1e-9)
    assert not m.find("log10_loss.position", "model", "11")  # the last position predicts nothing
    assert len(m.find("loss_pca")) >= 1 and m.info["loss_pca_tokens"] == 16 * 11
    # weights: the OV norm of a head is the Frobenius norm of W_V W_O
    w = mods[1].mechscope_adapter().weights()
    ov = (w.W_V[1, 0].double() @ w.W_O[1, 0].double()).norm()
    assert m.find("norm.OV", "L1H0")[0].values[1] == pytest.approx(float(ov), rel=1e-9)
    assert "llc" in m.unavailable and "fourier.effective_frequencies" in m.unavailable


def test_series_errors_name_the_file(tmp_path):
    from mechscope.zoo.files import save_tensors

    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    good = _tiny(0).state_dict()
    save_tensors(ck / "step_0000001.safetensors", good)
    save_tensors(ck / "step_0000002.safetensors", good | {"embed.weight": torch.zeros(11, 16)})
    (ck / "step_0000003.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SeriesError, match="step_0000003.safetensors is truncated or corrupt"):
        CheckpointSeries.from_safetensors([ck / "step_0000001.safetensors", ck / "step_0000003.safetensors"])
    with pytest.raises(SeriesError, match="step_0000009.safetensors does not exist"):
        CheckpointSeries.from_safetensors([ck / "step_0000001.safetensors", ck / "step_0000009.safetensors"])
    with pytest.raises(SeriesError, match="step_0000002.safetensors is of another architecture than .*step_0000001"
                                          ".*'embed.weight' has shape \\[11, 16\\] instead of \\[10, 16\\]"):
        CheckpointSeries.from_safetensors([ck / "step_0000001.safetensors", ck / "step_0000002.safetensors"])
    with pytest.raises(SeriesError, match="not in a zoo run's checkpoints/ directory"):
        CheckpointSeries.from_safetensors([ck / "step_0000001.safetensors"])


def test_hf_directories_series_and_architecture_mismatch(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    dirs = []
    for i, d in enumerate((16, 16, 32)):
        torch.manual_seed(i)
        cfg = GPT2Config(n_layer=2, n_head=2, n_embd=d, vocab_size=30, n_positions=24)
        path = tmp_path / f"checkpoint-{(i + 1) * 100}"
        GPT2LMHeadModel(cfg).save_pretrained(path)
        dirs.append(path)
    with pytest.raises(SeriesError, match="checkpoint-300 is of another architecture"):
        CheckpointSeries.from_hf_dirs(dirs)
    series = CheckpointSeries.from_paths([str(d) for d in dirs[:2]])
    assert series.steps == [100, 200]
    from safetensors.torch import save_file

    from mechscope.core.errors import LoadError
    from mechscope.dynamics.data import from_file

    ids = torch.randint(0, 30, (4, 24), generator=torch.Generator().manual_seed(0))
    save_file({"ids": ids}, str(tmp_path / "tokens.safetensors"))
    save_file({"tokens": ids}, str(tmp_path / "bad.safetensors"))
    held = from_file(tmp_path / "tokens.safetensors")
    assert torch.equal(held["heldout"].targets[:, :-1], ids[:, 1:]) and bool((held["heldout"].targets[:, -1] == -1).all())
    with pytest.raises(LoadError, match="bad.safetensors has no `ids` tensor"):
        from_file(tmp_path / "bad.safetensors")
    m = measure_series(series, held, llc=False, progress=False)
    assert {s.component for s in m.find("role.prefix_matching")} == {"L0H0", "L0H1", "L1H0", "L1H1"}
    assert len(m.find("norm.W_in")) == 2 and all(len(s.values) == 2 for s in m.series)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """induction-quick trained 16 steps into a private cache (checkpoints on the log schedule)."""
    from mechscope import zoo

    path = tmp_path_factory.mktemp("zoo") / "induction-quick"
    zoo.train("induction-quick", steps=16, path=path, progress=False)
    return path


def test_end_to_end_on_a_tiny_zoo_run(tiny_run):
    from mechscope.dynamics.data import from_zoo_run

    series = CheckpointSeries.from_zoo("induction-quick", tiny_run)
    assert series.steps[0] == 0 and series.steps[-1] == 16 and len(series) >= 10
    res = analyse(series, from_zoo_run(series.zoo_run), llc=False, progress=False)
    d = res.dynamics
    assert d.control_flagged == 0
    assert len(d.names) == len(res.measures.series) and d.threshold > 0
    assert res.measures.unavailable["llc"].startswith("not asked for")
    # every boundary's top components come from its member series; phases tile the checkpoints
    for b in d.boundaries:
        members = {d.components[m.series] for m in b.members}
        assert {c for c, _ in d.ranked_components(b.moves)} <= members
    assert d.phases[0].start == 0 and d.phases[-1].end == len(series) - 1
    assert all(p.start <= p.end for p in d.phases)


def test_cli_json_line_and_files(tiny_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mechscope.cli import app

    cache = tmp_path / "cache"
    (cache / "zoo").mkdir(parents=True)
    (cache / "zoo" / "induction-quick").symlink_to(tiny_run)
    monkeypatch.setenv("MECHSCOPE_CACHE", str(cache))
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "off")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["dynamics", "zoo:induction-quick", "--json", "--out", str(out), "--no-llc"])
    assert r.exit_code == 0, r.output
    line = json.loads(r.output.strip().splitlines()[-1])
    assert line["name"] == "dynamics" and line["checks"]["null_control"]["pass"]
    assert line["figures"]["unavailable"]["llc"].startswith("not asked for")
    full = json.loads((out / "dynamics.json").read_text())
    assert len(full["steps"]) == line["figures"]["checkpoints"] and full["checks"] == line["checks"]
    assert "<svg" in (out / "dynamics.html").read_text()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA"))])
def test_cli_runs_the_checkpoints_on_the_device_asked_for(tiny_run, tmp_path, monkeypatch, device):
    from typer.testing import CliRunner

    from mechscope.cli import app

    cache = tmp_path / "cache"
    (cache / "zoo").mkdir(parents=True)
    (cache / "zoo" / "induction-quick").symlink_to(tiny_run)
    monkeypatch.setenv("MECHSCOPE_CACHE", str(cache))
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "off")
    args = ["dynamics", "zoo:induction-quick", "--json", "--no-llc"]
    ref = json.loads(CliRunner().invoke(app, args).output.strip().splitlines()[-1])
    r = CliRunner().invoke(app, [*args, "--device", device])
    assert r.exit_code == 0, r.output
    line = json.loads(r.output.strip().splitlines()[-1])
    assert line["checks"]["null_control"]["pass"]
    assert line["figures"]["checkpoints"] == ref["figures"]["checkpoints"]
    assert line["figures"]["boundaries"] == ref["figures"]["boundaries"]


def test_llc_slot_calls_the_landscape_module_and_reports_its_absence(monkeypatch):
    import sys
    import types

    mods = [_tiny(s) for s in range(2)]
    ids = torch.randint(0, 10, (8, 12), generator=torch.Generator().manual_seed(3))
    held = {"heldout": HeldOut.next_token(ids)}
    calls = []

    def fake(model, data, *, loss, config, progress):  # the estimator's interface; returns the loss it was given
        calls.append((data, config))
        value = float(loss(model, data).detach())
        return types.SimpleNamespace(llc=value, init_loss=value, warnings=("chain 1 diverged",))

    def fake_parts(model, data, *, loss, config, per_head, init_loss, progress):
        return {"embed": types.SimpleNamespace(llc=2 * init_loss, warnings=()),
                "blocks.1.attn.0": types.SimpleNamespace(llc=3 * init_loss, warnings=("rising",))}

    ns = types.SimpleNamespace(estimate_llc=fake, estimate_llc_components=fake_parts, SGLDConfig=lambda **k: k)
    monkeypatch.setitem(sys.modules, "mechscope.landscape", ns)
    m = measure_series(_series_of(mods, [1, 2]), held, llc=True, progress=False)
    assert len(calls) == 2 and torch.equal(calls[0][0][0], ids) and torch.equal(calls[0][0][1], held["heldout"].targets)
    assert calls[0][1] == DEFAULT_LLC.model
    # the loss handed to the estimator is the held-out loss the loss measure reports
    whole = m.find("llc", "model")[0].values
    assert np.allclose(np.log10(whole), m.find("log10_loss")[0].values, rtol=1e-5)
    # per-component series, tagged with the dynamics' component names
    assert np.allclose(m.find("llc", "embed")[0].values, 2 * whole) and np.allclose(m.find("llc", "L1H0")[0].values, 3 * whole)
    assert m.info["llc_warnings"]["1"] == ["model: chain 1 diverged", "L1H0: rising"]
    assert m.info["llc_settings"] == DEFAULT_LLC.to_json() and {"llc", "llc.components"} <= set(m.seconds)

    def broken(model, data, *, loss, config, progress):
        raise RuntimeError("no chains")

    monkeypatch.setitem(sys.modules, "mechscope.landscape", types.SimpleNamespace(
        estimate_llc=broken, estimate_llc_components=fake_parts, SGLDConfig=lambda **k: k))
    m = measure_series(_series_of(mods, [1, 2]), held, llc=True, progress=False)
    assert not m.find("llc") and "RuntimeError: no chains" in m.unavailable["llc"]
    monkeypatch.setitem(sys.modules, "mechscope.landscape", None)  # an import of it now fails
    m = measure_series(_series_of(mods, [1, 2]), held, llc=True, progress=False)
    assert not m.find("llc") and m.unavailable["llc"].startswith("mechscope.landscape.estimate_llc is not available")


def test_llc_component_tags():
    assert [llc_component_tag(n) for n in ("embed", "blocks.0.attn", "blocks.1.attn.3", "blocks.0.mlp", "blocks.1.norms",
                                           "ln_final", "unembed")] == \
        ["embed", "L0.attn", "L1H3", "L0.mlp", "L1.norms", "ln_final", "unembed"]


def test_real_llc_series_per_component_on_a_tiny_run():
    """The real estimator, few draws: one llc series for the model and one per component, each equal to a direct
    `estimate_llc` of that component with the same settings."""
    from mechscope.dynamics.measures import LLCSettings, _llc_loss
    from mechscope.landscape import SGLDConfig, components, estimate_llc

    mods = [_tiny(s) for s in range(2)]
    ids = torch.randint(0, 10, (16, 12), generator=torch.Generator().manual_seed(4))
    held = HeldOut.next_token(ids)
    settings = LLCSettings(model={"chains": 2, "draws": 5, "batch_size": 4}, components={"chains": 2, "draws": 4})
    m = measure_series(_series_of(mods, [1, 2]), {"heldout": held}, llc=True, llc_settings=settings, progress=False)
    names = components(mods[0].mechscope_adapter())
    assert sorted(s.component for s in m.find("llc")) == sorted(["model"] + [llc_component_tag(n) for n in names])
    model = mods[1].mechscope_adapter()

    def direct():
        return estimate_llc(model, (held.ids, held.targets), loss=_llc_loss, params=names["blocks.1.mlp"],
                            config=SGLDConfig(chains=2, draws=4), progress=False).llc

    with model.fused():  # dynamics runs the chains with fused attention kernels
        want = direct()
    assert m.find("llc", "L1.mlp")[0].values[1] == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(direct(), rel=1e-4)  # the explicit attention: the same to float rounding


def test_llc_in_two_worker_processes_equals_one_process():
    """The LLC of every checkpoint estimated in 2 forked workers is bit for bit the in-process one (the chains'
    seeds do not depend on the worker), and a failure inside a worker is reported like one in-process."""
    from mechscope.dynamics.measures import LLCSettings, llc_workers_possible

    mods = [_tiny(s) for s in range(3)]
    ids = torch.randint(0, 10, (16, 12), generator=torch.Generator().manual_seed(5))
    held = {"heldout": HeldOut.next_token(ids)}
    settings = LLCSettings(model={"chains": 2, "draws": 6, "batch_size": 4}, components={"chains": 2, "draws": 3})
    series = _series_of(mods, [1, 2, 3])
    if llc_workers_possible(series) is not None:
        pytest.skip(llc_workers_possible(series))
    one = measure_series(series, held, llc=True, llc_settings=settings, progress=False, workers=1)
    two = measure_series(series, held, llc=True, llc_settings=settings, progress=False, workers=2)
    a, b = {s.name: s.values for s in one.find("llc")}, {s.name: s.values for s in two.find("llc")}
    assert len(a) == 1 + 6 and a.keys() == b.keys()  # the model and its 6 components (no layer norms)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert {s.name for s in one.series} == {s.name for s in two.series}
    assert one.info.get("llc_warnings") == two.info.get("llc_warnings")
    assert {"llc", "llc.components"} <= set(two.seconds)
    assert one.info["llc_workers"] == 1 and two.info["llc_workers"] == 2
    import types
    assert "workers run on the CPU" in llc_workers_possible(types.SimpleNamespace(device="cuda:0"))
    bad = LLCSettings(model={"chains": 2, "draws": 6, "batch_size": 0}, components=None)  # SGLDConfig refuses it
    m = measure_series(series, held, llc=True, llc_settings=bad, progress=False, workers=2)
    assert not m.find("llc") and "batch_size must be an integer >= 1" in m.unavailable["llc"]
    assert m.unavailable == measure_series(series, held, llc=True, llc_settings=bad, progress=False).unavailable


def _slow_llc_worker(i: int):  # a checkpoint whose LLC estimate outlasts the run that asked for it
    import time
    time.sleep(60)


def test_an_error_in_the_main_loop_stops_the_llc_workers(monkeypatch):
    """A run that fails while its workers estimate does not wait for them: they end with it."""
    import os
    import time

    import psutil

    import mechscope.dynamics.measures as measures

    mods = [_tiny(s) for s in range(3)]
    series = _series_of(mods, [1, 2, 3])
    if measures.llc_workers_possible(series) is not None:
        pytest.skip(measures.llc_workers_possible(series))
    parent = os.getpid()

    def broken(m=mods[1]):
        if os.getpid() == parent:
            raise RuntimeError("checkpoint 2 is unreadable")
        return m.mechscope_adapter()

    series.loaders[1] = broken
    monkeypatch.setattr(measures, "_llc_worker", _slow_llc_worker)
    held = {"heldout": HeldOut.next_token(torch.randint(0, 10, (16, 12), generator=torch.Generator().manual_seed(5)))}
    before = {p.pid for p in psutil.Process().children()}
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="checkpoint 2 is unreadable"):
        measure_series(series, held, llc=True, progress=False, workers=2)
    assert time.monotonic() - start < 30  # not the 60 s the running estimates would take
    assert not [p for p in psutil.Process().children() if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]


def test_from_paths_names_a_missing_checkpoint_and_an_unknown_zoo_run(tmp_path, monkeypatch):
    from mechscope.core.errors import LoadError

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    with pytest.raises(SeriesError, match="ckpt/missing.safetensors does not exist"):
        CheckpointSeries.from_paths([str(tmp_path / "ckpt" / "missing.safetensors")])
    with pytest.raises(SeriesError, match="zoo run 'induction' has no run directory"):
        CheckpointSeries.from_paths(["zoo:induction"])
    with pytest.raises(LoadError, match="no zoo recipe named 'nonesuch'"):
        CheckpointSeries.from_paths(["nonesuch"])
