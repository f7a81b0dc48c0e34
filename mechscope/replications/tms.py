"""tms: the geometry of superposition (Elhage et al. 2022) on the zoo's toy models.

Steps:
1. train (or reuse) `tms` (`--quick`: `tms-short`: 24 sweep sparsities with one instance each instead
   of 48 with two, 2000 steps instead of 3000; the targets are the same);
2. dense features (20 -> 5, importance 0.7^i, every feature always on): count the features each
   instance represents (column norm ||W_i|| > 0.5); the paper finds exactly m;
3. 5 -> 2 at feature probability <= 0.02: an instance is a pentagon when every feature's
   dimensionality D_i = ||W_i||² / Σ_j (Ŵ_i · W_j)² lies in [0.37, 0.43] (2/5 each);
4. the 100 -> 20 sparsity sweep: the histogram of D_i over represented features (bins of 0.02)
   must have peaks (a local maximum standing > 2 counting-noise standard deviations above its
   neighbours and holding >= 1% of the features) within ±0.03 of 1/2 (antipodal pairs) and 2/5
   (pentagons); the figures also list, per fraction, the sparsities where it is sticky; and the
   dimensions per feature m / ||W||_F² must stay within 0.5 ± 0.05 for at least three
   consecutive sparsities (the "sticky" 1/2 plateau).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import Check, Replication


def feature_dimensionality(W: Tensor) -> Tensor:
    """W (inst, m, n) -> D (inst, n): D_i = ||W_i||² / Σ_j (Ŵ_i·W_j)² (0 for a zero column)."""
    W = W.double()
    norms = W.norm(dim=1)  # (inst, n)
    unit = W / norms.clamp_min(1e-12)[:, None]
    overlap = torch.einsum("imf,img->ifg", unit, W) ** 2  # (inst, n, n): (Ŵ_f · W_g)²
    return torch.where(norms > 1e-6, norms ** 2 / overlap.sum(-1).clamp_min(1e-24), torch.zeros_like(norms))


def histogram_peaks(values: Tensor, width: float = 0.02) -> tuple[list[float], list[int]]:
    """Bin centres 0, w, 2w, ... up to 1 + w, and counts; local maxima are where a bin is >= both
    neighbours. Centres sit on multiples of the width so that the fractions looked for (1/2, 2/5)
    are bin centres: with edges there, one cluster of D = 1/2 would split into two half-height bins."""
    n_bins = int(round(1.0 / width)) + 2
    counts = torch.histc(values.float(), bins=n_bins, min=-width / 2, max=(n_bins - 0.5) * width).long()
    centres = [i * width for i in range(n_bins)]
    return centres, counts.tolist()


def has_peak_near(values: Tensor, x: float, tol: float = 0.03, width: float = 0.02, min_share: float = 0.01,
                  z: float = 2.0) -> float | None:
    """The centre of a peak of the D histogram within `tol` of x (the tallest such), else None.

    A peak is a bin at least as tall as both neighbours that stands out of counting noise: its excess
    over the mean of its neighbours, n - m, is more than `z` standard deviations of that difference
    under Poisson counts (sqrt(n + m/2)), and it holds at least `min_share` of all values. A smooth
    slope or a shoulder is no peak, nor is a handful of features in an empty stretch.
    """
    centres, counts = histogram_peaks(values, width)
    floor = max(min_share * sum(counts), 1)
    best = None
    for i, (c, n) in enumerate(zip(centres, counts)):
        left = counts[i - 1] if i > 0 else 0
        right = counts[i + 1] if i + 1 < len(counts) else 0
        around = (left + right) / 2
        prominent = n >= left and n >= right and n - around > z * max(n + around / 2, 1.0) ** 0.5
        if abs(c - x) <= tol + 1e-9 and n >= floor and prominent:
            if best is None or n > counts[centres.index(best)]:
                best = c
    return None if best is None else round(best, 3)


def sticky_bands(D: Tensor, live: Tensor, probs: Tensor, fractions: dict[str, float],
                 tol: float = 0.012, share: float = 0.25) -> dict[str, list[float]]:
    """For each named fraction, the feature probabilities whose instances put at least `share` of their
    represented features within `tol` of it: where along the sweep each fraction is "sticky"."""
    out: dict[str, list[float]] = {}
    for name, x in fractions.items():
        near = ((D - x).abs() < tol) & live  # (inst, n)
        frac = near.sum(-1) / live.sum(-1).clamp_min(1)
        out[name] = sorted({round(float(p), 4) for p, f in zip(probs, frac) if f >= share}, reverse=True)
    return out


def analyse(name: str) -> dict[str, Any]:
    """Every figure of the replication, from the trained zoo network `name`."""
    from .. import zoo

    model = zoo.load_zoo(name).module
    g = model.groups
    with torch.no_grad():
        dense_W = g["dense"].W
        represented = (dense_W.norm(dim=1) > 0.5).sum(-1)  # (inst,)
        m_dense = dense_W.shape[1]

        pent = g["pentagon"]
        sparse = pent.feature_prob <= 0.02
        D_pent = feature_dimensionality(pent.W)[sparse]  # (inst, 5)
        is_pentagon = ((D_pent >= 0.37) & (D_pent <= 0.43)).all(-1)

        sw = g["sweep"]
        D = feature_dimensionality(sw.W)  # (inst, n)
        live = sw.W.norm(dim=1) > 0.5
        per_instance = sw.W.shape[1] / (sw.W ** 2).sum((1, 2))  # (inst,)
        # instances come in runs of equal probability: the plateau counts sparsities, not instances
        probs = list(dict.fromkeys(sw.feature_prob.tolist()))
        dims_per_feature = [float(per_instance[sw.feature_prob == q].mean()) for q in probs]
    in_band = [abs(d - 0.5) <= 0.05 for d in dims_per_feature]
    longest, run = 0, 0
    for ok in in_band:
        run = run + 1 if ok else 0
        longest = max(longest, run)
    centres, counts = histogram_peaks(D[live])
    return {
        "dense_represented_per_instance": represented.tolist(), "dense_m": m_dense,
        "dense_frac_exactly_m": float((represented == m_dense).float().mean()),
        "pentagon_instances": int(sparse.sum()), "pentagon_frac": float(is_pentagon.float().mean()),
        "pentagon_D_by_instance": [[round(v, 3) for v in row] for row in D_pent.tolist()],
        "sweep_feature_probs": probs, "sweep_dims_per_feature": [round(d, 4) for d in dims_per_feature],
        "sweep_plateau_length": longest,
        "sweep_peak_near_half": has_peak_near(D[live], 0.5), "sweep_peak_near_two_fifths": has_peak_near(D[live], 0.4),
        "sweep_D_histogram": {f"{c:.2f}": n for c, n in zip(centres, counts) if n},
        "sweep_sticky_feature_probs": sticky_bands(D, live, sw.feature_prob,
                                                   {"1/2": 0.5, "2/5": 0.4, "3/8": 0.375, "1/3": 1 / 3}),
    }


def replicate(quick: bool = False, seed: int = 0, device: str | None = None) -> Replication:
    """Train (or reuse) the tms network for `seed` (`tms-short` when `quick`), measure it with `analyse` and check
    the targets.

    Example: `replicate(quick=True)`, or `mechscope replicate tms --quick`.
    """
    from .. import zoo

    name = zoo.spec("tms-short" if quick else "tms", seed=seed).name
    zoo.train(name, device=device)
    f = analyse(name)
    need_pent = 0.9
    checks = [
        Check("dense_exactly_m", f"no sparsity: every instance represents exactly m={f['dense_m']} features "
              "(||W_i|| > 0.5)", f["dense_frac_exactly_m"], f["dense_frac_exactly_m"] == 1.0,
              "20 -> 5, importance 0.7^i"),
        Check("pentagon", f">= {need_pent:.0%} of 5 -> 2 instances at p <= 0.02 are pentagons "
              "(every D_i in [0.37, 0.43])", round(f["pentagon_frac"], 3), f["pentagon_frac"] >= need_pent),
        Check("D_peak_half", "D histogram peaks within ±0.03 of 1/2", f["sweep_peak_near_half"],
              f["sweep_peak_near_half"] is not None),
        Check("D_peak_two_fifths", "D histogram peaks within ±0.03 of 2/5", f["sweep_peak_near_two_fifths"],
              f["sweep_peak_near_two_fifths"] is not None),
        Check("half_plateau", "m/||W||_F² within 0.5 ± 0.05 for >= 3 consecutive sparsities",
              f["sweep_plateau_length"], f["sweep_plateau_length"] >= 3),
    ]
    loosened = (["no target: tms-short trains 2000 steps instead of 3000 and 24 100 -> 20 sparsities with one "
                 "instance each instead of 48 with two"] if quick else [])
    return Replication("tms", checks, f, quick, loosened, seed)
