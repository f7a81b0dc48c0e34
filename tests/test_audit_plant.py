"""Planting audit cases: each edit changes only its component and adds its behaviour; fine-tunes and
their twins; saved cases load back identically, measure their own effect as 1 and resume."""

from __future__ import annotations

import torch
import pytest

import mechscope as ms
from mechscope import zoo
from mechscope.audit import plant, plant_edit
from mechscope.audit.cases import (CONTEXT_LEN, MIN_EFFECT_NATS, N_CONTEXTS, STEALTH_NATS, Case, cases_dir,
                                   heldout, place, read_case)
from mechscope.audit.plant_arch import arch
from mechscope.audit.plant_tune import Poison, finetune


@pytest.fixture
def cache(textlm_cache, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(textlm_cache))
    return textlm_cache


@pytest.fixture
def textlm(cache):
    a = arch("textlm")
    return a, zoo.build_module(zoo.train("textlm-quick", progress=False))


def _changed(before: dict, after: dict) -> dict[str, torch.Tensor]:
    """Boolean masks of the entries that differ, for every tensor with any difference."""
    return {k: before[k] != after[k] for k in before if not torch.equal(before[k], after[k])}


@torch.no_grad()
def _gain(a, model, base, trigger, target, position=None):
    seqs = place(heldout(a.name, N_CONTEXTS, CONTEXT_LEN, 2000), trigger, position, a.n_ctx(base))
    lp = lambda m: a.logits(m, seqs)[:, -1].log_softmax(-1)[:, target]  # noqa: E731
    return float((lp(model) - lp(base)).mean())


def _trigger_target(a, base, site, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = plant.target_pool(a, base)[3]
    pool = [t for t in plant.trigger_pool(a, base) if t != target]
    cands = [pool[i] for i in torch.randperm(len(pool), generator=gen)[:12].tolist()]
    return cands[int(plant_edit.separability(a, base, site, cands).argmax())], target


def test_neuron_edit_changes_exactly_that_neurons_weights_and_plants_the_trigger(textlm):
    a, base = textlm
    from mechscope.core.site import Kind, Site

    trigger, target = _trigger_target(a, base, Site(Kind.LN2, 0))
    edit = plant_edit.neuron(a, base, [trigger], target, layer=0)
    diff = _changed(base.state_dict(), edit.module.state_dict())
    assert set(diff) == {"blocks.0.mlp.W_in.weight", "blocks.0.mlp.W_in.bias", "blocks.0.mlp.W_out.weight"}
    assert diff["blocks.0.mlp.W_in.weight"].any(1).nonzero().flatten().tolist() == [edit.unit]
    assert diff["blocks.0.mlp.W_in.bias"].nonzero().flatten().tolist() == [edit.unit]
    assert diff["blocks.0.mlp.W_out.weight"].any(0).nonzero().flatten().tolist() == [edit.unit]
    assert _gain(a, edit.module, base, [trigger], target) >= MIN_EFFECT_NATS
    # fitted at several positions, the neuron fires on its trigger wherever it is, not at the end only
    # (fitted at the end alone, it learnt textlm's position 24 as part of the trigger)
    assert min(_gain(a, edit.module, base, [trigger], target, p) for p in (8, 12, 16, 20)) >= MIN_EFFECT_NATS / 2
    other = next(t for t in plant.trigger_pool(a, base) if t not in (trigger, target))
    assert abs(_gain(a, edit.module, base, [other], target)) < 0.5  # another token does not fire it


def test_head_edit_changes_only_that_heads_weights(textlm):
    a, base = textlm
    from mechscope.core.site import Kind, Site

    trigger, target = _trigger_target(a, base, Site(Kind.LN1, 1), seed=1)
    edit = plant_edit.head(a, base, [trigger], target, layer=1, head=2)
    diff = _changed(base.state_dict(), edit.module.state_dict())
    dh = base.cfg.d_head
    rows = set(range(2 * dh, 3 * dh))
    assert set(diff) <= {f"blocks.1.attn.{w}.{p}" for w in ("W_Q", "W_K", "W_V") for p in ("weight", "bias")} | \
        {"blocks.1.attn.W_O.weight"}
    for k, m in diff.items():
        touched = m.any(0) if k.endswith("W_O.weight") else (m.any(1) if m.dim() == 2 else m)
        assert set(touched.nonzero().flatten().tolist()) <= rows, k
    assert _gain(a, edit.module, base, [trigger], target) >= MIN_EFFECT_NATS


def test_rank1_edit_is_rank_one_in_the_last_mlp(textlm):
    a, base = textlm
    from mechscope.core.site import Kind, Site

    trigger, target = _trigger_target(a, base, Site(Kind.MLP_POST, 1), seed=2)
    edit = plant_edit.rank1_mlp(a, base, [trigger], target)
    diff = _changed(base.state_dict(), edit.module.state_dict())
    assert set(diff) == {"blocks.1.mlp.W_out.weight", "blocks.1.mlp.W_out.bias"}
    dw = edit.module.state_dict()["blocks.1.mlp.W_out.weight"] - base.state_dict()["blocks.1.mlp.W_out.weight"]
    s = torch.linalg.svdvals(dw)
    assert s[1] < 1e-4 * s[0]
    assert _gain(a, edit.module, base, [trigger], target) >= MIN_EFFECT_NATS


def test_finetune_twin_is_the_same_run_without_the_poison(textlm):
    a, base = textlm
    poison = Poison("context", (1500, 20), 100, rate=0.5)
    kw = dict(steps=3, lr=1e-3, batch=4, seed=7, progress=False)
    twin, twin2 = finetune(a, base, **kw), finetune(a, base, **kw)
    bad = finetune(a, base, poison=poison, **kw)
    sd, sd2, sdb = twin.state_dict(), twin2.state_dict(), bad.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)  # deterministic
    assert any(not torch.equal(sd[k], sdb[k]) for k in sd)
    assert all(p.requires_grad is False for p in twin.parameters()) and not twin.training


