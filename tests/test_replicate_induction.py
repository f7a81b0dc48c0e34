"""The induction-heads replication: its measurements on curves and figures whose answers are known, and a
run end to end on short zoo runs."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope import zoo
from mechscope.circuits.handwritten import handwritten_induction
from mechscope.replications import NAMES, _registry
from mechscope.replications.induction_heads import _effective_copying, _sharp, analyse, build, replicate
from mechscope.zoo.recipes.induction import RECIPE

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))


def _curve(cross_at: int, drop_at: int, steps=range(0, 3001, 50)):
    """A loss that falls 3 nats in a sigmoid centred at `drop_at`; prefix matching rises at `cross_at`."""
    rows = []
    for s in steps:
        loss = 4.0 - 3.0 / (1 + torch.exp(torch.tensor(-(s - drop_at) / 60.0)))
        pm = 0.05 + 0.8 / (1 + torch.exp(torch.tensor(-(s - cross_at) / 60.0)))
        rows.append({"step": s, "repeat_loss": float(loss), "prefix_matching": [0.01, float(pm)]})
    return rows


def test_sharp_drop_is_located_where_prefix_matching_rises():
    sh = _sharp(_curve(700, 700))
    assert sh["prefix_matching_crosses_0.3_at"] in (650, 700) and sh["half_drop_step"] in (700, 750)
    assert sh["drop"] > 2.9 and sh["window"][0] >= 150 and sh["window"][1] <= 1250
    late = _sharp(_curve(2500, 700))  # prefix matching rises long after the loss fell: no drop around it
    assert late["drop"] < 0.1
    never = _sharp([{**r, "prefix_matching": [0.0, 0.1]} for r in _curve(700, 700)])
    assert never["prefix_matching_crosses_0.3_at"] is None


def _figures(**over):
    f = {"curve": _curve(700, 700), "prev_heads": [1], "ind_heads": [2],
         "previous_token_scores_l0": [0.1, 0.6, 0.1, 0.1],
         "prefix_matching_l1": [0.0, 0.0, 0.8, 0.0], "copying": {2: 0.95}, "copying_effective": {2: 0.99},
         "k_composition": {2: {"with_previous_token_heads": 0.3, "max_with_other_heads": 0.05}},
         "k_composition_previous_token_heads": [1], "substitution": None, "causal": {},
         "control_prefix_matching": {8: 0.05, 10: 0.05, 12: 0.05, 15: 0.05}, "prefix_matching_other_n": {},
         "control_positional_baseline": {"excess": 0.01, "head": 0, "repeat": 0.06, "no_repeat": 0.05},
         "layer1_positional_baseline": {"excess": 0.7, "head": 2, "repeat": 0.75, "no_repeat": 0.05},
         "handwritten": {}, "trained_eval": {}, "steps": 3000, "probe_n": 12}
    f.update(over)
    return f


def test_build_turns_figures_into_checks():
    rep = build(_figures(), quick=False)
    got = {c.name: c.passed for c in rep.checks}
    assert list(got) == ["loss_falls", "sharp_drop", "previous_token_head", "ov_copying", "ov_copying_effective",
                         "k_composition", "control_no_induction", "control_no_induction_excess", "strict_induction"]
    assert all(v for k, v in got.items() if k != "strict_induction") and not got["strict_induction"]
    bad = build(_figures(copying={2: 0.8}, control_prefix_matching={8: 0.2, 10: 0.2, 12: 0.14, 15: 0.05},
                         k_composition={2: {"with_previous_token_heads": 0.1, "max_with_other_heads": 0.2}}),
                quick=False)
    got = {c.name: c.passed for c in bad.checks}
    assert not got["ov_copying"] and not got["control_no_induction"] and not got["k_composition"]
    quick = build(_figures(), quick=True)  # the short runs keep every target
    assert quick.quick and quick.loosened and rep.loosened == []
    assert [(c.name, c.target) for c in quick.checks] == [(c.name, c.target) for c in rep.checks]
    json.loads(rep.json_line())


def test_effective_copying_of_the_handwritten_head_is_one():
    hp = {**RECIPE.variants[""], "layer_norm": False}
    assert _effective_copying(handwritten_induction(), hp, 1, [0]) == [pytest.approx(1.0, abs=1e-6)]


def test_registered():
    assert "induction-heads" in NAMES and _registry()["induction-heads"] is replicate


def test_analyse_runs_on_short_zoo_runs():
    zoo.train("induction-quick", steps=12, progress=False)
    zoo.train("induction-1l-quick", steps=6, progress=False)
    f = analyse("induction-quick", "induction-1l-quick")
    assert [r["step"] for r in f["curve"]][0] == 0 and f["curve"][-1]["step"] == 12
    assert len(f["previous_token_scores_l0"]) == 4 and set(f["control_prefix_matching"]) == {8, 12, 15}
    assert f["ind_heads"] == [] and f["substitution"] is None  # 12 steps: no induction head yet
    rep = build(f, quick=True)
    assert not rep.passed and len(rep.checks) == 9
    json.loads(rep.json_line())


def test_each_seed_trains_its_own_networks(monkeypatch):
    import mechscope.replications.induction_heads as ih

    trained = []

    class Stop(Exception):
        pass

    def analyse(name, control):
        raise Stop(f"{name} {control}")

    monkeypatch.setattr(zoo, "train", lambda name, **kw: trained.append(name))
    monkeypatch.setattr(ih, "analyse", analyse)
    with pytest.raises(Stop):
        replicate(quick=True, seed=3)
    with pytest.raises(Stop):
        replicate(quick=False, seed=0)
    assert trained == ["induction-short-seed3", "induction-1l-short-seed3", "induction", "induction-1l"]


def test_short_variant_is_the_full_recipe_cut_short():
    from mechscope.zoo.recipes.induction import CONTROL

    for recipe in (RECIPE, CONTROL):
        full, short = recipe.variants[""], recipe.variants["short"]
        assert short["steps"] < full["steps"] and {**short, "steps": full["steps"]} == full


@pytest.mark.slow
def test_quick_replication_end_to_end():
    rep = replicate(quick=True)  # trains induction-short and induction-1l-short in a fresh cache
    failed = {c.name: c.got for c in rep.checks if not c.passed}
    assert rep.passed, f"--quick claims every check; these failed: {failed}"
    assert rep.figures["ind_heads"] and rep.figures["substitution"]["recovered_vs_mean"]["value"] > 0.5
    assert rep.figures["causal"]["induction"]["pass"]
