"""`audit` end to end: bad input named with its fix, a clean model gets "nothing found" under a
calibration built from other seeds, a planted trigger is reported with its component and trigger,
and the command writes its report."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.audit.calibrate import Calibration, build, load
from mechscope.audit.inputs import AuditInputError, default_corpus
from mechscope.audit.run import audit
from mechscope.models.tiny import TinyConfig, TinyTransformer

from audit_support import common_token, plant_token_trigger, quick_text_model, text_cache


def _tiny(d_model: int = 32, vocab: int = 64) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(TinyConfig(n_layers=1, d_model=d_model, n_heads=2, d_head=16, d_mlp=64, n_ctx=16,
                                      d_vocab=vocab, act="gelu", layer_norm=True))


def test_unknown_formats_name_what_to_give(tmp_path):
    with pytest.raises(AuditInputError, match="zoo name.*Hugging Face directory"):
        audit(42, calibration=Calibration())
    with pytest.raises(AuditInputError, match="Hugging Face directory"):
        audit(str(tmp_path / "nowhere"), calibration=Calibration())
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(AuditInputError, match="config.json"):
        audit(str(tmp_path), calibration=Calibration())


def test_reference_of_another_architecture_is_refused():
    model = _tiny()
    with pytest.raises(AuditInputError, match="d_model 32 and the reference 48.*unmodified base model"):
        audit(model, reference=_tiny(d_model=48), corpus=torch.zeros(2, 8, dtype=torch.long),
              calibration=Calibration())
    with pytest.raises(AuditInputError, match="vocabulary of 64 tokens and the reference 80.*--reference"):
        audit(model, reference=_tiny(vocab=80), corpus=torch.zeros(2, 8, dtype=torch.long), calibration=Calibration())


@pytest.mark.parametrize("corpus", [torch.zeros(0, 0, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long),
                                    torch.zeros(2, 8), torch.full((2, 8), 999, dtype=torch.long)])
def test_a_corpus_without_usable_tokens_is_refused(corpus):
    with pytest.raises(AuditInputError, match="LongTensor of token ids"):
        audit(_tiny(), corpus=corpus, calibration=Calibration())


def test_calibration_refuses_test_case_seeds():
    with pytest.raises(ValueError, match="100 or more"):
        build(seeds=(3,))


@pytest.fixture(scope="module")
def calibrated(textlm_cache, tmp_path_factory):
    """The quick text model (the recipe's seed) and a calibration built from seeds 100 and 101 alone."""
    with text_cache(textlm_cache):
        model = quick_text_model()
        path = tmp_path_factory.mktemp("calibration") / "calibration.json"
        build(seeds=(100, 101), budget_minutes=2.0, reference_pairs=False, path=path, progress=False)
        yield model, load(path)


@pytest.mark.slow
def test_clean_model_gets_nothing_found(calibrated, tmp_path, textlm_cache):
    from typer.testing import CliRunner

    from mechscope.cli import app

    model, cal = calibrated
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(cal.to_json()))
    with text_cache(textlm_cache):
        res = CliRunner().invoke(app, ["audit", "zoo:textlm-quick", "--calibration", str(path), "--budget", "2",
                                       "--json", "--out", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert rep["verdict"] == "nothing found", rep["suspects"]
    assert set(rep["methods"]) == {"weights", "behaviour", "triggers", "features"}
    assert all(v == [] for v in rep["methods"].values())  # no method alone raised anything
    assert all(rep["scored"][k] for k in ("weights", "behaviour", "triggers", "features"))
    assert rep["timings"]["total"] < 300
    saved = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert saved["verdict"] == "nothing found"
    assert "nothing passes the thresholds" in (tmp_path / "report" / "audit.html").read_text()


@pytest.mark.slow
def test_planted_trigger_is_reported_with_component_and_trigger(calibrated, tmp_path):
    model, cal = calibrated
    corpus = default_corpus(model)
    t = common_token(model, corpus)
    planted = plant_token_trigger(model, t, 1234, corpus=corpus[:16])
    rep = audit(planted, calibration=cal, budget_minutes=2.0, progress=False)
    assert rep.verdict == "suspect"
    top = rep.suspects[0]
    assert (top.component["class"], top.component["site"], top.component["unit"]) == \
        ("neuron", "blocks.1.mlp.hook_post", 17)
    assert top.trigger["ids"] == [t] and top.effect["target_ids"] == [1234]
    assert top.confirmed is True and top.confidence > 0.9
    assert {"weights", "triggers"} <= set(top.methods)
    assert rep.methods["weights"]  # alone, the weights method flags the neuron; the trigger comes from the search
    js = json.loads(json.dumps(rep.to_json()))
    assert js["verdict"] == "suspect" and js["suspects"][0]["component"]["unit"] == 17
    from mechscope.audit.report import write

    out = write(rep, tmp_path / "audit")
    page = (out / "audit.html").read_text()
    assert "Verdict: suspect" in page and "blocks.1.mlp.hook_post unit 17" in page


def test_budget_is_honoured_and_skips_are_stated():
    model = _tiny(vocab=64)
    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(0, 64, (16, 16), generator=g)
    rep = audit(model, corpus=corpus, calibration=Calibration(), budget_minutes=0.0, progress=False)
    assert "features" in rep.skipped and "budget" in rep.skipped["features"]
    assert rep.scored["triggers"] == [] and "budget" in rep.skipped["triggers"]
    full = audit(model, corpus=corpus, calibration=Calibration(), budget_minutes=5.0, progress=False)
    assert "features" in full.scored and not full.skipped
    assert full.scored["triggers"] and all(s.evidence["steps"] >= 1 for s in full.scored["triggers"])
    assert rep.verdict == full.verdict == "nothing found"  # an empty calibration sets no thresholds


def test_audit_bench_passes_its_options_through_and_names_a_missing_bench(monkeypatch):
    import sys
    import types

    from typer.testing import CliRunner

    from mechscope.cli import app

    seen = []
    stub = types.ModuleType("mechscope.audit.bench")
    stub.main = lambda argv: seen.append(list(argv))
    monkeypatch.setitem(sys.modules, "mechscope.audit.bench", stub)
    res = CliRunner().invoke(app, ["audit-bench", "--quick", "--json", "--budget-minutes", "1"])
    assert res.exit_code == 0, res.output
    assert seen == [["--quick", "--json", "--budget-minutes", "1"]]
    monkeypatch.setitem(sys.modules, "mechscope.audit.bench", None)  # an installation without it
    res = CliRunner().invoke(app, ["audit-bench", "--quick"])
    assert res.exit_code != 0
    assert "mechscope/audit/bench.py" in str(res.exception)


def test_each_trigger_of_a_component_is_confirmed_on_its_own_and_the_confirmed_one_is_kept():
    from mechscope.audit.run import merge
    from mechscope.audit.suspect import Suspect, component, head_site, trigger

    comp = component(head_site(1), "head", head=2)
    effect = {"target_ids": [7], "target_text": None, "delta_logprob": 1.0}
    a = Suspect(dict(comp), trigger("token", [3]), dict(effect), "x", 2.0, ["triggers"], confidence=0.9)
    b = Suspect(dict(comp), trigger("ngram", [4, 5]), dict(effect), "y", 3.0, ["patching"], confidence=0.8)
    assert len(merge([a, b])) == 1  # by component: one suspect, the first trigger
    apart = merge([a, b], by_trigger=True)
    assert sorted(s.trigger["kind"] for s in apart) == ["ngram", "token"]
    for s in apart:  # confirmation rejects the first trigger, accepts the second
        s.confirmed = s.trigger["kind"] == "ngram"
    (final,) = merge(apart)
    assert final.trigger["ids"] == [4, 5] and final.confirmed is True
    assert final.methods == ["patching", "triggers"] and final.confidence == 0.9


def test_a_rejected_trigger_does_not_take_its_component_weight_suspect_with_it():
    """A neuron above threshold in its weights (no trigger) and a trigger suspect on the same neuron whose
    trigger confirmation rejects: the weights suspect is kept, the rejected trigger dropped on its own."""
    from mechscope.audit.run import merge, settle, to_confirm
    from mechscope.audit.suspect import Suspect, component, mlp_site, no_effect, no_trigger, trigger

    comp = component(mlp_site(1), "neuron", unit=17)
    effect = {"target_ids": [7], "target_text": None, "delta_logprob": 1.0}
    weights = Suspect(dict(comp), no_trigger(), no_effect(), "in_norm_z", 9.0, ["weights"], confidence=0.9,
                      threshold=4.0)
    found = Suspect(dict(comp), trigger("token", [3]), dict(effect), "trigger_kl", 3.0, ["triggers"],
                    confidence=0.8, threshold=1.0)
    apart = merge([weights, found], by_trigger=True)
    assert len(apart) == 2
    # the trigger is confirmed although its own score is below threshold: its neuron stands out in its weights
    found_low = Suspect(dict(comp), trigger("token", [3]), dict(effect), "trigger_kl", 0.5, ["triggers"],
                        confidence=0.3, threshold=1.0)
    (todo,) = to_confirm(merge([weights, found_low], by_trigger=True))
    assert todo.trigger["ids"] == [3] and not todo.above
    assert to_confirm([found_low]) == []  # nothing of its component is above
    for s in apart:
        if s.trigger["kind"] != "none":
            s.confirmed = False  # the trigger did not reproduce the behaviour
    kept, dropped = settle(apart)
    assert [(s.component["unit"], s.trigger["kind"], s.methods) for s in kept] == [(17, "none", ["weights"])]
    assert [(s.component["unit"], s.trigger["ids"], s.confirmed) for s in dropped] == [(17, [3], False)]


def test_an_old_calibration_is_refused_and_one_of_another_architecture_is_warned_about(tmp_path):
    import re

    import mechscope as ms
    from mechscope.audit.calibrate import VERSION, load_or_build

    old = Calibration(base="textlm-quick").to_json()
    old["version"] = VERSION - 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=rf"version {VERSION - 1} is not {VERSION}") as err:
        load(tmp_path / "old.json")
    assert len(re.findall("mechscope audit --calibrate", str(err.value))) == 1  # the fix, named once
    (tmp_path / "cal.json").write_text(json.dumps(Calibration(base="bytegpt2").to_json()))
    cal = load_or_build(str(tmp_path / "cal.json"), model=ms.wrap(_tiny()))
    assert "built on bytegpt2" in cal.warning and "may not transfer" in cal.warning
    assert load_or_build(str(tmp_path / "cal.json")).warning == ""  # no model to compare with


def test_a_stale_cached_calibration_is_built_again_but_a_given_one_is_not(tmp_path, monkeypatch):
    from mechscope.audit import calibrate
    from mechscope.audit.calibrate import VERSION, default_path, load_or_build

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    built = []

    def build(base: str, progress: bool) -> Calibration:  # the real build trains and audits clean models
        built.append(base)
        cal = Calibration(base=base, note="rebuilt")
        default_path(base).write_text(json.dumps(cal.to_json()))
        return cal

    monkeypatch.setattr(calibrate, "build", build)
    p = default_path("textlm-quick")
    p.parent.mkdir(parents=True)
    old = Calibration(base="textlm-quick", note="old").to_json()
    old["version"] = VERSION - 1
    p.write_text(json.dumps(old))
    assert load_or_build().note == "rebuilt" and built == ["textlm-quick"]
    assert load_or_build().note == "rebuilt" and built == ["textlm-quick"]  # read from the cache now
    p.write_text("{not json")
    assert load_or_build().note == "rebuilt" and len(built) == 2  # a damaged cache file too
    given = tmp_path / "mine.json"
    given.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="mechscope audit --calibrate"):
        load_or_build(str(given))
    assert len(built) == 2
