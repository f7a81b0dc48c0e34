"""Edge-level faithfulness, its curve over circuit size, robustness across ablations, and
completeness/minimality: known answers at the extremes, on a network built by hand, and (completeness
and minimality) against enumeration of every knockout with a forward pass written out edge by edge."""

import pytest
import torch

import hand_forward
from mechscope.causal import (AblationSpec, Circuit, Node, completeness_minimality, edge_faithfulness, edges_from_ids,
                              eap_ig, faithfulness_curve, graph_of, recovery, robustness_report)
from mechscope.causal.faithfulness_curve import areas, default_sizes
from mechscope.causal.graph import label
from mechscope.core import Kind, Site, metrics
from mechscope.rasp.known_circuits import load_known

from conftest import make_family, make_ids

KC = load_known("induction", 48)
GRAPH = graph_of(KC.model)
METRIC = metrics.sequence_logprob(KC.answers)
TRUTH = Circuit(edges_from_ids(KC.truth["resample"]), "induction (resample truth)")
RESAMPLE = AblationSpec("resample", reference="induction domain", granularity="edge")


@pytest.mark.parametrize("kind", ["zero", "mean", "resample", "patch"])
@pytest.mark.parametrize("aggregation", ["mean-then-normalise", "normalise-then-mean"])
def test_whole_graph_is_one_and_empty_circuit_is_zero(kind, aggregation):
    model = make_family("gpt2").model
    graph = graph_of(model)
    ids, other = make_ids(batch=4), make_ids(batch=4, seed=5)
    metric = metrics.logit_diff(torch.full((4,), 3), torch.full((4,), 4))
    spec = AblationSpec(kind, reference="" if kind == "zero" else "random tokens", granularity="edge")
    ref = None if kind == "zero" else other
    kw = dict(reference_inputs=ref, dataset="random-4", aggregation=aggregation, graph=graph)
    full = edge_faithfulness(model, ids, Circuit(frozenset(graph.edges)), metric, spec, **kw)
    empty = edge_faithfulness(model, ids, Circuit(frozenset()), metric, spec, **kw)
    assert full.value == pytest.approx(1.0, abs=1e-6) and empty.value == pytest.approx(0.0, abs=1e-6)
    assert full.how["level"] == "edge" and full.how["forward_passes"] == (1 if kind == "zero" else 2)


def test_denoising_and_ablating_the_circuit_itself():
    deno = AblationSpec("patch", reference="other sequences", granularity="edge", direction="denoising")
    f = edge_faithfulness(KC.model, KC.inputs, TRUTH, METRIC, deno, reference_inputs=KC.counterfactuals,
                          dataset="induction-48")
    assert f.value == pytest.approx(1.0, abs=1e-3)  # restoring the circuit's edges restores the behaviour
    without = AblationSpec("resample", reference="induction domain", granularity="edge", ablate="circuit")
    g = edge_faithfulness(KC.model, KC.inputs, TRUTH, METRIC, without, reference_inputs=KC.counterfactuals,
                          dataset="induction-48")
    assert g.value < 0.05 and g.how["ablated"] == "circuit"  # the rest alone cannot do the task


def test_every_score_prints_its_specification():
    s = edge_faithfulness(KC.model, KC.inputs, TRUTH, METRIC, RESAMPLE, reference_inputs=KC.counterfactuals,
                          dataset="induction-48", seed=3)
    text = str(s)
    for part in ("faithfulness[sequence_logprob]", "ablation=resample", "reference=induction domain", "level=edge",
                 "direction=noising", "ablated=complement", "mean-then-normalise", "induction-48", "n=48", "seed=3",
                 "95% CI", "circuit_edges=5", "forward_passes=2"):
        assert part in text, part
    assert s.ci[0] <= s.value <= s.ci[1] and s.worst <= s.quantiles()[0.5]


def test_recovery_measures_several_metrics_from_one_set_of_runs():
    loss = metrics.Metric("loss", lambda lg: -METRIC(lg), higher_is_better=False)
    r = recovery(KC.model, KC.inputs, TRUTH, {"logprob": METRIC, "loss": loss}, RESAMPLE,
                 reference_inputs=KC.counterfactuals, dataset="induction-48", kl_positions="all")
    assert r["logprob recovered"].value == pytest.approx(r["loss recovered"].value, abs=1e-9)  # normalised: sign-free
    assert r["logprob recovered"].value > 0.99 and 0 <= r["kl"].value < 0.01
    whole = recovery(KC.model, KC.inputs, Circuit(frozenset(GRAPH.edges)), {"logprob": METRIC}, RESAMPLE,
                     reference_inputs=KC.counterfactuals, dataset="induction-48", kl_positions="all")
    assert whole["kl"].value == pytest.approx(0.0, abs=1e-9)


