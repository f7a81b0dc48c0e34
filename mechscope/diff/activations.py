"""Activation diff per site (Minder et al. 2025, "narrow fine-tuning leaves clearly readable traces").

At each residual site (the input of every block and the output of the last), the mean difference
Δ = mean h_B − mean h_A over the first `n_pos` positions of every window of unrelated text. Δ is
read through the logit lens of B: lens(Δ) = U_B(N_B(Δ)) − U_B(N_B(0)) with B's own final norm N_B
(recomputed on Δ) and unembedding U_B; subtracting the lens of the zero vector removes the norm's
shift and the unembedding's bias, which do not depend on Δ. Its top tokens are what the shift
writes.

The steering test: add Δ to A at that site, at every position (`core.interventions.Add`), and
measure KL(A+Δ‖B) on the corpus beside KL(A‖B). `closed` = 1 − Σ KL(A+Δ‖B) / Σ KL(A‖B), with a
bootstrap interval over windows (1 means A steered by Δ predicts exactly as B; 0 means Δ explains
none of the difference; below 0 it makes A further from B), and `nats_closed` the KL per token it
removes. The score of an activation finding is the size of the shift, ‖Δ‖ / mean ‖h_A‖; the
steering figures are its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.interventions import Add
from ..core.score import Score, bootstrap_ci
from ..core.site import Kind, Site
from .behaviour import kl_per_token, log_probs
from .corpus import Corpus


@dataclass(frozen=True)
class SiteDiff:
    """One residual site's activation diff: the mean difference Δ (d_model,), its size, its logit-lens tokens and
    how much of KL(A‖B) adding it to A closes."""

    site: Site
    delta: Tensor  # (d_model,)
    norm: float  # ||Δ||
    relative: float  # ||Δ|| / mean ||h_A|| over the same positions
    top: tuple[tuple[int, float], ...]  # logit-lens tokens of Δ (token, logit)
    bottom: tuple[tuple[int, float], ...]
    kl_before: float  # mean KL(A‖B) per token on the corpus
    kl_after: float  # mean KL(A+Δ‖B) per token
    closed: Score | None  # fraction of KL closed, CI over windows

    @property
    def nats_closed(self) -> float:
        """KL(A‖B) − KL(A+Δ‖B) per token, in nats."""
        return self.kl_before - self.kl_after


def residual_sites(model: Any) -> list[Site]:
    """The input of every block and the output of the last: the sites the activation diff reads."""
    n = model.n_layers
    return [Site(Kind.RESID_PRE, layer) for layer in range(n)] + [Site(Kind.RESID_POST, n - 1)]


def readout_modules(model: Any) -> tuple[Any, Any] | None:
    """(final norm or None, unembedding) of a model, or None when it exposes no unembedding."""
    if hasattr(model, "unembed") and callable(model.unembed):
        u = model.unembed()
        if u is not None:
            return model.final_norm(), u
    m = getattr(model, "module", None)
    if m is not None and isinstance(getattr(m, "unembed", None), torch.nn.Module):
        return getattr(m, "ln_final", None), m.unembed
    return None


@torch.no_grad()
def lens(model: Any, delta: Tensor) -> Tensor | None:
    """lens(Δ) = U(N(Δ)) − U(N(0)) (vocab,), or None without an unembedding."""
    mods = readout_modules(model)
    if mods is None:
        return None
    norm, unembed = mods
    x = torch.stack([delta, torch.zeros_like(delta)])[:, None, :]  # (2, 1, d_model)
    y = unembed(norm(x) if norm is not None else x)[:, 0]
    return (y[0] - y[1]).float()


@torch.no_grad()
def mean_difference(a: Any, b: Any, ids: Tensor, sites: list[Site], n_pos: int) -> dict[Site, tuple[Tensor, float]]:
    """Δ per site over the first `n_pos` positions of `ids`, with mean ||h_A|| there."""
    short = ids[:, :n_pos]
    ca = a.run(short, capture=sites).cache
    cb = b.run(short, capture=sites).cache
    out = {}
    for s in sites:
        ha, hb = ca[s].cpu().double(), cb[s].cpu().double()  # float64 on the CPU (MPS has none)
        out[s] = ((hb - ha).mean((0, 1)).float(), float(ha.norm(dim=-1).mean()))
    return out


@torch.no_grad()
def steering_kls(a: Any, b: Any, ids: Tensor, deltas: dict[Site, Tensor], batch: int = 16,
                 before: Tensor | None = None) -> tuple[Tensor, dict[Site, Tensor]]:
    """Per-window sums of KL(A‖B) and, per site, of KL(A+Δ‖B) on `ids`: (n,) and {site: (n,)}. B's
    log-probabilities are computed once per batch for all sites; `before`, the per-token KL(A‖B)
    (n, seq_len) when already known, saves A's unsteered pass."""
    sums_before: list[Tensor] = []
    after: dict[Site, list[Tensor]] = {s: [] for s in deltas}
    for s in range(0, len(ids), batch):
        chunk = ids[s:s + batch]
        lb = log_probs(b.run(chunk).logits)
        sums_before.append(kl_per_token(a.run(chunk).logits, lb, True).sum(1) if before is None
                           else before[s:s + batch].sum(1))
        for site, delta in deltas.items():
            steered = a.run(chunk, interventions=[Add(site, vector=delta)]).logits
            after[site].append(kl_per_token(steered, lb, True).sum(1))
    return torch.cat(sums_before), {k: torch.cat(v) for k, v in after.items()}


