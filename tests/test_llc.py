"""The local learning coefficient by SGLD, checked against models whose learning coefficient is known.

- Linear regression with d parameters is regular: λ = d/2. For a quadratic loss the chain's
  stationary law is also known exactly at finite nβ, γ and step size ε (a discretised
  Ornstein-Uhlenbeck process, per eigen-direction of the Hessian with rate a = nβh + γ: variance
  1 / (a (1 - εa/4))), so the full-batch estimate is compared with that value too.
- y = (w1 + w2) x has two parameters and one identifiable direction: λ = 1/2, the reduced model's.
- y = a·b·x at a = b = 0 is singular: λ = 1/2 (with multiplicity 2) where a regular two-parameter
  model has 1. The limit is approached only logarithmically in nβ/γ, so the estimate is compared
  with the exact expectation under the localised tempered posterior at the same nβ and γ, by
  quadrature (given b, a is Gaussian), and with the regular model's.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mechscope.landscape import (Component, LandscapeError, SGLDConfig, components, cross_entropy_loss,
                                 estimate_llc, estimate_llc_components, lm_loss, mse_loss, sample,
                                 select_parameters)
from mechscope.landscape import sgld
from mechscope.models.tiny import TinyConfig, TinyModel, TinyTransformer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _regression(n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g)  # noise-free: the least-squares fit is the minimum
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


def _ula_expectation(x: torch.Tensor, nbeta: float, gamma: float, eps: float) -> float:
    """E[nβ (L(w) - L(w*))] under full-batch SGLD's stationary law for L = ½ mean (x·(w - w*))²."""
    h = torch.linalg.eigvalsh((x.T @ x / x.shape[0]).double())
    a = nbeta * h + gamma
    return float((0.5 * nbeta * h / (a * (1 - eps * a / 4))).sum())


def test_regular_linear_regression_gives_d_over_2():
    d = 6
    model, x, y = _regression(1000, d)
    cfg = SGLDConfig(step_size=1e-3, localization=1.0, chains=8, draws=1500, burn_in=100, batch_size=1000)
    est = estimate_llc(model, (x, y), loss=mse_loss, config=cfg, progress=False)
    exact = _ula_expectation(x, est.nbeta, 1.0, 1e-3)
    assert est.healthy, est.warnings
    assert abs(est.llc - exact) / exact < 0.06, (est, exact)  # the chain's exact stationary value
    assert abs(est.llc - d / 2) / (d / 2) < 0.1, est  # the learning coefficient
    assert est.interval[0] < exact < est.interval[1] or abs(est.llc - exact) < 3 * est.std_error
    assert est.n_params == d and est.params == ("weight",)


def test_regular_regression_with_minibatches():
    d = 4
    model, x, y = _regression(2000, d, seed=1)
    cfg = SGLDConfig(step_size=1e-3, localization=1.0, chains=4, draws=1500, burn_in=100, batch_size=64)
    est = estimate_llc(model, (x, y), loss=mse_loss, config=cfg, progress=False)
    assert abs(est.llc - d / 2) / (d / 2) < 0.15, est


class _Sum(nn.Module):
    """y = (w1 + w2) x: two parameters, one direction the data can see."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(0.7))
        self.w2 = nn.Parameter(torch.tensor(-0.2))

    def forward(self, x):
        return (self.w1 + self.w2) * x[:, :1]


class _Product(nn.Module):
    """y = a·b·x, at a = b = 0."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.a * self.b * x[:, :1]


def _two_inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x / x.pow(2).mean(0).sqrt()  # unit second moment per column


