"""Synthetic activations with known ground-truth directions (after Sharkey, Braun & Millidge 2022).

    x = Σ_i b_i c_i f_i,    b_i ~ Bernoulli(p_i),  c_i ~ Uniform(0, 1),  f_i random unit vectors

with n_features directions in d dimensions (more directions than dimensions: superposition) and
probabilities decaying geometrically from the first feature to the last, scaled so that
`mean_active` features are on per sample on average. `gaussian_control` draws from the normal
distribution with the same mean and covariance: no directions to find, the same second moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ToyFeatures:
    """The generating process: directions (n_features, d) and firing probabilities (n_features,)."""

    directions: Tensor
    probs: Tensor

    @staticmethod
    def make(d: int = 256, n_features: int = 512, mean_active: float = 5.0, decay: float = 10.0,
             seed: int = 0) -> "ToyFeatures":
        """Random unit directions; p_i ∝ decay^(-i/(n-1)) (the first feature `decay` times likelier
        than the last), scaled to sum to `mean_active`."""
        if not 0 < mean_active <= n_features:
            raise ValueError(f"mean_active must be in (0, n_features], got {mean_active}")
        if decay < 1:
            raise ValueError(f"decay must be >= 1 (1: equal probabilities), got {decay}")
        g = torch.Generator().manual_seed(seed)
        F = torch.randn(n_features, d, generator=g)
        F = F / F.norm(dim=1, keepdim=True)
        w = decay ** (-torch.arange(n_features, dtype=torch.float64) / max(1, n_features - 1))
        p = w * mean_active / w.sum()
        if float(p.max()) > 1:
            raise ValueError(f"mean_active={mean_active} with decay={decay} needs probabilities above 1")
        return ToyFeatures(F, p.float())

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """(n, d) samples."""
        g = torch.Generator().manual_seed(seed)
        on = torch.rand(n, self.probs.numel(), generator=g) < self.probs
        c = torch.rand(n, self.probs.numel(), generator=g) * on
        return c @ self.directions

    def moments(self) -> tuple[Tensor, Tensor]:
        """Exact mean (d,) and covariance (d, d) of a sample."""
        p = self.probs.double()
        F = self.directions.double()
        mean = (p / 2) @ F  # E[b c] = p / 2
        var = p / 3 - (p / 2) ** 2  # Var(b c) = E[b c²] - E[b c]² with E[c²] = 1/3
        return mean.float(), (F.t() * var) @ F

    def gaussian_control(self, n: int, seed: int = 0) -> Tensor:
        """(n, d) normal samples with the exact mean and covariance of `sample`."""
        mean, cov = self.moments()
        L = torch.linalg.cholesky(cov + 1e-9 * torch.eye(cov.shape[0], dtype=cov.dtype))
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, cov.shape[0], generator=g, dtype=torch.float64)
        return (z @ L.t() + mean.double()).float()
