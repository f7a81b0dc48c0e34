"""ACDC on a network whose circuit is known: it recovers the circuit, and logs what it cost."""

import pytest
import torch

from mechscope.causal import AblationSpec, Circuit, acdc, acdc_sweep, edge_auc, edges_from_ids, graph_of
from mechscope.core import metrics
from mechscope.rasp.known_circuits import load_known

KC = load_known("induction", 48)
GRAPH = graph_of(KC.model)


@pytest.mark.parametrize("kind", ["resample", "patch", "zero"])
def test_acdc_recovers_the_hand_set_induction_circuit(kind):
    spec = AblationSpec(kind, reference="" if kind == "zero" else "other sequences")
    ref = None if kind == "zero" else KC.counterfactuals
    res = acdc(KC.model, KC.inputs, spec, threshold=0.01, reference_inputs=ref, graph=GRAPH, progress=False)
    truth = edges_from_ids(KC.truth[kind])
    assert set(res.circuit.edges) == set(truth)
    # one pass per tested edge, plus the intact run, the KL reference and the reference data
    tested = int((~torch.isnan(res.changes)).sum())
    assert res.how["forward_passes"] == tested + 2 + (0 if kind == "zero" else 1)
    assert res.how["edges_kept"] == len(truth) and res.how["method"] == "ACDC"
    assert res.how["final_loss"] < 0.01 * len(truth)


def test_thresholds_order_the_circuits():
    spec = AblationSpec("resample", reference="other sequences")
    small = acdc(KC.model, KC.inputs, spec, threshold=10.0, reference_inputs=KC.counterfactuals, graph=GRAPH,
                 progress=False)
    assert len(small.circuit) == 0  # every removal costs less than 10 nats: everything goes
    sweep = acdc_sweep(KC.model, KC.inputs, spec, [1e-3, 1e-2, 1e-1, 1.0], reference_inputs=KC.counterfactuals,
                       graph=GRAPH)
    assert edge_auc(sweep, edges_from_ids(KC.truth["resample"])) >= 0.95
    assert sweep.how["forward_passes"] > 4 * len(KC.truth["resample"])


def test_a_task_metric_can_drive_acdc():
    spec = AblationSpec("resample", reference="other sequences")
    metric = metrics.sequence_logprob(KC.answers)  # higher is better: acdc orients it as a loss
    res = acdc(KC.model, KC.inputs, spec, threshold=0.01, metric=metric, reference_inputs=KC.counterfactuals,
               graph=GRAPH, progress=False)
    assert set(res.circuit.edges) == set(edges_from_ids(KC.truth["resample"]))
    assert isinstance(res.circuit, Circuit) and res.how["metric"] == "sequence_logprob"


def test_acdc_needs_noising():
    with pytest.raises(ValueError, match="noising"):
        acdc(KC.model, KC.inputs, AblationSpec("patch", reference="x", direction="denoising"), threshold=0.1,
             reference_inputs=KC.counterfactuals)