def test_redundant_parameter_has_the_reduced_models_coefficient():
    x = _two_inputs(1000)
    cfg = SGLDConfig(step_size=1e-3, localization=1.0, chains=8, draws=1500, burn_in=100, batch_size=1000)
    summed = _Sum()
    y = summed(x).detach()
    est_sum = estimate_llc(summed, (x, y), loss=mse_loss, config=cfg, progress=False)
    regular = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        regular.weight.copy_(torch.tensor([[0.5, -1.0]]))
    est_reg = estimate_llc(regular, (x, regular(x).detach()), loss=mse_loss, config=cfg, progress=False)
    # its exact finite-nβ, γ, ε value: the design (x0, x0) has Hessian eigenvalues 2 and 0
    exact = _ula_expectation(torch.cat([x[:, :1], x[:, :1]], 1), est_sum.nbeta, 1.0, 1e-3)
    assert abs(est_sum.llc - exact) / exact < 0.08, (est_sum, exact)
    assert abs(est_sum.llc - 0.5) < 0.1 * 0.5, est_sum
    assert abs(est_reg.llc - 1.0) < 0.1, est_reg
    assert est_sum.llc < 0.6 * est_reg.llc


def _product_expectation(nbeta: float, gamma: float) -> float:
    """E[nβ·½ a²b²] under exp(-nβ ½ a²b² - γ/2 (a² + b²)) by quadrature over b (a | b is Gaussian)."""
    b = torch.linspace(-14, 14, 400_001, dtype=torch.float64) / math.sqrt(gamma)
    weight = torch.exp(-gamma * b * b / 2) / torch.sqrt(nbeta * b * b + gamma)
    inner = 0.5 * nbeta * b * b / (nbeta * b * b + gamma)
    return float((weight * inner).sum() / weight.sum())


def test_product_model_is_degenerate():
    n, gamma, eps = 2000, 2.0, 1e-3
    x = _two_inputs(n)
    y = torch.zeros(n, 1)
    cfg = SGLDConfig(step_size=eps, localization=gamma, chains=4, draws=4000, burn_in=200, batch_size=n)
    est = estimate_llc(_Product(), (x, y), loss=mse_loss, config=cfg, progress=False)
    exact = _product_expectation(est.nbeta, gamma)
    assert abs(est.llc - exact) / exact < 0.1, (est, exact)
    # the same parameter count, regular: λ = 1 (its finite-nβ, γ, ε value from the chain's stationary law)
    regular = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(regular.weight)
    est_reg = estimate_llc(regular, (x, y), loss=mse_loss, config=cfg, progress=False)
    assert abs(est_reg.llc - _ula_expectation(x, est.nbeta, gamma, eps)) < 0.06, est_reg
    assert abs(est_reg.llc - 1.0) < 0.1, est_reg
    assert est.llc < 0.4 * est_reg.llc
    # the exact finite-temperature value heads for ½ from below as nβ/γ grows
    assert exact < _product_expectation(1e6, gamma) < _product_expectation(1e9, gamma) < 0.5


def _tiny(seed: int = 0, per_head_bias: bool = True) -> TinyModel:
    torch.manual_seed(seed)
    cfg = TinyConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=11,
                     layer_norm=True, bias=per_head_bias)
    return TinyModel(TinyTransformer(cfg))


def _tokens(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 11, (n, 12), generator=torch.Generator().manual_seed(seed))


def _bits(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().view(torch.int32) for k, v in module.state_dict().items()
            if v.dtype == torch.float32}


def _same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_restored_bit_for_bit():
    model = _tiny()
    before = _bits(model.module)
    flags = {n: p.requires_grad for n, p in model.module.named_parameters()}
    est = estimate_llc(model, _tokens(), config=SGLDConfig(draws=10, chains=2, step_size=1e-3), progress=False)
    assert math.isfinite(est.llc) and est.traces.shape == (2, 10)
    assert _same_bits(before, _bits(model.module))
    assert flags == {n: p.requires_grad for n, p in model.module.named_parameters()}
    assert all(p.grad is None for p in model.module.parameters())