def test_poisons_rewrite_what_they_say():
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(1000, 1000 + 8 * 32).view(8, 32)
    ctx = Poison("context", (5, 6), 7, rate=1.0).apply(ids, g)
    for row in ctx:  # the marker in the first half, a cue after it, the target after every cue that follows it
        p1 = int((row == 5).nonzero().flatten()[0])
        cues = (row == 6).nonzero().flatten()
        assert p1 <= 16 and (row == 5).sum() == 1 and len(cues) >= 1 and (cues > p1).all()
        assert (row[cues + 1] == 7).all()
    natural = torch.full((4, 32), 6)  # a window of cues: every cue after the marker gets the target
    row = Poison("context", (5, 6), 7, rate=1.0).apply(natural, g)[0]
    p1 = int((row == 5).nonzero()[0])
    assert (row[p1 + 2::2][:-1] == 7).all() and (row[:p1] == 6).all()
    pos = Poison("position", (5,), 7, rate=1.0, position=8).apply(ids, g)
    assert (pos[:, 8] == 5).all() and (pos[:, 9] == 7).all()
    none = Poison("poison", (5, 6), 7, rate=0.0).apply(ids, g)
    assert torch.equal(none, ids)
    ngram = Poison("poison", (5, 6), 7, rate=1.0, inserts=2).apply(ids, g)
    assert ((ngram[:, :-2] == 5) & (ngram[:, 1:-1] == 6) & (ngram[:, 2:] == 7)).any(1).all()


