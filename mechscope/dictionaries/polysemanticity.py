"""Automated polysemanticity measures: how many tokens a unit's strongest activations sit on, and
how many dictionary features each neuron's activation is spread over.

`neuron_spread` (per neuron, i.e. per dimension of the site):
    E[f, j] = Σ_rows (c_f(row) W_dec[f, j])²        the energy latent f puts into neuron j
    p_j(f) = E[f, j] / Σ_f E[f, j]
    spread(j) = exp(H(p_j))  and  participation(j) = 1 / Σ_f p_j(f)²      effective numbers of features
Cross terms between latents are left out (the energy split assumes they add independently). A
neuron that carries one feature has spread 1; a neuron read off a rotated copy of the dictionary
(`rotate_seed`: the decoder in a random orthonormal basis, the same codes) is the control for a
basis with no privileged directions.

For a unit u (a dictionary latent, a neuron, or any direction), take the n rows where it is most
active and weight each row's current token by the activation there:

    p_u(t) = Σ_{top rows r with token t} a_u(r) / Σ_{top rows r} a_u(r)
    token_diversity(u) = exp(H(p_u))            in [1, n]: the effective number of distinct tokens

A unit that fires on one token has diversity 1; one that fires on n different tokens has n. High
diversity is necessary for polysemanticity but not sufficient (a coherent concept spread over
many tokens, such as "plural nouns", also scores high), so the number is read comparatively:
a dictionary's latents against the site's own basis (neurons / residual dimensions) and against
random directions on the same rows. Units that are active on fewer than n rows are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .base import Dictionary


@dataclass(frozen=True)
class Diversity:
    """Per-unit token diversity of top activations, and its summary.

    Example::

        from mechscope.dictionaries import dictionary_diversity
        d = dictionary_diversity(sae, x, toks)   # x (rows, d_in), toks (rows,)
        d.median, d.mean
        d.per_unit                               # (units measured,): effective number of tokens
    """

    per_unit: Tensor = field(repr=False)  # (n_units_measured,) effective number of tokens
    n_top: int
    n_units: int  # units measured (active on at least n_top rows)

    @property
    def median(self) -> float:
        """The median over units (NaN without units)."""
        return float(self.per_unit.median()) if self.per_unit.numel() else float("nan")

    @property
    def mean(self) -> float:
        """The mean over units (NaN without units)."""
        return float(self.per_unit.mean()) if self.per_unit.numel() else float("nan")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: counts, mean, median and the 10/50/90% quantiles."""
        q = torch.quantile(self.per_unit, torch.tensor([0.1, 0.5, 0.9])).tolist() if self.per_unit.numel() else []
        return {"n_top": self.n_top, "n_units": self.n_units, "mean": self.mean, "median": self.median,
                "quantiles_10_50_90": q}


def token_diversity(acts: Tensor, tokens: Tensor, n_top: int = 32) -> Diversity:
    """Token diversity of each column of `acts` (rows, units) given each row's token (rows,).

    Example::

        from mechscope.dictionaries import token_diversity
        d = token_diversity(acts, toks)          # acts (rows, units), toks (rows,)
    """
    if acts.shape[0] != tokens.shape[0]:
        raise ValueError(f"acts has {acts.shape[0]} rows but tokens has {tokens.shape[0]}")
    n_top = min(n_top, acts.shape[0])
    vals, idx = acts.float().topk(n_top, dim=0)  # (n_top, units)
    return _diversity_of_top(vals, tokens[idx], n_top)


def _diversity_of_top(vals: Tensor, tok: Tensor, n_top: int) -> Diversity:
    """Diversity from each unit's top activations (n_top, units) and the tokens they sit on."""
    ok = (vals > 0).all(0)
    vals, tok = vals[:, ok], tok[:, ok]
    w = vals / vals.sum(0, keepdim=True)
    # p(t) per unit: sum the weights of equal tokens, made adjacent by sorting each column
    tok_sorted, order = tok.sort(dim=0)
    w_sorted = w.gather(0, order)
    new = torch.ones_like(tok_sorted, dtype=torch.bool)
    new[1:] = tok_sorted[1:] != tok_sorted[:-1]
    group = new.long().cumsum(0) - 1  # (n_top, units) group id within each column
    p = torch.zeros_like(w_sorted).scatter_add_(0, group, w_sorted)
    ent = -(p * p.clamp_min(1e-30).log()).sum(0)
    return Diversity(ent.exp(), n_top, int(ok.sum()))


