"""Baselines for features: linear probes, LEACE-style linear concept erasure, probe vs best feature.

- `fit_probe`: L2-regularised logistic regression (full-batch L-BFGS) on activations (n, d).
- `leace`: the least-squares concept eraser in closed form: with whitening W = Σ_xx^(-1/2) and
  A = W Σ_xz, r(x) = x - W⁺ P_A W (x - μ), P_A the orthogonal projection onto A's columns. After
  erasure every linear function of x has zero covariance with the concept.
- `compare`: for a labelled concept, the ROC AUC of the best probe (held out) against that of the
  single best feature (its value used as the score), on the same held-out tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Probe:
    """A fitted logistic-regression probe on standardised activations (`fit_probe`)."""

    w: Tensor  # (d,)
    b: float
    mean: Tensor  # (d,) the training mean, subtracted before w
    scale: Tensor  # (d,) the training std

    def logits(self, x: Tensor) -> Tensor:
        """(n,) logits of activations `x` (n, d)."""
        return ((x.float() - self.mean) / self.scale) @ self.w + self.b


def fit_probe(x: Tensor, y: Tensor, l2: float = 1e-3, steps: int = 200) -> Probe:
    """Logistic regression of binary labels y (n,) on x (n, d), features standardised first."""
    x, y = x.float(), y.float()
    if set(torch.unique(y).tolist()) - {0.0, 1.0}:
        raise ValueError("probe labels must be 0 or 1")
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / scale
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(w.detach(), float(b.detach()), mean, scale)


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count one half)."""
    s, y = scores.double().flatten(), labels.bool().flatten()
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        raise ValueError("ROC AUC needs both positive and negative labels")
    ranks = torch.empty_like(s)
    order = s.argsort()
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for v in torch.unique(s[order][1:][s[order][1:] == s[order][:-1]]):  # average the ranks of ties
        tie = s == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[y].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@dataclass(frozen=True)
class Eraser:
    """A linear concept eraser (`leace`): call it on activations (..., d) to get them with the concept erased."""

    mean: Tensor  # (d,)
    proj: Tensor  # (d, d): W⁺ P_A W

    def __call__(self, x: Tensor) -> Tensor:
        return x - (x.to(self.proj) - self.mean) @ self.proj.T


def leace(x: Tensor, z: Tensor, eps: float = 1e-8) -> Eraser:
    """The closed-form linear eraser of concept z (n,) labels or (n, k) values from x (n, d)."""
    x = x.double()
    z = z.double()
    if z.dim() == 1:
        z = z[:, None]
    mu = x.mean(0)
    xc, zc = x - mu, z - z.mean(0)
    n = x.shape[0]
    cov = xc.T @ xc / n
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > eps * evals.max()
    W = (evecs[:, keep] * evals[keep].rsqrt()) @ evecs[:, keep].T  # Σ^(-1/2) on its support
    W_pinv = (evecs[:, keep] * evals[keep].sqrt()) @ evecs[:, keep].T
    A = W @ (xc.T @ zc / n)  # (d, k)
    Q, _ = torch.linalg.qr(A)
    rank = int(torch.linalg.matrix_rank(A))
    P = Q[:, :rank] @ Q[:, :rank].T
    return Eraser(mu, W_pinv @ P @ W)


@dataclass(frozen=True)
class Comparison:
    """Held-out ROC AUC of the best probe beside that of the best single feature (`compare`)."""

    probe_auc: float
    best_feature: int
    best_feature_auc: float  # max(AUC, 1 - AUC): a feature may fire on the concept's absence
    n_test: int


def compare(x: Tensor, labels: Tensor, feature_values: Tensor, train: Tensor, test: Tensor) -> Comparison:
    """Best probe vs best single feature for a concept: both fitted/chosen on `train`, scored on `test`."""
    probe = fit_probe(x[train], labels[train])
    probe_auc = roc_auc(probe.logits(x[test]), labels[test])
    f_train = feature_values[train].double()
    aucs = torch.tensor([roc_auc(f_train[:, j], labels[train]) for j in range(f_train.shape[1])])
    best = int((aucs - 0.5).abs().argmax())
    sign = 1.0 if aucs[best] >= 0.5 else -1.0
    return Comparison(probe_auc, best, roc_auc(sign * feature_values[test, best], labels[test]), int(len(test)))
