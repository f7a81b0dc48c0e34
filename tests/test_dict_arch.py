"""Dictionary architectures: sparse products equal dense ones (values and gradients), the JumpReLU
straight-through gradients match their formulas, scale folding is exact, dead latents come back,
and every architecture recovers known directions from toy data."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mechscope.dictionaries as dl
from mechscope.dictionaries.sparse import SparseCodes, batch_topk_codes, sparse_decode, topk_codes
from mechscope.dictionaries.toy import ToyFeatures


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sparse_decode_and_its_gradients_equal_the_dense_product():
    B, S, D, k = 7, 30, 5, 4
    W = torch.randn(S, D, generator=_g(0), dtype=torch.float64, requires_grad=True)
    vals = torch.randn(B, k, generator=_g(1), dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(S, generator=_g(2 + b))[:k] for b in range(B)])
    codes = SparseCodes.from_topk(vals, idx, S)
    out = sparse_decode(codes, W)
    dense = torch.zeros(B, S, dtype=torch.float64).scatter(1, idx, vals)
    ref = dense @ W
    assert torch.allclose(out, ref, atol=1e-12)
    g = torch.randn(B, D, generator=_g(9), dtype=torch.float64)
    gv, gW = torch.autograd.grad(out, (vals, W), g)
    rv, rW = torch.autograd.grad(ref, (vals, W), g)
    assert torch.allclose(gv, rv, atol=1e-12) and torch.allclose(gW, rW, atol=1e-12)
    assert torch.equal(codes.dense(), dense.detach()) and torch.equal(codes.l0(), torch.full((B,), k))


@pytest.mark.parametrize("select", ["topk", "batchtopk"])
def test_sparse_encoder_gradients_equal_a_dense_reference(select):
    B, D, S, k = 9, 6, 25, 3
    x = torch.randn(B, D, generator=_g(0), dtype=torch.float64, requires_grad=True)
    W = torch.randn(D, S, generator=_g(1), dtype=torch.float64, requires_grad=True)
    b = torch.randn(S, generator=_g(2), dtype=torch.float64, requires_grad=True)
    fn = topk_codes if select == "topk" else batch_topk_codes
    codes = fn(x, W, b, k)
    dense = codes.dense()
    pre = x @ W + b
    mask = dense != 0
    if select == "topk":
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.topk(k, 1).indices, True)
    else:
        flat = pre.detach().reshape(-1)
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter(0, flat.topk(B * k).indices, True).reshape(B, S)
    ref = torch.where(keep, pre.relu(), torch.zeros_like(pre))
    assert torch.allclose(dense, ref, atol=1e-12) and torch.equal(mask, ref != 0)
    g = torch.randn(B, S, generator=_g(3), dtype=torch.float64)
    got = torch.autograd.grad(dense, (x, W, b), g)
    want = torch.autograd.grad(ref, (x, W, b), g)
    for a, c in zip(got, want):
        assert torch.allclose(a, c, atol=1e-12)
    if select == "batchtopk":
        assert int((codes.values != 0).sum()) <= B * k and codes.l0().sum() == (ref != 0).sum()


ARCHS = {  # the defaults, with k and the penalties sized for toy data with 3 active directions per row
    "relu": dict(l1_coefficient=1.0),
    "topk": dict(k=3),
    "batchtopk": dict(k=3),
    "jumprelu": dict(l0_coefficient=1.0),
}


CROSS = dict(d_in=4, n_sources=2, d_sae=32, k=3)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "transcoder", "crosscoder", "batchtopk-crosscoder"])
def test_whole_loss_gradients_equal_a_dense_reimplementation(arch):
    """The k-sparse training loss (with the auxiliary-k term) against a plain dense formula."""
    kw = {"transcoder": dict(d_in=8, d_out=6, d_sae=32, k=3), "crosscoder": CROSS, "batchtopk-crosscoder": CROSS}
    d = dl.build(arch, **kw.get(arch, dict(d_in=8, d_sae=32, k=3)), aux_k=5).double()
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=_g(p.numel()), dtype=p.dtype))
    x = torch.randn(10, d.config.in_width, generator=_g(1), dtype=torch.float64)
    y = x if d.config.apply_b_dec_to_input else torch.randn(10, d.config.out_width, generator=_g(2), dtype=torch.float64)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[::4] = True
    out = d.loss(x, y, dead)
    got = torch.autograd.grad(out.total, list(d.parameters()))
    # dense reference
    xc = x - d.b_dec if d.config.apply_b_dec_to_input else x
    pre = xc @ d.W_enc + d.b_enc
    if arch in ("batchtopk", "batchtopk-crosscoder"):
        flat = pre.detach().reshape(-1)
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter(0, flat.topk(10 * 3).indices, True).reshape(pre.shape)
    else:
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.detach().topk(3, 1).indices, True)
    codes = torch.where(keep, pre.relu(), torch.zeros_like(pre))
    recon = codes @ d.W_dec + d.b_dec
    mse = (recon - y).pow(2).sum(-1).mean()
    pre_aux = xc.detach() @ d.W_enc + d.b_enc
    keep_aux = torch.zeros_like(pre, dtype=torch.bool).scatter(
        1, pre_aux.detach().masked_fill(~dead, float("-inf")).topk(5, 1).indices, True)
    e_hat = torch.where(keep_aux, pre_aux.relu(), torch.zeros_like(pre)) @ d.W_dec
    aux = (e_hat - (y - recon).detach()).pow(2).sum(-1).mean()
    want = torch.autograd.grad(mse + d.config.aux_coefficient * aux, list(d.parameters()))
    assert torch.allclose(out.total, mse + d.config.aux_coefficient * aux)
    for (name, _), a, b in zip(d.named_parameters(), got, want):
        assert torch.allclose(a, b, atol=1e-10), name


def test_jumprelu_straight_through_gradients_follow_their_formulas():
    d = dl.build("jumprelu", d_in=3, d_sae=4, bandwidth=0.5, initial_threshold=1.0, apply_b_dec_to_input=False).double()
    with torch.no_grad():
        d.W_enc.copy_(torch.eye(3, 4, dtype=torch.float64))
        d.b_enc.zero_()
    x = torch.tensor([[1.1, 0.9, 2.0]], dtype=torch.float64)  # pre = (1.1, 0.9, 2.0, 0)
    d.set_threshold_(torch.tensor([1.2, 1.0, 1.0, 3.0], dtype=torch.float64))
    codes = d.encode(x)
    assert torch.equal(codes, torch.tensor([[0.0, 0.0, 2.0, 0.0]], dtype=torch.float64))
    (g,) = torch.autograd.grad(codes.sum(), d.log_threshold)
    # -(θ/ε) K((pre-θ)/ε): inside the window |pre-θ| < ε/2 = 0.25 for latents 0 and 1 only; θ is
    # learned as log θ, so its gradient is θ times that: -(1.2 / 0.5) · 1.2 and -(1 / 0.5) · 1
    assert torch.allclose(g, torch.tensor([-2.88, -2.0, 0.0, 0.0], dtype=torch.float64))
    # the L0 penalty's pseudo-derivative: -(1/ε) K((pre-θ)/ε), times λ
    d2 = dl.build("jumprelu", d_in=3, d_sae=4, bandwidth=0.5, initial_threshold=1.0, l0_coefficient=0.25,
                  apply_b_dec_to_input=False).double()
    with torch.no_grad():
        d2.W_enc.copy_(torch.eye(3, 4, dtype=torch.float64))
        d2.b_enc.zero_()
        d2.W_dec.zero_()
        d2.b_dec.zero_()
        d2.set_threshold_(torch.tensor([0.5, 0.8, 1.0, 1.0], dtype=torch.float64))
    out = d2.loss(x, torch.zeros(1, 3, dtype=torch.float64))
    assert float(out.parts["l0_penalty"]) == 3.0  # latents 0, 1 and 2 are open
    (gt,) = torch.autograd.grad(out.total, d2.log_threshold)
    # λ · -(1/ε) K((pre-θ)/ε) · θ: only latent 1 (pre 0.9, θ 0.8) is inside its window: 0.25 · -2 · 0.8
    assert torch.allclose(gt, torch.tensor([0.0, -0.4, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        d.set_threshold_(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    d.log_threshold.data.fill_(-30.0)
    d.constrain_()
    assert float(d.threshold.min()) > 0  # θ = exp(log θ) is positive


@pytest.mark.parametrize("arch", list(ARCHS) + ["transcoder", "relu_transcoder", "crosscoder", "batchtopk-crosscoder"])
def test_folding_the_input_scale_is_exact_in_the_codes(arch):
    kw = {"transcoder": dict(d_in=8, d_out=6, d_sae=20, k=3), "relu_transcoder": dict(d_in=8, d_out=6, d_sae=20),
          "crosscoder": dict(d_in=4, n_sources=2, d_sae=20, k=3),
          "batchtopk-crosscoder": dict(d_in=4, n_sources=2, d_sae=20, k=3)}
    d = dl.build(arch, **(kw[arch] if arch in kw else dict(d_in=8, d_sae=20, **ARCHS[arch]))).double().eval()
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=_g(1), dtype=p.dtype))
        if isinstance(d, dl.BatchTopKSAE):
            d.threshold.fill_(0.1)
        if arch == "jumprelu":
            d.set_threshold_(0.3 * torch.rand(20, generator=_g(3), dtype=p.dtype) + 0.05)
    x = torch.randn(12, *d.in_shape, generator=_g(2), dtype=torch.float64)
    s_in, s_out = 3.0, (3.0 if d.config.apply_b_dec_to_input else 0.5)
    if hasattr(d, "input_mean"):  # a centred encoder: trained on (x - μ) s_in, μ folded in with the scale
        mu = torch.randn(d.input_mean.shape, generator=_g(4), dtype=torch.float64)
        d.input_mean.copy_(mu * s_in)
        x = x + mu
    with torch.no_grad():
        codes, recon = d.encode(x * s_in), d(x * s_in)
        d.fold_scale_(s_in, s_out)
        assert torch.allclose(d.encode(x), codes, atol=1e-12)
        assert torch.allclose(d(x), recon / s_out, atol=1e-12)


def _toy(seed: int = 0):
    tf = ToyFeatures.make(d=32, n_features=48, mean_active=3, decay=4, seed=seed)
    return tf, tf.sample(60_000, seed=1), tf.sample(4096, seed=2)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_architecture_recovers_known_directions(arch):
    tf, X, H = _toy()
    d = dl.build(arch, d_in=32, d_sae=64, **ARCHS[arch], seed=0)
    assert dl.mmcs(tf.directions, d) < 0.6  # initial weights share no generator with the toy data
    res = dl.train(d, dl.batches_from_tensors(X, batch_size=512, seed=0),
                   dl.TrainConfig(tokens=800_000, batch_size=512, lr=2e-3, resample_every=100), held_out=H,
                   progress=False)
    m = dl.evaluate(d, H)
    assert dl.mmcs(tf.directions, d) > 0.9, (arch, dl.mmcs(tf.directions, d))
    assert m.fvu < 0.25 and abs(m.fvu - res.curve[-1]["held_out_fvu"]) < 1e-4
    assert res.curve[-1]["step"] == 800_000 // 512 and res.tokens == (800_000 // 512) * 512


@pytest.mark.parametrize("arch", ["crosscoder", "batchtopk-crosscoder"])
def test_a_crosscoder_over_two_views_finds_shared_and_exclusive_latents(arch):
    """Source 1 is a rotated copy of source 0 plus directions of its own: shared latents have
    decoder norm in both sources, exclusive ones only in source 1. With BatchTopK codes, rows keep
    different numbers of latents in training and about k on average at inference."""
    tf, X, _ = _toy()
    g = _g(5)
    Q = torch.linalg.qr(torch.randn(32, 32, generator=g))[0]
    own = ToyFeatures.make(d=32, n_features=8, mean_active=0.5, decay=1, seed=9)
    X1 = X @ Q + own.sample(X.shape[0], seed=3)
    pair = torch.stack([X, X1], dim=1)
    cc = dl.build(arch, d_in=32, n_sources=2, d_sae=96, k=5, seed=2)
    dl.train(cc, dl.batches_from_tensors(pair, batch_size=512), dl.TrainConfig(tokens=240_000, batch_size=512, lr=2e-3),
             progress=False)
    rel = cc.relative_norms()
    exclusive = dl.cosines(own.directions, cc.W_dec.detach()[:, 32:]).max(1).indices  # best latent per own direction
    assert float(rel[exclusive].median()) > 0.9
    shared = dl.cosines(tf.directions[:16], cc.W_dec.detach()[:, :32]).max(1).indices
    assert 0.3 < float(rel[shared].median()) < 0.7
    if arch == "batchtopk-crosscoder":
        l0 = (cc.encode(pair[:4096]) > 0).float().sum(1)
        assert 5 * 0.85 < float(l0.mean()) < 5 * 1.15 and float(l0.std()) > 0.5
        cc.train()
        rows = cc.loss(cc._flat(pair[:512]), cc._flat(pair[:512])).codes.l0()
        assert int(rows.sum()) == 512 * 5 and int(rows.min()) < 5 < int(rows.max())


def test_auxiliary_k_revives_dead_latents_and_its_absence_does_not():
    tf, X, H = _toy()
    dead_frac = {}
    for coef in (0.0, 1 / 32):
        d = dl.build("topk", d_in=32, d_sae=64, k=3, aux_coefficient=coef, seed=1)
        with torch.no_grad():
            d.W_enc[:, :32] *= 0.01  # half the latents start too weak ever to win the top-k
        dl.train(d, dl.batches_from_tensors(X, batch_size=512), dl.TrainConfig(
            tokens=150_000, batch_size=512, lr=2e-3, dead_after_tokens=5_000, normalise=False), progress=False)
        dead_frac[coef] = dl.evaluate(d, H).dead_fraction
    assert dead_frac[0.0] >= 0.45 and dead_frac[1 / 32] < 0.2, dead_frac


def test_resampling_revives_dead_relu_latents():
    tf, X, H = _toy()
    out = {}
    for every in (None, 50):
        d = dl.build("relu", d_in=32, d_sae=64, l1_coefficient=1.0, seed=1)
        with torch.no_grad():
            d.b_enc[:32] = -50.0
        dl.train(d, dl.batches_from_tensors(X, batch_size=512), dl.TrainConfig(
            tokens=100_000, batch_size=512, lr=2e-3, dead_after_tokens=5_000, resample_every=every,
            normalise=False), progress=False)
        out[every] = dl.evaluate(d, H).dead_fraction
    assert out[None] >= 0.45 and out[50] < 0.2, out


def test_configs_are_checked_on_creation():
    with pytest.raises(ValueError, match="k must be"):
        dl.TopKConfig(d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="apply_b_dec_to_input"):
        dl.TopKConfig(d_in=4, d_out=5, d_sae=8, k=2)
    with pytest.raises(ValueError, match="needs d_out"):
        dl.TranscoderConfig(d_in=4, d_sae=8, k=2)
    with pytest.raises(ValueError, match="n_sources"):
        dl.CrosscoderConfig(d_in=4, d_sae=8, k=2, n_sources=1)
    with pytest.raises(ValueError, match="lr"):
        dl.TrainConfig(tokens=10, lr=0)
    with pytest.raises(KeyError, match="known: relu, topk"):
        dl.build("gated", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="trailing shape"):
        dl.build("topk", d_in=4, d_sae=8, k=2)(torch.zeros(3, 5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        dl.TopKConfig(d_in=4, d_sae=8, k=2).k = 3


def test_sparse_decode_of_rows_of_different_lengths_in_any_order():
    S, D = 12, 4
    W = torch.randn(S, D, generator=_g(0), dtype=torch.float64, requires_grad=True)
    latents = torch.tensor([5, 1, 9, 3, 0, 11, 2])  # rows of 3, 0, 1 and 3 entries, unsorted within rows
    offsets = torch.tensor([0, 3, 3, 4, 7])
    vals = torch.randn(7, generator=_g(1), dtype=torch.float64, requires_grad=True)
    codes = SparseCodes(vals, latents, offsets, S)
    out = sparse_decode(codes, W)
    dense = codes.dense()
    ref = dense @ W
    g = torch.randn(4, D, generator=_g(2), dtype=torch.float64)
    assert torch.allclose(out, ref, atol=1e-12) and torch.equal(out[1], torch.zeros(D, dtype=torch.float64))
    for a, b in zip(torch.autograd.grad(out, (vals, W), g), torch.autograd.grad(ref, (vals, W), g)):
        assert torch.allclose(a, b, atol=1e-12)
    assert codes.l0().tolist() == [3, 0, 1, 3]


def test_batchtopk_inference_threshold_keeps_about_k_per_row():
    # after training, the global threshold is set from the final weights: at inference a row keeps
    # about k latents on average, as batch top-k did in training (a lagging running mean kept fewer)
    tf = ToyFeatures.make(d=32, n_features=64, mean_active=4.0, decay=5.0, seed=0)

    def batches():
        i = 0
        while True:
            yield (tf.sample(512, seed=i),)
            i += 1

    d = dl.build("batchtopk", d_in=32, d_sae=128, k=6, seed=0)
    dl.train(d, batches(), dl.TrainConfig(tokens=60_000, batch_size=512), progress=False)
    x = tf.sample(4096, seed=10**6)
    d.eval()
    l0 = float((d.encode(x) > 0).float().sum(1).mean())
    assert 6 * 0.85 < l0 < 6 * 1.15


def test_batches_larger_than_the_rows_are_refused():
    with pytest.raises(ValueError, match="between 1 and the number of rows"):
        next(dl.batches_from_tensors(torch.zeros(64, 4), batch_size=4096))


@pytest.mark.parametrize("arch", ["relu", "relu_transcoder"])
@pytest.mark.parametrize("dense_above", [-1.0, 2.0], ids=["dense-step", "sparse-step"])
def test_relu_training_step_equals_the_dense_formula(arch, dense_above, monkeypatch):
    """The ReLU step keeps the positive entries as compressed rows (or dense codes while many are
    positive): its loss and every gradient equal ||y - ReLU(pre) W_dec - b_dec||² + λ s Σ codes ||W_dec||
    computed densely by hand, the centring (decoder bias or μ) included."""
    from mechscope.dictionaries import relu as relu_module

    monkeypatch.setattr(relu_module, "DENSE_ABOVE", dense_above)
    kw = dict(d_in=16, d_sae=40, l1_coefficient=0.7) | ({"d_out": 12} if arch == "relu_transcoder" else {})
    d = dl.build(arch, **kw).double()
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=_g(5), dtype=p.dtype))
        if arch == "relu_transcoder":
            d.input_mean.copy_(torch.randn(16, generator=_g(6), dtype=torch.float64))
    x = torch.randn(30, 16, generator=_g(7), dtype=torch.float64)
    y = torch.randn(30, d.config.out_width, generator=_g(8), dtype=torch.float64)
    params = list(d.parameters())
    out = d.loss(x, y, sparsity_scale=0.6)
    assert isinstance(out.codes, dl.SparseCodes) == (dense_above > 1)
    got = torch.autograd.grad(out.total, params)
    centre = d.input_mean if arch == "relu_transcoder" else d.b_dec
    codes = ((x - centre) @ d.W_enc + d.b_enc).relu()
    want_total = ((codes @ d.W_dec + d.b_dec - y) ** 2).sum(-1).mean() + 0.6 * 0.7 * (
        codes * d.W_dec.norm(dim=-1)).sum(-1).mean()
    want = torch.autograd.grad(want_total, params)
    assert float(out.total.detach()) == pytest.approx(float(want_total.detach()), rel=1e-12)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)