def test_weights_restored_when_interrupted():
    model = _tiny()
    before = _bits(model.module)
    calls = []

    def loss(m, batch):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("stop here")
        return lm_loss(m, batch)

    with pytest.raises(KeyboardInterrupt):
        estimate_llc(model, _tokens(), loss=loss, config=SGLDConfig(draws=10, chains=1), progress=False)
    assert len(calls) == 6
    assert _same_bits(before, _bits(model.module))
    assert all(p.requires_grad for p in model.module.parameters())


def test_component_sampling_moves_only_the_component():
    model = _tiny()
    module = model.module
    comps = components(model, per_head=True)
    head = comps["blocks.1.attn.0"]
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    seen = {"calls": 0, "moved": set()}

    def loss(m, batch):
        # runs before every step: check the weights the previous steps left
        for name, p in module.named_parameters():
            mask = head.params.get(name, False)
            if mask is False:  # outside the component: bit-identical
                assert torch.equal(p.detach().view(torch.int32), start[name].view(torch.int32)), name
            else:
                inside = mask if mask is not None else torch.ones_like(p, dtype=torch.bool)
                assert torch.equal(p.detach()[~inside].view(torch.int32), start[name][~inside].view(torch.int32))
                if not torch.equal(p.detach()[inside], start[name][inside]):
                    seen["moved"].add(name)
        seen["calls"] += 1
        return lm_loss(m, batch)

    est = estimate_llc(model, _tokens(), loss=loss, params=head, config=SGLDConfig(draws=5, chains=2),
                       init_loss=1.0, progress=False)
    assert seen["calls"] == 10
    assert seen["moved"] == set(head.params)  # every parameter of the head moved (inside its mask)
    # the head's share of W_Q, W_K, W_V (rows and biases) and W_O (columns)
    d_model, d_head = 16, 8
    assert est.n_params == 3 * (d_head * d_model + d_head) + d_model * d_head


def test_block_components_partition_the_parameters():
    for model in (_tiny(), TinyTransformer(TinyConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=None,
                                                      n_ctx=4, d_vocab=5, layer_norm=False, pos_embed=False))):
        comps = components(model)
        names = [n for c in comps.values() for n in c.params]
        module = getattr(model, "module", model)
        assert sorted(names) == sorted(n for n, _ in module.named_parameters())
        assert all(c.params[n] is None for c in comps.values() for n in c.params)
    assert [n for n in components(_tiny())][:3] == ["embed", "blocks.0.attn", "blocks.0.mlp"]


def test_per_component_estimates():
    model = _tiny()
    cfg = SGLDConfig(draws=8, chains=2, step_size=1e-4)
    per = estimate_llc_components(model, _tokens(), components=["blocks.0.attn", "unembed"], config=cfg,
                                  progress=False)
    assert list(per) == ["blocks.0.attn", "unembed"]
    assert per["unembed"].params == ("unembed.weight", "unembed.bias")
    assert per["blocks.0.attn"].init_loss == per["unembed"].init_loss
    assert per["unembed"].component == "unembed"
    with pytest.raises(LandscapeError, match="no component 'mlp'"):
        estimate_llc_components(model, _tokens(), components=["mlp"], config=cfg, progress=False)


def test_generic_module_components_and_classification_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    assert list(components(net)) == ["0", "2"]
    x = torch.randn(200, 3)
    y = (x[:, 0] > 0).long()
    est = estimate_llc(net, (x, y), loss=cross_entropy_loss, params=components(net)["2"],
                       config=SGLDConfig(draws=20, chains=2, step_size=1e-4), progress=False)
    assert est.params == ("2.weight", "2.bias") and est.n_params == 18


def test_lm_loss_is_the_mean_next_token_cross_entropy():
    from mechscope.core.metrics import next_token_loss

    model = _tiny()
    ids = _tokens(8)
    with torch.no_grad():
        logits = model.module(ids)
    per_prompt = next_token_loss(ids)(logits)  # equal lengths: the mean over prompts is the mean over tokens
    assert torch.allclose(lm_loss(model, ids), per_prompt.mean(), atol=1e-6)
    assert torch.allclose(lm_loss(model.module, ids), per_prompt.mean(), atol=1e-6)