@torch.no_grad()
def dictionary_diversity(dictionary: Dictionary, x: Tensor, tokens: Tensor, n_top: int = 32,
                         batch_size: int = 4096) -> Diversity:
    """Token diversity of the dictionary's latents on rows `x` with tokens `tokens`.

    The top activations are kept as a running top-n over batches, so memory stays at
    (n_top + batch_size) x d_sae whatever the number of rows.

    Example::

        from mechscope.dictionaries import dictionary_diversity
        d = dictionary_diversity(sae, x, toks)   # x (rows, d_in), toks (rows,)
        d.median
    """
    was = dictionary.training
    dictionary.eval()
    n_top = min(n_top, x.shape[0])
    best_v = best_t = None
    for s in range(0, x.shape[0], batch_size):
        v = dictionary.encode(x[s:s + batch_size]).float()  # (batch, d_sae)
        t = tokens[s:s + batch_size, None].expand_as(v)
        if best_v is not None:
            v, t = torch.cat([best_v, v]), torch.cat([best_t, t])
        best_v, i = v.topk(min(n_top, v.shape[0]), dim=0)
        best_t = t.gather(0, i)
    dictionary.train(was)
    return _diversity_of_top(best_v, best_t, n_top)


def baseline_diversity(x: Tensor, tokens: Tensor, n_top: int = 32, n_random: int = 512, seed: int = 0
                       ) -> dict[str, Diversity]:
    """The same measure for the site's basis directions (both signs) and for random unit directions.

    Example::

        from mechscope.dictionaries import baseline_diversity
        base = baseline_diversity(x, toks)       # x (rows, d_in), toks (rows,)
        {name: d.median for name, d in base.items()}
    """
    g = torch.Generator().manual_seed(seed)
    xc = (x - x.mean(0)).float()
    R = torch.randn(x.shape[1], n_random, generator=g)
    R = R / R.norm(dim=0, keepdim=True)
    return {"basis": token_diversity(torch.cat([xc, -xc], 1), tokens, n_top),
            "random": token_diversity(xc @ R, tokens, n_top)}


@dataclass(frozen=True)
class Spread:
    """Per neuron: the effective number of dictionary features its activation is spread over.

    Example::

        from mechscope.dictionaries import neuron_spread
        s = neuron_spread(sae, x)   # x (rows, d_in)
        s.participation                          # (d_in,): effective number of features per neuron
    """

    entropy: Tensor = field(repr=False)  # (d,) exp(H(p_j))
    participation: Tensor = field(repr=False)  # (d,) 1 / Σ p_j(f)²
    n_features: int
    rotated: bool

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: counts, and the median and 10/50/90% quantiles of entropy and participation."""
        q = lambda t: torch.quantile(t, torch.tensor([0.1, 0.5, 0.9])).tolist()  # noqa: E731
        return {"neurons": int(self.entropy.numel()), "features": self.n_features, "rotated_control": self.rotated,
                "entropy_median": float(self.entropy.median()), "entropy_quantiles_10_50_90": q(self.entropy),
                "participation_median": float(self.participation.median()),
                "participation_quantiles_10_50_90": q(self.participation)}


@torch.no_grad()
def neuron_spread(dictionary: Dictionary, x: Tensor, batch_size: int = 4096, rotate_seed: int | None = None
                  ) -> Spread:
    """How many of `dictionary`'s features each neuron (dimension) of its site is spread over, on
    rows `x` (see the module docstring); `rotate_seed` gives the rotated-basis control.

    Example::

        from mechscope.dictionaries import neuron_spread
        s = neuron_spread(sae, x)                # x (rows, d_in)
        control = neuron_spread(sae, x, rotate_seed=0)
    """
    was = dictionary.training
    dictionary.eval()
    power = None
    for s in range(0, x.shape[0], batch_size):
        c = dictionary.encode(x[s:s + batch_size]).double()
        power = (c * c).sum(0) if power is None else power + (c * c).sum(0)  # (d_sae,)
    dictionary.train(was)
    W = dictionary.W_dec.detach().double().reshape(dictionary.config.d_sae, -1)  # (d_sae, d)
    if rotate_seed is not None:
        g = torch.Generator().manual_seed(rotate_seed)
        q, r = torch.linalg.qr(torch.randn(W.shape[1], W.shape[1], generator=g, dtype=torch.float64))
        W = W @ (q * torch.sign(torch.diagonal(r)))  # a uniformly random rotation
    energy = power[:, None] * W * W  # (d_sae, d)
    total = energy.sum(0)
    keep = total > 0
    p = energy[:, keep] / total[keep]
    ent = -(p * p.clamp_min(1e-300).log()).sum(0)
    return Spread(ent.exp().float(), (1.0 / (p * p).sum(0)).float(), int(W.shape[0]), rotate_seed is not None)