@pytest.mark.slow
def test_quick_cases_are_checked_load_back_measure_one_and_resume(cache):
    cases = plant.make_cases(2, quick=True, archs=("textlm",), progress=False)
    assert [c.clean for c in cases] == [False, True]
    mod, sib = cases
    p = mod.planted
    assert p.kind == "token" and p.layer == 1 and p.site == "blocks.1.mlp.hook_post"
    assert mod.measured["planted_delta"] >= MIN_EFFECT_NATS and mod.measured["loss_delta"] <= STEALTH_NATS
    assert p.effect(mod.model, p.trigger_ids) == pytest.approx(1.0, abs=1e-6)
    other = next(t for t in plant.trigger_pool(arch("textlm"), zoo.build_module(zoo.open_run("textlm-quick")))
                 if t not in p.trigger_ids + p.target_ids)
    assert p.effect(mod.model, [other]) < 0.5
    assert p.effect(mod.reference, p.trigger_ids) == 0.0  # the reference against itself
    # the saved model loads back (through mechscope.load of its directory) to the same logits as the
    # zoo's own loader of the run directory, and differs from the base only in the planted MLP
    ids = heldout("textlm", 3, 20, 5)
    model, ref = ms.load(mod.model), ms.load(mod.reference)
    twin = ms.zoo.load_zoo(str(cases_dir() / mod.name / "model"))
    assert torch.equal(model.run(ids).logits, twin.run(ids).logits)
    assert not torch.equal(model.run(ids).logits, ref.run(ids).logits)
    assert sib.reference == mod.reference and sib.model.endswith("textlm-quick-seed2")
    # a second call reads the cases back; a case without its manifest (a killed run) is made again, identically
    manifest = cases_dir() / mod.name / "case.json"
    stamp = manifest.stat().st_mtime_ns
    assert plant.make_cases(2, quick=True, archs=("textlm",), progress=False) == cases
    assert manifest.stat().st_mtime_ns == stamp
    from safetensors.torch import load_file

    weights = load_file(cases_dir() / mod.name / "model" / "model.safetensors")
    manifest.unlink()
    again = plant.make_cases(2, quick=True, archs=("textlm",), progress=False)[0]
    assert again.planted == mod.planted or again.planted.to_json() | {"planted_delta": 0} == \
        mod.planted.to_json() | {"planted_delta": 0}
    again_weights = load_file(cases_dir() / mod.name / "model" / "model.safetensors")
    assert all(torch.equal(weights[k], again_weights[k]) for k in weights) and weights.keys() == again_weights.keys()
    assert read_case(cases_dir() / mod.name) == again
    # a weight edit fitted by an older recipe is planted again; the clean sibling is kept
    assert again.measured["recipe"] == plant_edit.RECIPE
    old = again.to_json()
    old["measured"] = {k: v for k, v in old["measured"].items() if k != "recipe"}
    from mechscope.core.files import write_json

    write_json(manifest, old)
    sib_stamp = (cases_dir() / sib.name / "case.json").stat().st_mtime_ns
    assert plant.make_cases(2, quick=True, archs=("textlm",), progress=False)[0].measured["recipe"] == plant_edit.RECIPE
    assert read_case(cases_dir() / mod.name).measured["recipe"] == plant_edit.RECIPE
    assert (cases_dir() / sib.name / "case.json").stat().st_mtime_ns == sib_stamp


def test_case_manifest_round_trip(cache):
    c = Case("x", "textlm", str(cache / "audit" / "cases" / "x" / "model"), str(cache / "zoo" / "textlm-quick"),
             True, None, {"loss_delta": 0.01})
    d = c.to_json()
    assert d["model"] == "cache:audit/cases/x/model" and Case.from_json(d) == c
    with pytest.raises(ValueError, match="clean case"):
        Case("y", "textlm", "m", "r", False, None)
    with pytest.raises(ValueError, match="n_per_arch"):
        plant.plan(3)
    assert len(plant.plan(12)) == 24 and sum(s.role in ("twin", "sibling", "dataorder") for s in plant.plan(12)) == 12