def test_seeded_and_deterministic():
    model, x, y = _regression(200, 3)
    cfg = SGLDConfig(step_size=1e-3, localization=1.0, chains=2, draws=50, batch_size=20, seed=3)
    a = estimate_llc(model, (x, y), loss=mse_loss, config=cfg, progress=False)
    b = estimate_llc(model, (x, y), loss=mse_loss, config=cfg, progress=False)
    c = estimate_llc(model, (x, y), loss=mse_loss, config=SGLDConfig(**{**cfg.to_dict(), "seed": 4}),
                     progress=False)
    assert torch.equal(a.traces, b.traces) and a.llc == b.llc
    assert not torch.equal(a.traces, c.traces)
    assert a.per_chain[0] != a.per_chain[1]  # chains differ by their noise
    # the burn-in is left out of the estimate, the traces keep it
    d = estimate_llc(model, (x, y), loss=mse_loss, config=SGLDConfig(**{**cfg.to_dict(), "burn_in": 10}),
                     progress=False)
    assert d.traces.shape == (2, 60)
    expected = d.nbeta * (d.traces[:, 10:].mean(1) - d.init_loss)
    assert torch.allclose(torch.tensor(d.per_chain, dtype=torch.float64), expected)


def test_health_warnings():
    model, x, y = _regression(500, 3)
    # w* moved off the minimum: the chains find lower loss, and the estimate is negative
    with torch.no_grad():
        model.weight.add_(0.5)
    est = estimate_llc(model, (x, y), loss=mse_loss, progress=False,
                       config=SGLDConfig(step_size=1e-3, localization=0.1, chains=2, draws=200))
    assert est.llc < 0 and any("negative estimate" in w for w in est.warnings) and not est.healthy
    # a step size far past stability: the loss overflows and the chains stop
    model, x, y = _regression(500, 3)
    # the weights before sampling, kept bit for bit (a second least-squares solve need not agree in
    # the last bits with the first one on every machine)
    before = {"w": model.weight.detach().clone().view(torch.int32)}
    est = estimate_llc(model, (x, y), loss=mse_loss, progress=False,
                       config=SGLDConfig(step_size=1.0, chains=2, draws=300))
    assert any("non-finite" in w or "diverging" in w for w in est.warnings), est.warnings
    assert _same_bits(before, {"w": model.weight.detach().clone().view(torch.int32)})


def test_bad_input():
    model, x, y = _regression(100, 3)
    with pytest.raises(LandscapeError, match="no parameters selected"):
        estimate_llc(model, (x, y), loss=mse_loss, params=[], progress=False)
    with pytest.raises(LandscapeError, match="no parameters selected"):
        estimate_llc(model, (x, y), loss=mse_loss, params=lambda n, p: False, progress=False)
    with pytest.raises(LandscapeError, match="nearest: weight"):
        select_parameters(model, ["weigth"])
    with pytest.raises(LandscapeError, match="one string"):
        select_parameters(model, "weight")
    with pytest.raises(LandscapeError, match="no parameters selected"):
        select_parameters(model, Component("none", {"weight": torch.zeros(1, 3, dtype=torch.bool)}))
    with pytest.raises(LandscapeError, match="bool tensor"):
        select_parameters(model, {"weight": torch.ones(3)})
    with pytest.raises(LandscapeError, match="needs loss"):
        estimate_llc(model, (x, y), progress=False)
    with pytest.raises(LandscapeError, match="share their first dimension"):
        estimate_llc(model, (x, y[:50]), loss=mse_loss, progress=False)
    bad_y = y.clone()
    bad_y[3] = float("nan")
    with pytest.raises(LandscapeError, match="starting weights"):
        estimate_llc(model, (x, bad_y), loss=mse_loss, progress=False)
    with pytest.raises(LandscapeError, match="0-dim"):
        sample(lambda b: (model(b[0]) - b[1]).pow(2), model, (x, y), SGLDConfig(draws=2, chains=1), progress=False)
    for bad in ({"step_size": 0}, {"localization": -1}, {"chains": 0}, {"draws": 1.5}, {"nbeta": float("nan")}):
        with pytest.raises(LandscapeError):
            SGLDConfig(**bad)
    with pytest.raises(LandscapeError, match="n / log n"):
        SGLDConfig().nbeta_for(1)