def test_faithfulness_curve_endpoints_areas_and_random_baseline():
    scores = eap_ig(KC.model, KC.inputs, METRIC, RESAMPLE, reference_inputs=KC.counterfactuals, graph=GRAPH)
    kw = dict(reference_inputs=KC.counterfactuals, dataset="induction-48", n_random=4, seed=1)
    c = faithfulness_curve(KC.model, KC.inputs, scores, METRIC, RESAMPLE, **kw)
    assert c.sizes == tuple(default_sizes(GRAPH.n_edges)) and c.sizes[0] == 0 and c.sizes[-1] == GRAPH.n_edges
    assert float(c.values[0]) == pytest.approx(0.0, abs=1e-6) and float(c.values[-1]) == pytest.approx(1.0, abs=1e-6)
    k5 = c.sizes.index(5) if 5 in c.sizes else None
    if k5 is not None:
        assert float(c.values[k5]) > 0.99  # the 5 true edges rank first
    assert c.cpr > c.random_cpr + 0.3 and c.cmd < c.random_cmd
    assert c.worst().shape == (len(c.sizes),) and bool((c.worst() <= c.quantiles()[:, 1] + 1e-9).all())
    again = faithfulness_curve(KC.model, KC.inputs, scores, METRIC, RESAMPLE, **kw)
    assert torch.equal(c.random, again.random)  # seeded
    assert "CPR=" in str(c) and c.how["ranking"].startswith("EAP-IG")


def test_areas_of_known_curves():
    assert areas([0, 5, 10], torch.tensor([1.0, 1.0, 1.0]), 10) == (1.0, 0.0)
    cpr, cmd = areas([0, 10], torch.tensor([0.0, 1.0]), 10)
    assert cpr == pytest.approx(0.5) and cmd == pytest.approx(0.5)
    cpr, cmd = areas([0, 5, 10], torch.tensor([0.0, 1.5, 1.0]), 10)
    assert cpr == pytest.approx(1.0) and cmd == pytest.approx(0.5)


def test_robustness_report_shows_how_much_the_ablation_matters():
    rep = robustness_report(KC.model, KC.inputs, TRUTH, METRIC, reference_inputs=KC.counterfactuals,
                            reference="induction domain", counterfactuals=KC.counterfactuals, dataset="induction-48",
                            kl_positions="all", n_boot=200)
    rows = {(r.kind, r.level): r for r in rep.rows}
    assert set(rows) == {(k, lv) for k in ("resample", "mean", "zero", "patch") for lv in ("node", "edge")}
    assert rows["resample", "edge"].faithfulness.value > 0.99 and rows["patch", "edge"].faithfulness.value > 0.99
    # the resample circuit leaves out the positional edges that zero ablation removes
    assert rows["zero", "edge"].faithfulness.value < 0.5 and rows["zero", "edge"].kl.value > 0.1
    assert rep.spread() > 0.5 and "spread" in str(rep)
    assert rows["mean", "node"].faithfulness.how["level"] == "node"


def test_completeness_and_minimality():
    rep = completeness_minimality(KC.model, KC.inputs, TRUTH, METRIC, RESAMPLE, reference_inputs=KC.counterfactuals,
                                  dataset="induction-48")
    assert rep.worst_gap < 0.05 * abs(rep.f_model - rep.f_empty)  # knocking parts out hurts circuit and model alike
    prev, ind = Node(Site(Kind.Z, 0), 0), Node(Site(Kind.Z, 1), 0)
    assert rep.minimality[prev][0] > 0.3 and rep.minimality[ind][0] > 0.3
    # a head that writes where nothing reads is not needed
    junk = Node(Site(Kind.Z, 0), 1)
    padded = Circuit(TRUTH.edges | {e for e in GRAPH.edges if e.sender == junk and e.receiver == TRUTH_RECEIVER})
    rep2 = completeness_minimality(KC.model, KC.inputs, padded, METRIC, RESAMPLE, reference_inputs=KC.counterfactuals)
    assert rep2.minimality[junk][0] < 1e-6 and "minimality" in str(rep2)


TRUTH_RECEIVER = Node(Site(Kind.K_IN, 1), 0)


# --- brute force: Wang et al.'s completeness and minimality by enumeration (tests/hand_forward.py) ---