def steering_kl(a: Any, b: Any, ids: Tensor, site: Site, delta: Tensor, batch: int = 16,
                before: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-window sums of KL(A‖B) and KL(A+Δ‖B) on `ids` for one site: two (n,) tensors."""
    sums, after = steering_kls(a, b, ids, {site: delta}, batch, before)
    return sums, after[site]


def closed_fraction(before: Tensor, after: Tensor, dataset: str, how: dict, n_boot: int = 500) -> Score:
    """1 − Σ after / Σ before with a percentile bootstrap over windows (resampled in pairs)."""
    before, after = before.double(), after.double()
    if float(before.sum()) <= 0:  # A and B agree: nothing to close
        return Score(value=0.0, metric="fraction of KL(A‖B) closed by adding Δ to A", ci=None,
                     aggregation="KL(A‖B) is 0 on every token", dataset=dataset, n=len(before), seed=0, how=how)
    value = float(1 - after.sum() / before.sum())
    # the windows are resampled by index, so each window's before and after stay together
    lo, hi = bootstrap_ci(torch.arange(len(before)), lambda i: 1 - after[i.long()].sum() / before[i.long()].sum()
                          .clamp_min(1e-300), n_boot=n_boot)
    return Score(value=value, metric="fraction of KL(A‖B) closed by adding Δ to A", ci=(lo, hi),
                 aggregation="1 − Σ KL(A+Δ‖B) / Σ KL(A‖B) over tokens; CI over windows", dataset=dataset,
                 n=len(before), seed=0, how=how)


def activation_diff(a: Any, b: Any, corpus: Corpus, unrelated: Tensor | None = None, n_pos: int = 5,
                    k_tokens: int = 10, steer: bool = True, batch: int = 16, progress: bool = True,
                    kl: Tensor | None = None, steer_sites: int | None = 8,
                    steer_windows: int | None = 128) -> list[SiteDiff]:
    """Δ and its logit-lens tokens at every residual site, and its steering effect at `steer_sites`
    of them evenly spaced, first and last included (None: all; each costs one pass of A over the
    steered windows) (module docstring), on `steer_windows` of the corpus windows evenly spaced
    (None: all). `unrelated` are the windows Δ is measured on (default: the corpus itself); `kl`,
    the per-token KL(A‖B) on the corpus when the behaviour diff has it."""
    sites = residual_sites(a)
    n = len(sites)
    chosen = set(range(n)) if steer_sites is None or steer_sites >= n else \
        {round(i * (n - 1) / max(1, steer_sites - 1)) for i in range(steer_sites)}
    deltas = mean_difference(a, b, corpus.ids if unrelated is None else unrelated, sites, n_pos)
    n_win, n_tok = corpus.ids.shape
    rows = torch.arange(n_win) if steer_windows is None or steer_windows >= n_win else \
        torch.linspace(0, n_win - 1, steer_windows).round().long().unique()
    steered = {s: deltas[s][0] for j, s in enumerate(sites) if steer and j in chosen}
    before = after = None
    if steered:
        if progress:
            from ..core.progress import note

            note(f"activation diff: steering A at {len(steered)} sites on {len(rows)} windows")
        before, after = steering_kls(a, b, corpus.ids[rows], steered, batch, None if kl is None else kl[rows])
    out = []
    for s in sites:
        delta, base = deltas[s]
        norm = float(delta.norm())
        logit = lens(b, delta)
        top = bottom = ()
        if logit is not None and norm > 0:
            v, i = logit.topk(k_tokens)
            top = tuple(zip(i.tolist(), v.tolist()))
            v, i = (-logit).topk(k_tokens)
            bottom = tuple(zip(i.tolist(), (-v).tolist()))
        kb = ka = float("nan")
        closed = None
        if s in steered:
            kb, ka = float(before.sum()) / (len(rows) * n_tok), float(after[s].sum()) / (len(rows) * n_tok)
            closed = closed_fraction(before, after[s], corpus.name,
                                     {"site": s.name, "delta": f"mean over the first {n_pos} positions",
                                      "added at": "every position", "scale": 1.0, "windows": len(rows)})
        out.append(SiteDiff(s, delta, norm, norm / base if base > 0 else 0.0, top, bottom, kb, ka, closed))
    return out


__all__ = ["SiteDiff", "activation_diff", "closed_fraction", "lens", "mean_difference", "readout_modules",
           "residual_sites", "steering_kl", "steering_kls"]