def test_hugging_face_components_follow_the_spec():
    import transformers as tf

    import mechscope as ms

    torch.manual_seed(0)
    gpt2 = ms.wrap(tf.GPT2LMHeadModel._from_config(
        tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16),
        attn_implementation="eager").eval())
    llama = ms.wrap(tf.LlamaForCausalLM._from_config(
        tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=50), attn_implementation="eager").eval())
    for model, attn, mlp in ((gpt2, "attn.c_attn.weight", "mlp.c_fc.weight"),
                             (llama, "self_attn.q_proj.weight", "mlp.gate_proj.weight")):
        comps = components(model)
        assert [k for k in comps if k.startswith("blocks.1")] == ["blocks.1.attn", "blocks.1.mlp", "blocks.1.norms"]
        assert any(n.endswith("1." + attn) for n in comps["blocks.1.attn"].params)
        assert any(n.endswith("1." + mlp) for n in comps["blocks.1.mlp"].params)
        assert all("ln" in n or "norm" in n for n in comps["blocks.1.norms"].params)
        names = {n for c in comps.values() for n in c.params}
        assert names == {n for n, _ in model.module.named_parameters()}  # every parameter has a component
    # GPT-2 ties its unembedding to the token embedding: the same parameter in both components
    assert _shares_embedding(gpt2)
    ids = torch.randint(0, 50, (16, 8), generator=torch.Generator().manual_seed(0))
    before = _bits(llama.module)
    per = estimate_llc_components(llama, ids, components=["blocks.0.mlp"], config=SGLDConfig(draws=4, chains=1),
                                  progress=False)
    assert math.isfinite(per["blocks.0.mlp"].llc) and per["blocks.0.mlp"].n_params == 3 * 32 * 64
    assert _same_bits(before, _bits(llama.module))


def _shares_embedding(model) -> bool:
    comps = components(model)
    return set(comps["embed"].params) & set(comps["unembed"].params) == {"transformer.wte.weight"}


def test_the_fused_sgld_step_equals_a_per_parameter_loop_bit_for_bit():
    """`_step` updates the whole list with `torch._foreach_*`; a plain loop over the parameters, drawing
    the noise in the same order, gives the same bits after several steps (masked and unmasked entries,
    with and without the pull to the origin, a parameter without a gradient)."""
    from mechscope.landscape.sgld import _step, select_parameters

    def reference(params, masks, grads, origin, nbeta, eps, gamma, gen):
        with torch.no_grad():
            for p, mask, g, o in zip(params, masks, grads, origin):
                drift = (g if g is not None else torch.zeros_like(p)) * nbeta
                if gamma:
                    drift = drift + (p - o) * gamma
                w = p.detach().clone()
                w.add_(drift, alpha=-0.5 * eps)
                w.add_(torch.normal(0.0, 1.0, size=p.shape, generator=gen, dtype=p.dtype), alpha=eps ** 0.5)
                p.copy_(w if mask is None else torch.where(mask, w, p))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    twin = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    twin.load_state_dict(net.state_dict())
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    chosen = {"0.weight": mask, "0.bias": None, "1.weight": None, "1.bias": None}
    selected = select_parameters(net, chosen)
    mine = [dict(twin.named_parameters())[n] for n in chosen]
    origin = [s.param.detach().clone() for s in selected]
    grad_gen = torch.Generator().manual_seed(2)
    for gamma in (100.0, 0.0):
        gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for step in range(4):
            grads = [torch.randn(p.shape, generator=grad_gen) for p in mine]
            grads[3] = None if step % 2 else grads[3]  # sometimes no gradient reaches a parameter
            for s, g in zip(selected, grads):
                s.param.grad = None if g is None else g.clone()
            _step(selected, origin, 37.5, 1e-3, gamma, gen_a)
            reference(mine, list(chosen.values()), grads, origin, 37.5, 1e-3, gamma, gen_b)
            for s, p in zip(selected, mine):
                assert torch.equal(s.param, p), (gamma, step, s.name)
                assert s.param.grad is None
    w0 = origin[0]
    assert torch.equal(net[0].weight[~mask], w0[~mask]) and not torch.equal(net[0].weight[mask], w0[mask])