BF_MODEL = hand_forward.tiny_model()
BF_GRAPH = graph_of(BF_MODEL)
BF_IDS = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(1))
BF_OTHER = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(2))
BF_ANSWERS = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(4))
BF_METRIC = metrics.sequence_logprob(BF_ANSWERS)
# six components, some with only part of their edges in the circuit
BF_CIRCUIT = Circuit(frozenset(e for e in BF_GRAPH.edges if str(e) in {
    "input -> a0.0<q", "input -> a0.0<k", "input -> a0.0<v", "input -> a0.1<v", "input -> m0<", "a0.0 -> m0<",
    "m0 -> a1.0<v", "a0.1 -> a1.0<k", "input -> a1.0<q", "input -> a1.1<v", "a0.0 -> a1.1<q", "a1.0 -> m1<",
    "m0 -> m1<", "a1.0 -> output", "a1.1 -> output", "m1 -> output", "a0.0 -> output"}), "hand-picked")


def _subsets(items):
    return [tuple(c for j, c in enumerate(items) if i >> j & 1) for i in range(2 ** len(items))]


def _brute_force(kind):
    """F(X) for every knockout, each from its own hand-written forward pass: F(C \\ K), F(M \\ K) for
    every subset K of the circuit's components, F(M) and F(empty)."""
    ablated = hand_forward.ablated(BF_MODEL, BF_IDS, kind, None if kind == "zero" else BF_OTHER, seed=0)

    def f(ablate):  # the mean metric with the given edges ablated
        swap = {(label(e.sender), label(e.receiver)): ablated[label(e.sender)] for e in ablate}
        return float(BF_METRIC(hand_forward.forward(BF_MODEL, BF_IDS, swap)[0]).double().mean())

    comps = sorted(c for c in BF_CIRCUIT.nodes if c.site.kind in (Kind.Z, Kind.MLP_OUT))
    outside = {e for e in BF_GRAPH.edges if e not in BF_CIRCUIT}
    out_of = lambda ks: {e for e in BF_GRAPH.edges if e.sender in ks}  # noqa: E731
    f_c = {frozenset(k): f(outside | out_of(k)) for k in _subsets(comps)}
    f_m = {frozenset(k): f(out_of(k)) for k in _subsets(comps)}
    return comps, f_c, f_m, f(set()), f(set(BF_GRAPH.edges))


@pytest.mark.parametrize("kind", ["zero", "patch"])
def test_completeness_and_minimality_equal_brute_force_enumeration(kind):
    comps, f_c, f_m, f_model, f_empty = _brute_force(kind)
    spec = AblationSpec(kind, reference="" if kind == "zero" else "other tokens", granularity="edge")
    ref = None if kind == "zero" else BF_OTHER
    rep = completeness_minimality(BF_MODEL, BF_IDS, BF_CIRCUIT, BF_METRIC, spec, reference_inputs=ref)
    assert len(comps) == 6 and rep.how["knockouts"] == "all 64 subsets"
    assert rep.f_model == pytest.approx(f_model, abs=2e-6) and rep.f_empty == pytest.approx(f_empty, abs=2e-6)
    assert rep.f_circuit == pytest.approx(f_c[frozenset()], abs=2e-6)
    gaps = {frozenset(k): (fc, fm, gap) for k, fc, fm, gap in rep.incompleteness}
    assert set(gaps) == set(f_c)
    for k, (fc, fm, gap) in gaps.items():
        assert fc == pytest.approx(f_c[k], abs=2e-6) and fm == pytest.approx(f_m[k], abs=2e-6)
    completeness = max(abs(f_c[k] - f_m[k]) for k in f_c)  # Wang et al.: max over K of |F(C\K) - F(M\K)|
    assert rep.worst_gap == pytest.approx(completeness, abs=4e-6) and completeness > 0.01
    whole = abs(f_model - f_empty)
    for v in comps:  # max over K in C - {v} of |F(C \ (K + v)) - F(C \ K)|, relative to the whole effect
        want = max(abs(f_c[frozenset(k) | {v}] - f_c[frozenset(k)]) for k in _subsets([c for c in comps if c != v]))
        assert rep.minimality[v][0] == pytest.approx(want / whole, abs=1e-5)
    # sampled knockouts (a circuit too large to enumerate): each one tried is measured exactly, and
    # the maxima over them are lower bounds of the exact ones
    sampled = completeness_minimality(BF_MODEL, BF_IDS, BF_CIRCUIT, BF_METRIC, spec, reference_inputs=ref,
                                      exhaustive=0, n_random=4)
    assert sampled.how["knockouts"].startswith(str(len(sampled.incompleteness)))
    for k, fc, fm, gap in sampled.incompleteness:
        assert gap == pytest.approx(abs(f_c[frozenset(k)] - f_m[frozenset(k)]), abs=4e-6)
    assert sampled.worst_gap <= completeness + 4e-6
    for v, (score, k) in sampled.minimality.items():
        assert score == pytest.approx(abs(f_c[frozenset(k) | {v}] - f_c[frozenset(k)]) / whole, abs=1e-5)
        assert score <= rep.minimality[v][0] + 1e-5