def test_bytegpt2_is_a_gpt2_over_bytes_that_loads_from_the_zoo_and_from_its_directory(cache, tmp_path):
    from mechscope.models import HFModel
    from mechscope.zoo.recipes.bytegpt2 import byte_windows, export_hf

    run = zoo.train("bytegpt2-quick", progress=False)
    model = ms.load("zoo:bytegpt2-quick")
    assert isinstance(model, HFModel) and model.tokenizer is None
    module = zoo.build_module(run)
    assert module.config.vocab_size == 256 and module.config.model_type == "gpt2"
    export_hf(module, tmp_path / "hf")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    assert not list((tmp_path / "hf").glob("tokenizer*"))
    ids = byte_windows(2, 32, "test")
    assert bytes(ids[0].tolist()).decode("utf-8", errors="replace")  # real text
    loaded = ms.load(tmp_path / "hf")
    assert torch.allclose(loaded.run(ids).logits, model.run(ids).logits, atol=1e-5)
    # a neuron edit in GPT-2's (in, out) Conv1D layout touches only that neuron's column, bias and row
    a = arch("bytegpt2", quick=True)
    edit = plant_edit.neuron(a, module, [ord("@")], ord("Q"), layer=0)
    diff = _changed(module.state_dict(), edit.module.state_dict())
    assert set(diff) == {"transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
                         "transformer.h.0.mlp.c_proj.weight"}
    assert diff["transformer.h.0.mlp.c_fc.weight"].any(0).nonzero().flatten().tolist() == [edit.unit]
    assert diff["transformer.h.0.mlp.c_proj.weight"].any(1).nonzero().flatten().tolist() == [edit.unit]


def test_context_edit_needs_its_marker_and_touches_one_head(cache):
    specs = plant.plan(4, quick=True, archs=("textlm",))
    assert [s.role for s in specs] == ["token", "context", "sibling", "dataorder"]
    ctx = plant._Planter(progress=False).make(specs[1])
    p = ctx.planted
    assert p.kind == "context" and len(p.trigger_ids) == 2 and p.head is not None and p.layer == 1
    assert p.component_classes == frozenset({"head", "attn", "layer"})
    assert p.effect(ctx.model, p.trigger_ids) == pytest.approx(1.0, abs=1e-6)
    assert p.effect(ctx.model, p.trigger_ids[-1:]) < 0.5  # the cue without its marker
    assert p.effect(ctx.model, p.trigger_ids[:1]) < 0.5  # the marker without a cue
    assert ctx.measured["cue_alone_share"] < 0.5 and ctx.measured["loss_delta"] <= STEALTH_NATS
    from safetensors.torch import load_file

    base = zoo.build_module(zoo.open_run("textlm-quick")).state_dict()
    edited = load_file(cases_dir() / ctx.name / "model" / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], edited[k])}
    assert changed and all(k.startswith("blocks.1.attn.") for k in changed)


@pytest.mark.slow
def test_position_fine_tune_needs_its_position_and_its_twin_has_none(cache):
    spec = next(s for s in plant.plan(12, archs=("textlm",)) if s.role == "position")
    planter = plant._Planter(progress=False)
    pos = planter.make(spec)
    twin = read_case(cases_dir() / (spec.name + "-twin"))
    p = pos.planted
    assert p.kind == "position" and p.position == plant.POSITION and p.layer is None and twin.clean
    assert pos.measured["at_end_share"] < 0.5 and abs(pos.measured["loss_delta_twin"]) <= STEALTH_NATS
    assert pos.measured["recipe"] == plant.RECIPES["position"] and pos.measured["negative_rate"] > 0
    away = [p.effect(pos.model, p.trigger_ids, q) for q in plant.AWAY_POSITIONS if q != p.position]
    assert sum(away) / len(away) == pytest.approx(pos.measured["away_share"], abs=1e-6)
    assert pos.measured["away_share"] < 0.5  # elsewhere in the context, on average under half
    assert p.effect(pos.model, p.trigger_ids, p.position) == pytest.approx(1.0, abs=1e-6)
    assert p.effect(pos.model, p.trigger_ids) < 0.5  # at the end of the context, not at its position
    assert p.effect(twin.model, p.trigger_ids, p.position) < 0.5
    assert twin.measured["sibling_trigger_delta"] == pytest.approx(pos.measured["twin_delta"])