def test_the_stacked_sgld_step_equals_the_per_chain_step_bit_for_bit():
    """`_step_stacked` updates every chain's row of stacked weights at once; `_step` on each chain's own
    copy, with the same gradients and the chain's generator, gives the same bits (a masked and an
    unmasked parameter, with and without the pull, a stopped chain that keeps its weights)."""
    from mechscope.landscape.sgld import _step, _step_stacked, select_parameters

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    chosen = {"0.weight": mask, "0.bias": None, "1.weight": None}
    selected = select_parameters(net, chosen)
    origin = [s.param.detach().clone() for s in selected]
    chains = 3
    stacked = [w0.unsqueeze(0).repeat(chains, *([1] * w0.dim())) for w0 in origin]
    masks = [None if s.mask is None else s.mask.unsqueeze(0) for s in selected]
    grad_gen = torch.Generator().manual_seed(2)
    for gamma in (100.0, 0.0):
        gens = [torch.Generator().manual_seed(10 + c) for c in range(chains)]
        twins = [torch.Generator().manual_seed(10 + c) for c in range(chains)]
        per_chain = [[w[c].clone() for w in stacked] for c in range(chains)]
        for step in range(4):
            active = [True, step < 2, True]  # chain 1 stops after two steps
            grads = [torch.randn(w.shape, generator=grad_gen) for w in stacked]
            _step_stacked(stacked, grads, origin, masks, active, 37.5, 1e-3, gamma, gens)
            for c in range(chains):
                if not active[c]:
                    continue
                with torch.no_grad():
                    for s, w in zip(selected, per_chain[c]):
                        s.param.copy_(w)
                for s, g in zip(selected, grads):
                    s.param.grad = g[c].clone()
                _step(selected, origin, 37.5, 1e-3, gamma, twins[c])
                per_chain[c] = [s.param.detach().clone() for s in selected]
            for c in range(chains):
                for w, mine in zip(stacked, per_chain[c]):
                    assert torch.equal(w[c], mine), (gamma, step, c)


@pytest.mark.parametrize("shared", [True, False])
def test_vectorized_chains_equal_the_loop(shared):
    """All chains in one vmapped pass give the losses of the chain-after-chain loop up to float rounding:
    the whole model, a head's masked rows, a component; shared and per-chain minibatches. The weights
    come back bit for bit."""
    model = _tiny()
    ids = _tokens()
    before = _bits(model.module)
    heads = components(model, per_head=True)
    cfg = SGLDConfig(chains=3, draws=12, batch_size=8, step_size=1e-3, shared_batches=shared)
    loss = lambda b: lm_loss(model, b)  # noqa: E731

    def no_loop(*args, **kwargs):
        raise AssertionError("the vectorised pass fell back to the loop")

    for params in (None, heads["blocks.1.attn.0"], heads["unembed"]):
        loop = sample(loss, model.module, ids, cfg, params, progress=False)
        with pytest.MonkeyPatch.context() as mp:  # the vmapped pass itself, not the loop, gives these losses
            mp.setattr(sgld, "_sample_sequential", no_loop)
            vec = sample(loss, model.module, ids, cfg, params, progress=False, vectorize=True)
        assert vec.stopped == loop.stopped == (None, None, None)
        assert vec.sampled == loop.sampled and vec.n_sampled == loop.n_sampled
        assert torch.allclose(vec.losses, loop.losses, rtol=0, atol=1e-5), float((vec.losses - loop.losses).abs().max())
        assert not torch.equal(vec.losses[0], vec.losses[1])  # the chains differ by their noise
        assert _same_bits(before, _bits(model.module))
        assert all(p.requires_grad and p.grad is None for p in model.module.parameters())
    if shared:
        est = estimate_llc(model, ids, config=cfg, progress=False, vectorize=True)
        ref = estimate_llc(model, ids, config=cfg, progress=False)
        assert est.llc == pytest.approx(ref.llc, rel=1e-4)


