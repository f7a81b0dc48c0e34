"""Composition and copying scores from factored products equal the same scores from full matrices."""

import pytest
import torch

import mechscope as ms
from mechscope.circuits import composition_scores, copying_scores
from conftest import make_family


def _fro(m):
    return torch.linalg.matrix_norm(m.double())


# qwen3 and gemma3: per-head query/key norms; gemma2 and gemma3: a post-attention norm, whose gains the
# circuits include (W_Q_scored, W_K_scored, W_O_written)
FAMILIES = ["gpt2", "llama_gqa", "qwen3_gqa", "gemma2_gqa", "gemma3_mqa"]


def _dense(w):
    qk = (w.W_Q_scored @ w.W_K_scored.transpose(-1, -2)).double()  # (layer, head, d_model, d_model)
    ov = (w.W_V @ w.W_O_written).double()
    return qk, ov


@pytest.mark.parametrize("family", FAMILIES)
def test_composition_matches_full_matrices(family):
    f = make_family(family)
    w = f.model.weights(fold_ln=True)
    comp = composition_scores(f.hf)
    qk, ov = _dense(w)
    l1, l2 = 0, 1
    for h1 in range(w.n_heads):
        for h2 in range(w.n_heads):
            a, q, o = ov[l1, h1], qk[l2, h2], ov[l2, h2]
            want_q = _fro(a @ q) / (_fro(a) * _fro(q))
            want_k = _fro(q @ a.T) / (_fro(a) * _fro(q))
            want_v = _fro(a @ o) / (_fro(a) * _fro(o))
            torch.testing.assert_close(comp.q[l1, h1, l2, h2].double(), want_q, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(comp.k[l1, h1, l2, h2].double(), want_k, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(comp.v[l1, h1, l2, h2].double(), want_v, atol=1e-5, rtol=1e-4)
    assert torch.isnan(comp.q[1, :, 0]).all() and torch.isnan(comp.q[0, :, 0]).all()


def test_copying_score_matches_full_eigenvalues_and_known_signs():
    f = make_family("gpt2")
    w = f.model.weights(fold_ln=True)
    got = copying_scores(f.hf)
    full = (w.W_E @ w.W_V[0, 0] @ w.W_O[0, 0] @ w.W_U).double()  # (vocab, vocab)
    lam = torch.linalg.eigvals(full)
    lam = lam[lam.abs().argsort(descending=True)][: w.W_V.shape[-1]]  # the d_head nonzero ones
    torch.testing.assert_close(got[0, 0].double(), lam.real.sum() / lam.abs().sum(), atol=1e-4, rtol=1e-4)
    # a head whose OV circuit is W_E^+ ... : set W_V W_O to copy (identity through W_E, W_U = W_E^T)
    with torch.no_grad():
        hf = f.hf
        hf.lm_head.weight.copy_(hf.transformer.wte.weight)  # W_U = W_E^T (tied)
        for ln in (hf.transformer.h[0].ln_1, hf.transformer.ln_f):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        d, dh = w.W_Q.shape[2], w.W_Q.shape[3]
        c_attn = hf.transformer.h[0].attn.c_attn.weight  # (d_model, 3*d_model), head 0 of v: cols 2d..2d+dh
        c_attn[:, 2 * d:2 * d + dh] = torch.eye(d)[:, :dh]
        hf.transformer.h[0].attn.c_proj.weight[:dh] = torch.eye(d)[:dh]  # head 0's W_O rows
    ms.wrap(hf)  # same adapter, weights are read fresh
    assert copying_scores(hf)[0, 0] > 0.99
    with torch.no_grad():
        hf.transformer.h[0].attn.c_proj.weight[:dh] *= -1
    assert copying_scores(hf)[0, 0] < -0.99


@pytest.mark.parametrize("family", FAMILIES)
def test_full_circuits_and_virtual_weights_match_dense_products(family):
    from mechscope.circuits import virtual_weights

    f = make_family(family)
    w = f.model.weights(fold_ln=True)
    E, U = w.W_E.double(), w.W_U.double()
    l, h = 1, w.n_heads - 1
    full_ov = E @ w.W_V[l, h].double() @ w.W_O_written[l, h].double() @ U
    full_qk = E @ w.W_Q_scored[l, h].double() @ w.W_K_scored[l, h].double().T @ E.T
    torch.testing.assert_close(w.full_OV[l, h].full().double(), full_ov, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.full_QK[l, h].full().double(), full_qk, atol=1e-6, rtol=1e-5)
    assert w.full_OV.shape == (w.n_layers, w.n_heads, E.shape[0], U.shape[1])
    # the copying score is the full OV circuit's eigenvalue ratio
    lam = w.full_OV[l, h].eigenvalues()
    torch.testing.assert_close(copying_scores(f.hf)[l, h].double(),
                               (lam.real.sum() / lam.abs().sum()).double(), atol=1e-4, rtol=1e-4)
    qk, ov = _dense(w)
    for kind, want in (("q", ov[0, 0] @ qk[1, h]), ("k", qk[1, h] @ ov[0, 0].T), ("v", ov[0, 0] @ ov[1, h])):
        got = virtual_weights(f.hf, (0, 0), (1, h), kind)
        torch.testing.assert_close(got.full().double(), want, atol=1e-6, rtol=1e-5)
    comp = composition_scores(f.hf)
    vk = virtual_weights(f.hf, (0, 0), (1, h), "k")
    torch.testing.assert_close(vk.norm().double() / (_fro(ov[0, 0]) * _fro(qk[1, h])), comp.k[0, 0, 1, h].double(),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="before the receiver"):
        virtual_weights(f.hf, (1, 0), (0, 0), "q")


def test_copying_score_of_a_head_with_a_zero_ov_circuit_is_zero():
    """A head that writes nothing (W_O zero, as after pruning) has no eigenvalues to weigh: its
    score is defined as 0, not 0/0; the other heads' scores are unchanged."""
    f = make_family("gpt2")
    before = copying_scores(f.hf)
    dh = f.model.d_head
    with torch.no_grad():
        f.hf.transformer.h[1].attn.c_proj.weight[2 * dh:3 * dh] = 0  # head 2's W_O rows
    got = copying_scores(f.hf)
    assert not torch.isnan(got).any()
    assert got[1, 2] == 0
    keep = torch.ones_like(got, dtype=torch.bool)
    keep[1, 2] = False
    assert torch.equal(got[keep], before[keep])
