"""FactoredMatrix against the full matrices it stands for; QK and OV circuits from weight views."""

from __future__ import annotations

import pytest
import torch

from mechscope import FactoredMatrix

from conftest import make_family


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture
def fm() -> FactoredMatrix:
    # batch (2, 3) of 12 x 10 matrices of rank <= 4
    return FactoredMatrix(_rand(2, 3, 12, 4, seed=1), _rand(2, 3, 4, 10, seed=2))


def test_shape_full_and_transpose(fm):
    assert fm.shape == (2, 3, 12, 10) and fm.rank_bound == 4
    full = fm.A @ fm.B
    assert torch.equal(fm.full(), full)
    torch.testing.assert_close(fm.T.full(), full.transpose(-1, -2))
    assert "rank<=4" in repr(fm)
    with pytest.raises(ValueError, match="inner dimensions"):
        FactoredMatrix(_rand(5, 3), _rand(4, 5))


def test_singular_values_and_svd(fm):
    full = fm.full()
    S = fm.S
    assert S.shape == (2, 3, 4)
    ref = torch.linalg.svdvals(full)[..., :4]
    torch.testing.assert_close(S, ref, atol=1e-10, rtol=1e-10)
    assert torch.all(torch.linalg.svdvals(full)[..., 4:] < 1e-10)  # rank 4 indeed
    U, S2, V = fm.svd()
    assert U.shape == (2, 3, 12, 4) and V.shape == (2, 3, 10, 4)
    torch.testing.assert_close(U @ torch.diag_embed(S2) @ V.transpose(-1, -2), full, atol=1e-10, rtol=0)
    eye = torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4)
    torch.testing.assert_close(U.transpose(-1, -2) @ U, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(V.transpose(-1, -2) @ V, eye, atol=1e-10, rtol=0)
    assert torch.all(S2[..., :-1] >= S2[..., 1:])  # descending


def test_float32_svd_keeps_dtype():
    f = FactoredMatrix(_rand(16, 3, seed=3, dtype=torch.float32), _rand(3, 16, seed=4, dtype=torch.float32))
    assert f.S.dtype == torch.float32
    torch.testing.assert_close(f.S, torch.linalg.svdvals(f.full())[:3], atol=1e-4, rtol=1e-4)


def test_norm_is_frobenius(fm):
    torch.testing.assert_close(fm.norm(), torch.linalg.matrix_norm(fm.full()), atol=1e-10, rtol=1e-10)


def _match(small: torch.Tensor, big: torch.Tensor, tol: float) -> None:
    """Every eigenvalue in `small` pairs with a distinct one in `big` (multiset match)."""
    left = list(big)
    for ev in small:
        d = torch.stack([(ev - b).abs() for b in left])
        i = int(d.argmin())
        assert d[i] < tol, f"eigenvalue {ev} has no partner in {big}"
        left.pop(i)


def test_eigenvalues_are_the_nonzero_eigenvalues_of_the_product():
    A, B = _rand(3, 9, 4, seed=5), _rand(3, 4, 9, seed=6)
    f = FactoredMatrix(A, B)
    ev = f.eigenvalues()
    assert ev.shape == (3, 4) and ev.dtype == torch.complex128
    full_ev = torch.linalg.eigvals(f.full())  # (3, 9): 4 nonzero, 5 (numerically) zero
    for i in range(3):
        order = full_ev[i].abs().argsort(descending=True)
        top, rest = full_ev[i][order[:4]], full_ev[i][order[4:]]
        assert torch.all(rest.abs() < 1e-8)
        _match(ev[i], top, 1e-8)
        # sorted by magnitude they agree too
        torch.testing.assert_close(ev[i].abs().sort().values, top.abs().sort().values, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="square"):
        FactoredMatrix(_rand(5, 2), _rand(2, 4)).eigenvalues()


def test_batch_indexing(fm):
    full = fm.full()
    torch.testing.assert_close(fm[1, 2].full(), full[1, 2])
    assert fm[1, 2].shape == (12, 10)
    torch.testing.assert_close(fm[0].full(), full[0])
    torch.testing.assert_close(fm[:, 1].full(), full[:, 1])
    torch.testing.assert_close(fm[1, 2].S, fm.S[1, 2])
    # broadcast batch axes: A shared across the batch, B per item
    g = FactoredMatrix(_rand(12, 4, seed=7), _rand(5, 4, 10, seed=8))
    assert g.shape == (5, 12, 10)
    torch.testing.assert_close(g[3].full(), g.A @ g.B[3])


def test_composition(fm):
    other = FactoredMatrix(_rand(2, 3, 10, 2, seed=9), _rand(2, 3, 2, 7, seed=10))
    prod = fm @ other
    assert isinstance(prod, FactoredMatrix) and prod.shape == (2, 3, 12, 7)
    torch.testing.assert_close(prod.full(), fm.full() @ other.full(), atol=1e-10, rtol=0)
    assert prod.rank_bound == 4
    M = _rand(10, 6, seed=11)
    torch.testing.assert_close((fm @ M).full(), fm.full() @ M, atol=1e-10, rtol=0)
    L = _rand(8, 12, seed=12)
    left = L @ fm
    assert isinstance(left, FactoredMatrix)
    torch.testing.assert_close(left.full(), L @ fm.full(), atol=1e-10, rtol=0)
    torch.testing.assert_close((fm @ other).S, torch.linalg.svdvals(fm.full() @ other.full())[..., :4],
                               atol=1e-8, rtol=1e-8)


def test_qk_ov_of_grouped_query_attention():
    f = make_family("llama_gqa")
    m, w = f.model, f.model.weights()
    assert (w.n_heads, w.n_kv_heads, w.group_size) == (4, 2, 2)
    att = m.blocks[1].self_attn
    k_heads = att.k_proj.weight.T.unflatten(-1, (2, -1)).permute(1, 0, 2)  # (kv_head, d_model, d_head)
    v_heads = att.v_proj.weight.T.unflatten(-1, (2, -1)).permute(1, 0, 2)
    for h in range(4):
        assert torch.equal(w.W_K[1, h], k_heads[h // 2]), f"query head {h} reads kv head {h // 2}"
        assert torch.equal(w.W_V[1, h], v_heads[h // 2])
    assert torch.equal(w.W_K_grouped[1], k_heads) and torch.equal(w.W_V_grouped[1], v_heads)
    assert not torch.equal(w.W_K[1, 0], w.W_K[1, 2])
    qk, ov = w.QK, w.OV
    assert qk.shape == (2, 4, 64, 64) and ov.shape == (2, 4, 64, 64)
    torch.testing.assert_close(qk[1, 3].full(), w.W_Q[1, 3] @ k_heads[1].T)
    torch.testing.assert_close(ov[1, 3].full(), v_heads[1] @ w.W_O[1, 3])
    # heads sharing a kv head share W_K but not the circuit
    assert not torch.allclose(qk[1, 2].full(), qk[1, 3].full())
    # SVD of the 64 x 64 circuits without building them, rank <= d_head
    ref = torch.linalg.svdvals(ov.full().double())[..., :16].float()
    torch.testing.assert_close(ov.S, ref, atol=1e-5, rtol=1e-4)


def test_qk_scores_at_position_zero_match_captured_q_and_k():
    """Rotary is the identity at position 0: there q.k equals x W_Q W_K^T x^T from the weights."""
    import mechscope as ms
    from mechscope import Kind, Site

    f = make_family("llama_gqa")
    w = f.model.weights()
    c = ms.run(f.model, f.ids, capture=[Site(Kind.LN1, 0), Site(Kind.Q, 0), Site(Kind.K, 0)]).cache
    x = c[Site(Kind.LN1, 0)][:, 0]  # (batch, d_model) at position 0
    q, k = c[Site(Kind.Q, 0)][:, 0], c[Site(Kind.K, 0)][:, 0]  # (batch, head, d_head), (batch, kv, d_head)
    for h in range(4):
        score = (q[:, h] * k[:, h // 2]).sum(-1)
        bilinear = torch.einsum("bm,mn,bn->b", x, w.QK[0, h].full(), x)
        torch.testing.assert_close(score, bilinear, atol=1e-5, rtol=1e-4)
