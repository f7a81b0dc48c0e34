"""Attribution patching agrees with real patching where the linear approximation is exact."""

import pytest
import torch

from mechscope.causal import activation_patching, attribution_patching
from mechscope.core.site import Kind, Site
from test_activation_patching import CLEAN, CORRUPT, MODELS, metric


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_exact_where_the_metric_is_linear(family):
    # the metric is a difference of logits: linear in the logits site, so first order is exact
    model = MODELS[family]
    site = [Site(Kind.LOGITS)]
    est = attribution_patching(model, CLEAN, CORRUPT, site, metric)
    real = activation_patching(model, CLEAN, CORRUPT, site, metric, progress=False)
    torch.testing.assert_close(est.values, real.values, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_shapes_match_activation_patching_and_estimates_track_real_effects(direction):
    model = MODELS["gpt2"]
    sites = [Site(Kind.RESID_PRE, 1), Site(Kind.Z, 0), Site(Kind.PATTERN, 1)]
    est = attribution_patching(model, CLEAN, CORRUPT, sites, metric, direction=direction)
    real = activation_patching(model, CLEAN, CORRUPT, sites, metric, direction=direction, progress=False)
    assert est.values.shape == real.values.shape
    assert torch.equal(torch.isnan(est.values), torch.isnan(real.values))
    ok = ~torch.isnan(real.values)
    e, r = est.values[ok] - est.baseline.repeat(ok.sum() // 2), real.values[ok] - real.baseline.repeat(ok.sum() // 2)
    # a random tiny model is close to linear at this scale: the estimates follow the real effects
    assert torch.corrcoef(torch.stack([e, r]))[0, 1] > 0.9
    assert est.how["method"].startswith("attribution")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pass_counts_are_the_passes_that_ran(family):
    # counted a second way: a hook on the network itself sees every forward call, and one on its
    # unembedding every backward pass that reaches it
    model = MODELS[family]
    forward, backward = [], []
    hooks = [model.register_forward_pre_hook(lambda m, args: forward.append(1)),
             model.lm_head.register_full_backward_pre_hook(lambda m, grad: backward.append(1))]
    try:
        est = attribution_patching(model, CLEAN, CORRUPT, [Site(Kind.Z, 0), Site(Kind.RESID_PRE, 1)], metric)
    finally:
        for h in hooks:
            h.remove()
    assert (est.forward_passes, est.how["backward_passes"]) == (len(forward), len(backward)) == (2, 1)


def test_a_plain_module_returning_a_bare_tensor():
    # the generic adapter's output is the logits tensor itself (no .logits attribute)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    clean, corrupt = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[7, 8, 9], [0, 1, 2]])
    site = [Site.module("2")]  # the last layer's output: the metric is linear there, so first order is exact
    ld = lambda logits: logits[:, -1, 3] - logits[:, -1, 4]  # noqa: E731
    est = attribution_patching(net, clean, corrupt, site, ld, each_position=False)
    real = activation_patching(net, clean, corrupt, site, ld, each_position=False, progress=False)
    torch.testing.assert_close(est.values, real.values, atol=1e-5, rtol=1e-5)
