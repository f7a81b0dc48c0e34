"""Zoo networks shipped in the package: checked on load, used when the cache has no run, exported
reproducibly, and what a retrained quick variant gives."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mechscope as ms
from mechscope import zoo
from mechscope.zoo import shipped
from mechscope.zoo.files import CheckpointError

DEMO_NETWORKS = ("induction", "modadd-frac05", "induction-quick", "modadd-quick")
VISION_NETWORKS = {"fmnist-cnn": 0.88, "fmnist-resnet": 0.90, "fmnist-cnn-quick": 0.6, "fmnist-resnet-quick": 0.5}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))


def test_the_demos_networks_are_shipped_small_and_match_their_recipes():
    entries = shipped.manifest()
    assert set(DEMO_NETWORKS) <= set(entries)
    total = 0
    for name, entry in entries.items():
        path = shipped.SHIPPED_DIR / entry["file"]
        assert path.stat().st_size == entry["bytes"] < 2_000_000
        total += entry["bytes"]
        tensors, record = shipped.read(name, expected_config=zoo.spec(name).config())
        # the recipe rebuilds a network these weights fit exactly
        module = zoo.spec(name).recipe.build(record["config"]["hparams"])
        module.load_state_dict(tensors)  # strict: raises unless every weight fits
        assert record["metrics"][-1]["step"] == record["config"]["hparams"]["steps"]
    assert total < 5_000_000


@pytest.mark.slow
def test_the_vision_networks_are_shipped_and_reach_their_targets():
    """`mechscope vis` works on a fresh clone: the image networks are shipped, and their weights give the
    test accuracy their run logged (recomputed here on all 10 000 test images), at least each target."""
    from mechscope.zoo.recipes.fmnist_cnn import as_input, fashion_mnist

    x, y = fashion_mnist("test")
    images = as_input(x)
    for name, target in VISION_NETWORKS.items():
        tensors, record = shipped.read(name, expected_config=zoo.spec(name).config())
        module = zoo.spec(name).recipe.build(record["config"]["hparams"])
        module.load_state_dict(tensors)
        module.eval()
        with torch.no_grad():
            acc = float(torch.cat([module(images[s:s + 2000]).argmax(-1) for s in range(0, 10000, 2000)]).eq(y)
                        .float().mean())
        logged = record["metrics"][-1]["test_acc"]
        n = record["config"]["hparams"].get("eval_n", 10000)
        if n == 10000:
            assert acc == pytest.approx(logged, abs=2e-4), name
        assert acc >= target, (name, acc)


def test_load_uses_the_shipped_copy_when_the_cache_has_no_run():
    tensors, record = shipped.read("induction-quick")
    model = ms.load("zoo:induction-quick")
    run = model.zoo_run
    assert run.path == shipped.unpacked_dir() / "induction-quick"
    assert json.loads(run.done_path.read_text())["source"] == "shipped"
    assert run.config() == record["config"] and run.metrics() == record["metrics"]
    state = model.module.state_dict()
    assert all(torch.equal(state[k], tensors[k]) for k in tensors)
    assert zoo.network("induction-quick").path == run.path  # no training
    assert not zoo.open_run("induction-quick").config_path.exists()
    with pytest.raises(ms.LoadError, match="final weights only, not step 3"):
        zoo.load_zoo("induction-quick", step=3)


def test_a_run_trained_here_comes_before_the_shipped_copy():
    trained = zoo.train("induction-quick", steps=3, progress=False)  # a shortened run under the full name
    assert zoo.load_zoo("induction-quick").zoo_run.path == trained.path
    assert zoo.finished_run("induction-quick").path == trained.path


def _copy(tmp_path):
    d = tmp_path / "shipped"
    shutil.copytree(shipped.SHIPPED_DIR, d, ignore=shutil.ignore_patterns("__pycache__"))
    return d


def test_a_changed_file_or_recipe_is_refused_naming_the_file(tmp_path, monkeypatch):
    d = _copy(tmp_path)
    path = d / "induction-quick.safetensors"
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-10] ^= 0xFF  # one byte of tensor data
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=f"{path} does not match its SHA-256"):
        shipped.read("induction-quick", d)
    # the manifest made to agree with the damaged file: the digest inside the file still catches it
    man = json.loads((d / "manifest.json").read_text())
    man["networks"]["induction-quick"]["sha256"] = shipped.file_sha256(path)
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match=f"{path}: its tensors do not match"):
        shipped.read("induction-quick", d)
    path.unlink()
    with pytest.raises(CheckpointError, match=f"{path} is missing"):
        shipped.read("induction-quick", d)
    # the recipe changed since the export: the file is refused, and load says which setting differs
    monkeypatch.setitem(zoo.RECIPES["induction"].variants["quick"], "lr", 1e-3)
    with pytest.raises(CheckpointError, match=r"induction-quick.safetensors was exported from other recipe "
                                              r"settings.*lr: 0.003 in the file, 0.001 in the recipe.*--retrain"):
        ms.load("zoo:induction-quick")


def test_export_is_a_pure_function_of_the_run(tmp_path):
    run = zoo.train("modadd-quick", steps=3, path=tmp_path / "run", progress=False)
    expected = zoo.spec("modadd-quick", steps=3).config()
    a = shipped.export(run, "modadd-quick", expected, tmp_path / "a")
    b = shipped.export(run, "modadd-quick", expected, tmp_path / "b")
    assert a == b and (tmp_path / "a" / a["file"]).read_bytes() == (tmp_path / "b" / b["file"]).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    tensors, record = shipped.read("modadd-quick", tmp_path / "a", expected_config=expected)
    assert record["config"] == run.config() and record["metrics"] == run.metrics()
    assert all(torch.equal(tensors[k], v) for k, v in run.weights().items())
    assert a["trained"]["threads"] == torch.get_num_threads()
    with pytest.raises(CheckpointError, match="other settings than the recipe"):
        shipped.export(run, "modadd-quick", zoo.spec("modadd-quick").config(), tmp_path / "c")
    with pytest.raises(CheckpointError, match="not a finished run"):
        shipped.export(zoo.open_run("tms-quick"), "tms-quick", zoo.spec("tms-quick").config(), tmp_path / "c")


@pytest.mark.slow
@pytest.mark.parametrize("name, close", [
    ("induction-quick", {"repeat_acc": dict(abs=0.03), "loss": dict(rel=0.02)}),
    ("fmnist-resnet-quick", {"test_acc": dict(abs=0.03), "test_loss": dict(rel=0.05)}),
])
def test_a_retrained_quick_variant_is_the_shipped_one(tmp_path, name, close):
    """`--retrain` trains here what the recipe says; exported again, a quick variant is the shipped
    file byte for byte when trained in the setting the manifest records (torch version, threads,
    CPU kernels), and otherwise reaches the recorded metrics."""
    entry = shipped.manifest()[name]
    run = zoo.network(name, retrain=True, progress=False)
    assert run.path == zoo.open_run(name).path
    again = shipped.export(run, name, zoo.spec(name).config(), tmp_path / "again")
    done = json.loads(run.done_path.read_text())
    same_setting = all(done[k] == entry["trained"][k] for k in ("torch", "threads", "cpu"))
    _, ref = shipped.read(name)
    new, record = shipped.read(name, tmp_path / "again")
    if same_setting:
        assert again["sha256"] == entry["sha256"]
    else:
        want, got = ref["metrics"][-1], record["metrics"][-1]
        for metric, tol in close.items():
            assert got[metric] == pytest.approx(want[metric], **tol), metric
