"""Comparing dictionaries: mean-max cosine similarity (MMCS) and a one-to-one matching of latents.

MMCS(A, B) = mean over the latents of A of the largest cosine similarity between that latent's
decoder direction and any latent of B (Sharkey, Braun & Millidge 2022). It is not symmetric:
MMCS(truth, learned) asks how well a dictionary recovers known directions. The matching pairs
latents one to one, greedily by descending cosine (equivalently: repeatedly pair latents that
are each other's best remaining match), and reports each pair's cosine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import Dictionary


def _unit(d: Dictionary | Tensor) -> Tensor:
    W = d.directions() if isinstance(d, Dictionary) else d.detach()
    W = W.reshape(W.shape[0], -1).double()
    return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cosines(a: Dictionary | Tensor, b: Dictionary | Tensor) -> Tensor:
    """(n_a, n_b) cosine similarities between the latents' decoder directions (or rows of tensors).

    Example::

        from mechscope.dictionaries import cosines
        cosines(sae_a, sae_b)                    # (n_a, n_b)
    """
    A, B = _unit(a), _unit(b)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"directions of different widths cannot be compared: {A.shape[1]} and {B.shape[1]}")
    return A @ B.t()


def mmcs(a: Dictionary | Tensor, b: Dictionary | Tensor) -> float:
    """Mean over a's latents of the best cosine with any of b's.

    Example::

        from mechscope.dictionaries import mmcs
        mmcs(sae_a, sae_b)                       # or two (n, d) direction tensors
    """
    return float(cosines(a, b).max(dim=1).values.mean())


@dataclass(frozen=True)
class Matching:
    """One-to-one pairs (a_index, b_index) with their cosines, best first.

    Example::

        from mechscope.dictionaries import match
        m = match(sae_a, sae_b)
        m.a, m.b, m.cos                          # (pairs,) each: a's latent, b's latent, their cosine
        m.mean_cos, m.share_above(0.7)
    """

    a: Tensor  # (n_pairs,) int64
    b: Tensor  # (n_pairs,) int64
    cos: Tensor  # (n_pairs,) float64

    @property
    def mean_cos(self) -> float:
        """The mean cosine of the matched pairs (NaN without pairs)."""
        return float(self.cos.mean()) if self.cos.numel() else float("nan")

    def share_above(self, threshold: float) -> float:
        """The fraction of matched pairs whose cosine exceeds `threshold` (NaN without pairs)."""
        return float((self.cos > threshold).double().mean()) if self.cos.numel() else float("nan")


def match(a: Dictionary | Tensor, b: Dictionary | Tensor) -> Matching:
    """Greedy one-to-one matching by descending cosine, as rounds of mutual best matches.

    Example::

        from mechscope.dictionaries import match
        m = match(sae_a, sae_b)
        m.share_above(0.9)                       # share of the (pairs,) cosines above 0.9
    """
    return _match(cosines(a, b))


def _match(C: Tensor) -> Matching:
    rows = torch.arange(C.shape[0])
    cols = torch.arange(C.shape[1])
    pa, pb, pc = [], [], []
    while rows.numel() and cols.numel():
        sub = C[rows][:, cols]
        best_col = sub.argmax(1)  # each remaining row's best remaining column
        best_row = sub.argmax(0)
        mutual = best_row[best_col] == torch.arange(rows.numel())
        r = mutual.nonzero().squeeze(1)
        pa.append(rows[r])
        pb.append(cols[best_col[r]])
        pc.append(sub[r, best_col[r]])
        keep_r = torch.ones(rows.numel(), dtype=torch.bool)
        keep_r[r] = False
        keep_c = torch.ones(cols.numel(), dtype=torch.bool)
        keep_c[best_col[r]] = False
        rows, cols = rows[keep_r], cols[keep_c]
    a_idx, b_idx, cos = torch.cat(pa), torch.cat(pb), torch.cat(pc)
    order = cos.argsort(descending=True)
    return Matching(a_idx[order], b_idx[order], cos[order])


@dataclass(frozen=True)
class Comparison:
    """Both MMCS directions and the matching of two dictionaries.

    Example::

        from mechscope.dictionaries import compare
        c = compare(sae_a, sae_b)
        c.mmcs                                   # both directions' mean max cosine, averaged
        c.matching.share_above(0.9)
    """

    mmcs_ab: float
    mmcs_ba: float
    matching: Matching = field(repr=False)

    @property
    def mmcs(self) -> float:
        """The symmetric summary: the mean of both directions."""
        return (self.mmcs_ab + self.mmcs_ba) / 2

    def describe(self) -> dict[str, float]:
        """A JSON-ready record: the mean max cosine similarities both ways and the matching's summary."""
        return {"mmcs": self.mmcs, "mmcs_ab": self.mmcs_ab, "mmcs_ba": self.mmcs_ba,
                "matched_mean_cos": self.matching.mean_cos, "matched_above_0.9": self.matching.share_above(0.9),
                "matched_above_0.7": self.matching.share_above(0.7)}


def compare(a: Dictionary | Tensor, b: Dictionary | Tensor) -> Comparison:
    """MMCS both ways and a one-to-one latent matching between two dictionaries (or direction sets).

    Example::

        from mechscope.dictionaries import compare
        c = compare(sae_a, sae_b)                # or two (n, d) direction tensors
        c.mmcs, c.matching.mean_cos
    """
    C = cosines(a, b)
    return Comparison(float(C.max(1).values.mean()), float(C.max(0).values.mean()), _match(C))
