"""Circuit discovery against networks whose circuits are known by construction.

For each network and ablation kind: the ground truth agrees with exact edge patching (every true
edge matters more than every other edge: ROC AUC 1), and each method's edge ranking is scored by
ROC AUC against it. Targets: EAP-IG and ACDC >= 0.95 under counterfactual patching, resampling and
mean ablation. Zero ablation pushes the compiled networks far from their operating range, where
gradients say little: EAP-IG is held to a lower bar there, ACDC (real interventions) to the same.
"""

import pytest

from mechscope.causal import (AblationSpec, acdc_sweep, eap, eap_ig, edge_auc, edge_patching, edges_from_ids,
                              graph_of, roc_auc)
from mechscope.core import metrics
from mechscope.rasp.known_circuits import load_known, names

MODELS = {name: load_known(name, 48) for name in names()}
THRESHOLDS = [1e-3, 1e-2, 1e-1, 1.0]


def _setup(name, kind):
    kc = MODELS[name]
    spec = AblationSpec(kind, reference={"zero": "", "patch": "counterfactuals"}.get(kind, "the dataset"))
    ref = None if kind == "zero" else (kc.counterfactuals if kind == "patch" else kc.inputs)
    return kc, spec, ref, graph_of(kc.model), metrics.sequence_logprob(kc.answers), edges_from_ids(kc.truth[kind])


def test_roc_auc_known_values():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [True, False, False]) == 0.5  # ties count one half
    assert roc_auc([3, 1, 2, 0], [True, False, True, False]) == 1.0
    assert roc_auc([3, 2, 1, 0], [True, False, True, False]) == 0.75
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 2], [True, True])


@pytest.mark.parametrize("name", list(MODELS))
def test_each_network_is_verified_against_its_program(name):
    kc = MODELS[name]
    assert kc.verified >= 120  # every input of the domain was checked when it was built
    pred = kc.model.run(kc.inputs).logits.argmax(-1)
    has = kc.answers >= 0
    assert bool((pred[has] == kc.answers[has]).all())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kind", ["zero", "mean", "resample", "patch"])
def test_ground_truth_agrees_with_exact_edge_patching(name, kind):
    kc, spec, ref, graph, metric, truth = _setup(name, kind)
    exact = edge_patching(kc.model, kc.inputs, metric, spec, reference_inputs=ref, graph=graph)
    assert edge_auc(exact, truth) == 1.0
    assert 2 <= len(truth) < graph.n_edges // 2


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kind", ["mean", "resample", "patch"])
def test_methods_recover_the_circuit(name, kind):
    kc, spec, ref, graph, metric, truth = _setup(name, kind)
    ig = eap_ig(kc.model, kc.inputs, metric, spec, reference_inputs=ref, steps=10, graph=graph)
    sweep = acdc_sweep(kc.model, kc.inputs, spec, THRESHOLDS, reference_inputs=ref, graph=graph)
    first = eap(kc.model, kc.inputs, metric, spec, reference_inputs=ref, graph=graph)
    assert edge_auc(ig, truth) >= 0.95
    assert edge_auc(sweep, truth) >= 0.95
    assert edge_auc(first, truth) >= 0.9
    for scores in (ig, sweep, first):
        assert scores.how["ablation"] == kind and scores.how["level"] == "edge" and scores.how["forward_passes"] > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_methods_under_zero_ablation(name):
    kc, spec, ref, graph, metric, truth = _setup(name, "zero")
    sweep = acdc_sweep(kc.model, kc.inputs, spec, THRESHOLDS, graph=graph)
    ig = eap_ig(kc.model, kc.inputs, metric, spec, steps=10, interpolate="edges", graph=graph)
    assert edge_auc(sweep, truth) >= 0.95
    assert edge_auc(ig, truth) >= 0.9
