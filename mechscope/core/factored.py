"""FactoredMatrix: a low-rank product A @ B kept in factors (QK and OV circuits of heads).

A is (..., m, r) and B is (..., r, n) with r small (d_head); leading axes batch over layers and
heads. SVD, eigenvalues and norms come from r x r problems, never from the m x n matrix:
A = Qa Ra and B^T = Qb Rb (thin QR), so A @ B = Qa (Ra Rb^T) Qb^T and the singular values of
A @ B are those of the small core Ra Rb^T; the nonzero eigenvalues of A @ B are those of B @ A.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class FactoredMatrix:
    """A matrix kept as the product A @ B of two thin factors, (..., m, r) @ (..., r, n).

    SVD, eigenvalues and norms are computed from r x r problems, so a d_model x d_model circuit
    such as a head's OV (W_V W_O) is never built. Indexing and @ keep the product factored.

    Example::

        ov = model.weights().OV          # (layer, head, d_model, d_model), factored
        u, s, vh = ov[3, 5].svd()
        ov[3, 5].full()                  # the dense matrix, when it is wanted
    """

    A: Tensor  # (..., m, r)
    B: Tensor  # (..., r, n)

    def __post_init__(self) -> None:
        if self.A.shape[-1] != self.B.shape[-2]:
            raise ValueError(f"FactoredMatrix: inner dimensions differ: A {tuple(self.A.shape)}, "
                             f"B {tuple(self.B.shape)}")

    @property
    def shape(self) -> torch.Size:
        """The shape of the product: (..., m, n)."""
        batch = torch.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])
        return torch.Size((*batch, self.A.shape[-2], self.B.shape[-1]))

    @property
    def rank_bound(self) -> int:
        """r, the inner dimension: the product's rank is at most this."""
        return self.A.shape[-1]

    @property
    def T(self) -> "FactoredMatrix":
        """The transpose, still factored: B^T A^T."""
        return FactoredMatrix(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    def full(self) -> Tensor:
        """Materialise A @ B (only for small m, n or tests)."""
        return self.A @ self.B

    def __matmul__(self, other: "Tensor | FactoredMatrix") -> "FactoredMatrix":
        if isinstance(other, FactoredMatrix):
            # (A B)(C D) = A (B C D): keep the smaller inner dimension on the outside.
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> "FactoredMatrix":
        return FactoredMatrix(other @ self.A, self.B)

    def __getitem__(self, idx) -> "FactoredMatrix":
        """Index the leading (batch) axes, e.g. qk[layer, head]."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        batch = self.shape[:-2]
        a = self.A.expand(*batch, *self.A.shape[-2:])
        b = self.B.expand(*batch, *self.B.shape[-2:])
        return FactoredMatrix(a[idx], b[idx])

    @cached_property
    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        qa, ra = torch.linalg.qr(self.A.double())  # (..., m, r), (..., r, r)
        qb, rb = torch.linalg.qr(self.B.double().transpose(-1, -2))  # (..., n, r), (..., r, r)
        u, s, vh = torch.linalg.svd(ra @ rb.transpose(-1, -2))  # small r x r core
        dt = self.A.dtype
        return (qa @ u).to(dt), s.to(dt), (qb @ vh.transpose(-1, -2)).to(dt)

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """U (..., m, r), S (..., r), V (..., n, r) with A @ B = U diag(S) V^T."""
        return self._svd

    @property
    def S(self) -> Tensor:
        """The singular values (..., r), largest first."""
        return self._svd[1]

    def eigenvalues(self) -> Tensor:
        """Nonzero eigenvalues of the square matrix A @ B (complex), from the r x r matrix B @ A."""
        if self.A.shape[-2] != self.B.shape[-1]:
            raise ValueError(f"eigenvalues need a square matrix, got shape {tuple(self.shape)}")
        return torch.linalg.eigvals((self.B.double() @ self.A.double())).to(
            torch.complex64 if self.A.dtype != torch.float64 else torch.complex128)

    def norm(self) -> Tensor:
        """Frobenius norm, from the singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, rank<={self.rank_bound})"


def effective_rank(s: Tensor) -> float:
    """Roy and Vetterli's (2007) effective rank from singular values `s`: exp(entropy of s / sum(s)),
    which counts how evenly the spectrum is spread (n for n equal values, 1 for a rank-1 matrix);
    0 when every value is zero.

    Example::

        from mechscope.dynamics import effective_rank
        effective_rank(torch.tensor([1.0, 1.0, 1.0]))   # s (n,): 3.0
        effective_rank(torch.tensor([1.0, 0.0, 0.0]))   # 1.0
    """
    s = s.double().clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
