"""Sweeps split across Ray tasks return the one-process result objects: activation patching (values,
baselines, references, pass counts) and EAP-IG (scores averaged over prompts) under patch and mean
ablations; a resample ablation, which cannot be split, is refused. One local Ray (2 CPUs) serves the module."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.distributed
pytest.importorskip("ray", reason="Ray is in the `distributed` extra (make test installs it)")

import mechscope as ms  # noqa: E402
from mechscope.causal import AblationSpec, activation_patching, eap_ig  # noqa: E402
from mechscope.causal.ray_sweeps import ray_activation_patching, ray_eap_ig  # noqa: E402
from mechscope.core import metrics  # noqa: E402

from conftest import VOCAB, build  # noqa: E402

G = torch.Generator().manual_seed(3)
CLEAN = torch.randint(0, VOCAB, (5, 6), generator=G)
CORRUPT = CLEAN.clone()
CORRUPT[:, 2] = (CLEAN[:, 2] + 7) % VOCAB
MEAN_REF = torch.randint(0, VOCAB, (9, 6), generator=G)
CORRECT, WRONG = torch.randint(0, VOCAB, (5,), generator=G), torch.randint(0, VOCAB, (5,), generator=G)


def tiny_gpt2():
    return ms.wrap(build("gpt2"))


def last_logit_diff(logits):  # any number of rows: the logit of token 3 minus that of token 4, last position
    return logits[:, -1, 3] - logits[:, -1, 4]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True), float((a - b).abs().nan_to_num().max())


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_split_activation_patching_equals_one_process(local_ray, direction):
    sites = ["resid_pre.1", "attn.z.0", "mlp_out.1"]
    one = activation_patching(tiny_gpt2(), CLEAN, CORRUPT, sites, last_logit_diff, direction=direction, progress=False)
    split = ray_activation_patching(tiny_gpt2, CLEAN, CORRUPT, sites, last_logit_diff, direction=direction, tasks=2)
    assert type(split) is type(one) and split.sites == one.sites and split.direction == one.direction
    _close(split.values, one.values)
    _close(split.baseline, one.baseline)
    _close(split.reference, one.reference)
    _close(split.normalised(), one.normalised())
    assert split.how["tasks"] == 2 and {k: v for k, v in split.how.items() if k not in (
        "tasks", "blocks_skipped", "shared_prefix", "unchanged_patches", "last_position_split")} == \
        {k: v for k, v in one.how.items() if k not in ("blocks_skipped", "shared_prefix", "unchanged_patches",
                                                       "last_position_split")}


@pytest.mark.parametrize("kind", ["patch", "mean"])
def test_split_eap_ig_equals_one_process(local_ray, kind):
    spec = AblationSpec(kind, reference="counterfactuals" if kind == "patch" else "random prompts", granularity="edge")
    ref = CORRUPT if kind == "patch" else MEAN_REF
    one = eap_ig(tiny_gpt2(), CLEAN, metrics.logit_diff(CORRECT, WRONG), spec, steps=3, reference_inputs=ref)
    split = ray_eap_ig(tiny_gpt2, CLEAN, None, spec, steps=3, reference_inputs=ref, tasks=2,
                       metric_for=lambda g: metrics.logit_diff(CORRECT[g], WRONG[g]))
    assert type(split) is type(one) and split.graph.edges == one.graph.edges
    _close(split.values, one.values)
    assert split.ranking()[:10] == one.ranking()[:10]
    assert split.how["n"] == one.how["n"] == 5 and split.how["method"] == one.how["method"]


def test_a_resample_ablation_is_refused():
    with pytest.raises(ValueError, match="resample ablation .* cannot be split"):
        ray_eap_ig(tiny_gpt2, CLEAN, None, AblationSpec("resample", reference="r", granularity="edge"),
                   reference_inputs=MEAN_REF)
