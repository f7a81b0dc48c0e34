"""`--device` on every command that runs a model: a bad device is refused before any work with a clear error,
`--device cpu` runs, and the model (zoo runs included) and its inputs end up on the chosen device."""

import json

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli import app
from mechscope.core.errors import LoadError
from mechscope.core.run import model_device, on_model_device
from mechscope.models.load import check_device

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]

# every command that runs a model, with the cheapest arguments that reach the model's loading
COMMANDS = {
    "sites": ["sites", "zoo:induction-quick"],
    "top": ["top", "zoo:induction-quick", "1 2 3"],
    "capture": ["capture", "zoo:induction-quick", "1 2", "--site", "blocks.0.hook_resid_pre"],
    "ioi": ["ioi", "--prompts", "2", "--steps", "1"],
    "ioi-console": ["ioi-console"],
    "heads": ["heads", "zoo:induction-quick"],
    "circuits": ["circuits", "--steps", "1", "--prompts", "2"],
    "demo": ["demo", "--quick", "--no-serve"],
    "dynamics": ["dynamics", "zoo:induction-quick", "--no-llc"],
    "diff": ["diff", "zoo:induction-quick", "zoo:induction-quick"],
    "diff-bench": ["diff-bench", "--quick"],
    "explain-all": ["explain-all", "modadd-quick"],
    "audit": ["audit", "zoo:induction-quick"],
    "dict transcoders": ["dict", "transcoders", "zoo:induction-quick", "--out", "tc"],
    "graph": ["graph", "zoo:induction-quick", "1 2"],
    "features explain": ["features", "explain", "zoo:induction-quick", "--dictionary", "nowhere"],
    "zoo train": ["zoo", "train", "modadd-quick"],
    "replicate": ["replicate", "tms", "--quick"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_model_command_has_the_device_option(command):
    r = CliRunner().invoke(app, [*command.split(), "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "--device" in r.output


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"features explain"}))
def test_a_nonsense_device_is_refused_with_a_clear_error(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that got past the check would write here, not into the checkout
    r = CliRunner().invoke(app, [*COMMANDS[command], "--device", "nonsense"])
    assert isinstance(r.exception, LoadError), (r.exception, r.output)
    assert "unknown device 'nonsense'" in str(r.exception) and "cpu, cuda" in str(r.exception)


def test_check_device_names_missing_hardware():
    assert check_device(None) is None and check_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LoadError, match="no CUDA GPU"):
            check_device("cuda:0")


def test_a_zoo_model_is_loaded_onto_the_device_asked_for():
    # the meta device exists on every machine: it proves the zoo loader's module is moved, not left on the CPU
    m = ms.load("zoo:induction-quick", device="meta")
    assert {p.device.type for p in m.module.parameters()} == {"meta"}
    assert model_device(m) == torch.device("meta")


def test_inputs_made_on_the_cpu_are_moved_to_the_model_device():
    m = ms.load("zoo:induction-quick", device="meta")
    ids = torch.tensor([[1, 2, 3]])
    prepared = on_model_device(m, m.prepare(ids))
    assert prepared.input_ids.device.type == "meta" and all(a.device.type == "meta" for a in prepared.args)
    cpu = ms.load("zoo:induction-quick")
    same = cpu.prepare(ids)
    assert on_model_device(cpu, same) is same  # nothing to move: no copy


def test_weights_move_whole():
    w = ms.load("zoo:induction-quick").weights()
    moved = w.to("meta")
    assert moved.W_Q.device.type == "meta" and moved.W_E.device.type == "meta"
    assert w.W_Q.device.type == "cpu" and w.to("cpu") is w


@pytest.mark.parametrize("device", DEVICES)
def test_heads_runs_on_the_device(device, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "off")
    args = ["heads", "zoo:induction-quick", "--batch", "4", "--n", "8", "--top", "1", "--low", "1"]
    ref = CliRunner().invoke(app, args)
    r = CliRunner().invoke(app, [*args, "--device", device])
    assert r.exit_code == 0, r.output
    line, base = json.loads(r.output.strip().splitlines()[-1]), json.loads(ref.output.strip().splitlines()[-1])
    assert line["config"]["device"] == device
    got, want = line["figures"]["previous_token"]["heads"][0], base["figures"]["previous_token"]["heads"][0]
    assert got["head"] == want["head"] and got["previous_token"] == pytest.approx(want["previous_token"], abs=1e-4)


@pytest.mark.parametrize("name", ["induction-quick", "tms-quick", "modadd-quick"])
@pytest.mark.parametrize("device", DEVICES)
def test_zoo_training_on_a_device_matches_the_default(name, device, tmp_path):
    # batches are drawn on the CPU either way: the same steps on the device give the same network
    # (bit for bit on the CPU; to float rounding on a GPU)
    from mechscope import zoo

    default = zoo.train(name, steps=6, path=tmp_path / "default", progress=False)
    on = zoo.train(name, steps=6, path=tmp_path / device, progress=False, device=device)
    a, b = default.weights(), on.weights()
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].device.type == "cpu"  # files hold CPU tensors whatever the device
        torch.testing.assert_close(b[k], a[k], rtol=0 if device == "cpu" else 1e-4, atol=0 if device == "cpu" else 1e-5)
    assert [r["step"] for r in default.metrics()] == [r["step"] for r in on.metrics()]