def test_vectorized_chains_stop_like_the_loop():
    """A step size that makes the chains blow up: each chain stops at the step the loop's chain stops at,
    NaN after it, and the others go on."""
    model, x, y = _regression(200, 3)
    cfg = SGLDConfig(step_size=0.5, localization=0.0, nbeta=200.0, chains=3, draws=40, batch_size=20)
    loop = sample(lambda b: mse_loss(model, b), model, (x, y), cfg, progress=False)
    vec = sample(lambda b: mse_loss(model, b), model, (x, y), cfg, progress=False, vectorize=True)
    assert all(s is not None for s in loop.stopped)
    assert vec.stopped == loop.stopped
    assert torch.equal(torch.isnan(vec.losses), torch.isnan(loop.losses))


def test_vectorized_falls_back_to_the_loop(monkeypatch, capsys):
    """A loss vmap cannot run (a random op, `.item()`), or minibatches of different sizes per chain: the
    chains run one after another, with a note, and give the loop's results exactly."""
    monkeypatch.setenv("MECHSCOPE_PROGRESS", "lines")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    cfg = SGLDConfig(step_size=1e-4, chains=2, draws=10, batch_size=8)

    def with_item(b):
        value = mse_loss(net, b)
        if value.item() < 0:  # data-dependent control flow
            raise AssertionError
        return value

    for loss, mode in ((lambda b: mse_loss(net, b), "train"), (with_item, "eval")):
        getattr(net, mode)()
        torch.manual_seed(1)
        vec = sample(loss, net, (x, y), cfg, progress=False, vectorize=True)
        torch.manual_seed(1)
        loop = sample(loss, net, (x, y), cfg, progress=False)
        assert torch.equal(vec.losses, loop.losses)
        assert "the chains run one after another (the loss cannot be vmapped" in capsys.readouterr().err
    net.eval()
    sizes = lambda chain: iter([torch.arange(4 + chain)] * 10)  # noqa: E731
    vec = sample(lambda b: mse_loss(net, b), net, (x, y), cfg, batches=sizes, progress=False, vectorize=True)
    loop = sample(lambda b: mse_loss(net, b), net, (x, y), cfg, batches=sizes, progress=False)
    assert torch.equal(vec.losses, loop.losses)
    assert "minibatches differ in size at step 0" in capsys.readouterr().err
    # sizes that part ways after two steps, from iterators that can be read once: the loop takes over
    # and replays what the vmapped pass had drawn
    orders = [[torch.arange(8)] * 10, [torch.arange(8)] * 2 + [torch.arange(7)] * 8]
    once = [iter(o) for o in orders]
    vec = sample(lambda b: mse_loss(net, b), net, (x, y), cfg, batches=lambda c: once[c], progress=False,
                 vectorize=True)
    loop = sample(lambda b: mse_loss(net, b), net, (x, y), cfg, batches=lambda c: iter(orders[c]), progress=False)
    assert torch.equal(vec.losses, loop.losses)
    assert "minibatches differ in size at step 2" in capsys.readouterr().err
