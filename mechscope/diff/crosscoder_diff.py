"""Crosscoder diff: one dictionary over A's and B's activations at a site, and which latents only B has.

A crosscoder (`dictionaries/crosscoder.py`; by default with BatchTopK codes as Minder et al. 2025
train it: k latents per token on average over a batch, one calibrated threshold after training;
`batch_topk=False`, k per token) is trained on the pairs (h_A, h_B) of the same token's residual
activations at one site (by default the input of the last block), on the windows
of the corpus. Each latent j has a decoder direction per model; its relative norm
r_j = ||d_j^B|| / (||d_j^A|| + ||d_j^B||) is near 1 for a latent only B uses, near 0 for one only A
uses (Lindsey et al. 2024). The shares of live latents below 0.1, between and above 0.9 are
reported; the latents listed are the `top` live ones with the largest relative norm (the most
B-leaning, whether or not any reaches 0.9).

A small decoder norm in A does not prove A lacks the latent: the training's sparsity penalty can
shrink it while A's reconstruction error still carries the direction. Latent scaling (Minder et al.
2025) checks this: for a B-leaning latent j with B's decoder direction d = d_j^B and activations f_j,

    β_M = Σ_t f_j(t) ⟨d, y_M(t)⟩ / Σ_t f_j(t)² ||d||²,   y_M = x_M − x̂_M + f_j d_j^M

is how much of f_j d is in model M's activation once every other latent is taken out (its
reconstruction error plus latent j's own part). ν_j = β_A / β_B is near 0 when A really lacks
the direction where the latent fires and near 1 when A has it too (here one figure on the
activation, where the paper fits the error and the reconstruction separately). Each B-only latent is
read by the tokens it fires on most and by B's logit lens of d.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.site import Kind, Site
from ..dictionaries.registry import build
from ..dictionaries.train import TrainConfig, batches_from_tensors, train
from .activations import lens
from .corpus import Corpus


@dataclass(frozen=True)
class Latent:
    """One crosscoder latent: its relative norm, firing frequency, latent scaling ν and the tokens it fires on,
    precedes and writes (B's logit lens)."""

    index: int
    relative_norm: float  # ||d^B|| / (||d^A|| + ||d^B||)
    frequency: float  # share of tokens it fires on
    nu: float  # latent scaling β_A / β_B
    fires_on: tuple[int, ...]  # the tokens at its largest activations (token at the position)
    next_tokens: tuple[int, ...]  # the tokens after them in the text
    lens_top: tuple[int, ...]  # B's logit lens of its B decoder direction


@dataclass(frozen=True)
class CrosscoderDiff:
    """A crosscoder diff at one site: the dictionary's size and FVU, the shares of A-only, shared and B-only
    latents, and the most B-leaning live latents."""

    site: Site
    d_sae: int
    k: int  # active latents per token (BatchTopK: on average over a training batch)
    activation: str  # "batchtopk" or "topk"
    fvu: float  # fraction of variance unexplained on the training rows, both models together
    shares: dict[str, float]  # share of live latents that are A-only (r < 0.1), shared, B-only (r > 0.9)
    b_leaning: tuple[Latent, ...]  # the live latents with the largest relative norm, largest first
    seconds: float


@torch.no_grad()
def harvest(a: Any, b: Any, ids: Tensor, site: Site, batch: int = 32) -> tuple[Tensor, Tensor]:
    """Activations (n·seq_len, d_model) of A and B at `site` on the same tokens."""
    xa, xb = [], []
    for s in range(0, len(ids), batch):
        chunk = ids[s:s + batch]
        # gathered on the CPU: the whole harvest is held at once, beside the corpus' CPU tensors
        xa.append(a.run(chunk, capture=[site]).cache[site].flatten(0, 1).float().cpu())
        xb.append(b.run(chunk, capture=[site]).cache[site].flatten(0, 1).float().cpu())
    return torch.cat(xa), torch.cat(xb)


@torch.no_grad()
def latent_scaling(x: Tensor, recon: Tensor, codes: Tensor, W_dec: Tensor, j: int, a: int = 0, b: int = 1) -> float:
    """ν_j = β_a / β_b for latent `j` (see the module docstring): `x` and `recon` (n, sources, d) the activations
    and the crosscoder's reconstruction, `codes` (n, d_sae), `W_dec` (d_sae, sources, d); nan when β_b is 0."""
    f = codes[:, j]
    d = W_dec[j, b]
    betas = []
    for m in (a, b):
        y = x[:, m] - recon[:, m] + f[:, None] * W_dec[j, m]
        betas.append(float((f * (y @ d)).sum() / ((f ** 2).sum() * d.dot(d)).clamp_min(1e-30)))
    return betas[0] / betas[1] if betas[1] != 0 else float("nan")


def crosscoder_diff(a: Any, b: Any, corpus: Corpus, site: Site | None = None, d_sae: int = 256, k: int = 8,
                    epochs: int = 20, batch_size: int = 1024, top: int = 8, seed: int = 0,
                    batch_topk: bool = True, progress: bool = True) -> CrosscoderDiff:
    """Train a crosscoder on A's and B's activations at `site` (the last block's input by default) over `corpus`
    and read which latents lean to B (see the module docstring)."""
    t0 = time.perf_counter()
    site = site or Site(Kind.RESID_PRE, a.n_layers - 1)
    xa, xb = harvest(a, b, corpus.ids, site)
    n, d = xa.shape
    cc = build("batchtopk-crosscoder" if batch_topk else "crosscoder", d_in=d, d_sae=d_sae, k=k, n_sources=2,
               seed=seed, site=site.name)
    cfg = TrainConfig(tokens=n * epochs, batch_size=min(batch_size, n), seed=seed, dead_after_tokens=n * 4)
    train(cc, batches_from_tensors(xa, xb, batch_size=min(batch_size, n), seed=seed), cfg, progress=progress,
          description=f"crosscoder at {site.name}")
    cc.eval()
    with torch.no_grad():
        x = torch.stack([xa, xb], 1)  # (n, 2, d)
        codes = cc.encode(x)
        recon = cc.decode(codes).reshape(n, 2, d)
        fvu = float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        W = cc.W_dec.detach().reshape(d_sae, 2, d)
        rel = cc.relative_norms(0, 1)
        live = (codes > 0).any(0)
        freq = (codes > 0).float().mean(0)
        shares = {"A-only": float(((rel < 0.1) & live).sum() / live.sum().clamp_min(1)),
                  "shared": float(((rel >= 0.1) & (rel <= 0.9) & live).sum() / live.sum().clamp_min(1)),
                  "B-only": float(((rel > 0.9) & live).sum() / live.sum().clamp_min(1))}
        flat_ids = corpus.ids.flatten()
        nxt = torch.cat([corpus.ids[:, 1:], torch.full((len(corpus.ids), 1), -1)], 1).flatten()
        out = []
        order = [j for j in rel.argsort(descending=True).tolist() if bool(live[j])][:top]
        for j in order:
            f = codes[:, j]
            dB = W[j, 1]
            nu = latent_scaling(x, recon, codes, W, j)
            where = f.topk(min(10, int((f > 0).sum()))).indices
            logit = lens(b, dB)
            out.append(Latent(j, float(rel[j]), float(freq[j]), nu, tuple(flat_ids[where].tolist()),
                              tuple(t for t in nxt[where].tolist() if t >= 0),
                              tuple(logit.topk(10).indices.tolist()) if logit is not None else ()))
    return CrosscoderDiff(site, d_sae, k, "batchtopk" if batch_topk else "topk", fvu, shares, tuple(out),
                          time.perf_counter() - t0)


__all__ = ["CrosscoderDiff", "Latent", "crosscoder_diff", "harvest", "latent_scaling"]
