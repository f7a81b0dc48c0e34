"""Replications over several seeds: pass rates, the every-seed rule, the JSON line and the command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mechscope import replications as R
from mechscope.cli import app
from mechscope.replications import Check, Replication, SeedSweep, parse_seeds, replicate_seeds


def _fake(quick: bool, seed: int, device: str | None = None) -> Replication:
    """Check "always" passes on every seed, "even_only" only on even seeds; figures carry the seed and device."""
    return Replication("fake", [Check("always", "> 0", seed + 1, True),
                                Check("even_only", "seed is even", seed, seed % 2 == 0)],
                       {"seed_seen": seed, "quick_seen": quick, "device_seen": device}, quick,
                       ["fewer steps"] if quick else [], seed)


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(R, "_registry", lambda: {"fake": _fake})


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("0,1,2", [0, 1, 2]), ("4,7", [4, 7]), ("7,", [7]),
                                         ("2-4", [2, 3, 4]), (" 1 ", [0])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "", "a", "-1", "3-1", "1,x"])
def test_parse_seeds_refuses_what_names_no_seed(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_a_check_passing_on_some_seeds_only_is_not_replicated(fake_registry):
    lines: list[str] = []
    sweep = replicate_seeds("fake", [0, 1, 2], quick=True, log=lines.append)
    assert sweep.seeds == [0, 1, 2] and [r.seed for r in sweep.runs.values()] == [0, 1, 2]
    assert [r.figures["seed_seen"] for r in sweep.runs.values()] == [0, 1, 2]
    assert all(r.figures["quick_seen"] for r in sweep.runs.values())
    assert sweep.pass_rate("always") == 1.0 and sweep.pass_rate("even_only") == pytest.approx(2 / 3)
    assert sweep.passed_seeds("even_only") == [0, 2] and not sweep.passed
    # a progress line before and after each seed, naming the failing checks
    assert len(lines) == 6 and "seed 1 (2/3)" in lines[2] and "failing: even_only" in lines[3]
    assert "2/2 checks pass" in lines[1]
    line = json.loads(sweep.json_line())
    assert line["kind"] == "replication" and line["seeds"] == [0, 1, 2] and line["pass"] is False
    assert line["checks"]["even_only"] == {"target": "seed is even", "got": {"0": 0, "1": 1, "2": 2}, "pass": False,
                                           "pass_rate": 0.6667, "passed_seeds": [0, 2]}
    assert line["checks"]["always"]["pass"] and line["checks"]["always"]["pass_rate"] == 1.0
    assert line["figures"]["per_seed"]["1"]["seed_seen"] == 1 and set(line["figures"]["seconds"]) == {"0", "1", "2"}
    assert line["loosened"] == ["fewer steps"]


def test_every_seed_passing_is_replicated(fake_registry):
    sweep = replicate_seeds("fake", [0, 2, 4, 2], log=None)  # repeated seeds run once
    assert sweep.seeds == [0, 2, 4] and sweep.passed and json.loads(sweep.json_line())["pass"]


def test_a_check_missing_on_a_seed_counts_as_failed():
    a = Replication("x", [Check("c", "t", 1, True), Check("d", "t", 1, True)], seed=0)
    b = Replication("x", [Check("c", "t", 1, True)], seed=1)
    sweep = SeedSweep("x", {0: a, 1: b})
    assert sweep.check_names() == ["c", "d"] and sweep.pass_rate("d") == 0.5 and not sweep.passed
    assert json.loads(sweep.json_line())["checks"]["d"]["got"]["1"] == "not measured on this seed"


def test_unknown_replication_and_bad_seeds():
    with pytest.raises(KeyError, match="no replication named 'nope'"):
        replicate_seeds("nope", [0])
    with pytest.raises(ValueError, match="at least one seed"):
        replicate_seeds("tms", [])


def test_command_reports_pass_rates_per_seed(fake_registry):
    out = CliRunner().invoke(app, ["replicate", "fake", "--quick", "--seeds", "0,1", "--json"])
    assert out.exit_code == 1  # even_only fails on seed 1
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["seeds"] == [0, 1] and last["checks"]["even_only"]["pass_rate"] == 0.5 and last["quick"]
    assert "seed 1" in out.stdout and "1/2" in out.stdout and "not replicated" in out.stdout
    ok = CliRunner().invoke(app, ["replicate", "fake", "--seeds", "0,2"])
    assert ok.exit_code == 0 and "replicated over seeds 0, 2" in ok.stdout
    single = CliRunner().invoke(app, ["replicate", "fake", "--json"])  # no --seeds: seed 0, one result
    assert single.exit_code == 0 and json.loads(single.stdout.strip().splitlines()[-1])["seed"] == 0
    on = CliRunner().invoke(app, ["replicate", "fake", "--seeds", "0,2", "--device", "cpu", "--json"])
    assert json.loads(on.stdout.strip().splitlines()[-1])["figures"]["per_seed"]["2"]["device_seen"] == "cpu", on.stdout
    bad = CliRunner().invoke(app, ["replicate", "fake", "--seeds", "x"])
    assert bad.exit_code == 2 and "--seeds" in bad.output


@pytest.mark.parametrize("module, quick, expect", [("tms", True, "tms-short-seed2"), ("tms", False, "tms-seed2"),
                                                    ("grokking", True, "modadd-frac05-long-seed2"),
                                                    ("grokking", False, "modadd-seed2")])
def test_each_seed_trains_its_own_zoo_run(monkeypatch, module, quick, expect):
    import importlib

    from mechscope import zoo

    mod = importlib.import_module(f"mechscope.replications.{module}")
    trained = []

    class Stop(Exception):
        pass

    def analyse(name):
        raise Stop(name)

    monkeypatch.setattr(zoo, "train", lambda name, **kw: trained.append((name, kw.get("device"))))
    monkeypatch.setattr(mod, "analyse", analyse)
    with pytest.raises(Stop, match=expect):
        mod.replicate(quick, 2, device="cpu")
    assert trained == [(expect, "cpu")]  # trained on the device asked for
