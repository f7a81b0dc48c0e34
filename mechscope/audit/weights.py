"""Weight anomalies: components that stand out among their siblings, or that changed from a reference.

Without a reference (statistics, each a suspect with the largest value per layer):

- `neuron_out_z`, `neuron_in_z`: a neuron's output (input) weight norm as a robust z-score among
  the neurons of its layer, (x − median) / (1.4826 · MAD);
- `neuron_out_kurt_z`, `neuron_in_kurt_z`: how heavy-tailed a neuron's output (input) weight
  vector is, its excess kurtosis E[(w − mean)⁴] / var² − 3, as a robust z-score of log(kurtosis + 3)
  among its layer's neurons (the kurtosis itself is heavy-tailed: on the calibration models its
  plain z ranged 5 to 12 between seeds) -- weights spiked on a few coordinates (a neuron rewired to
  read or write one direction of a basis: one embedding's coordinates, a few residual features)
  stand out where their norm need not;
- `neuron_logit_spike`: how much a neuron's direct logit effect W_out[j] · W_U (final norm gain
  included, centred) is concentrated on one token, (max − mean) / std over the vocabulary, as a
  robust z-score among its layer's neurons -- a neuron written to push one token stands out;
- `mlp_rank1`, `ov_rank1`, `qk_rank1`: the ratio σ1/σ2 of a matrix's two largest singular values
  (W_in and W_out per layer, W_V W_O and W_Q W_K^T per head) -- a low-rank edit adds one large
  singular value on top of the spectrum the siblings share (the evidence keeps the top singular
  direction on the MLP side, `key`, for the trigger search to drive);
- `embed_norm_z`: a token's embedding norm as a robust z-score among the tokens.

With a reference (`diff_ratio`): every component's relative Frobenius change
||W − W_ref|| / ||W_ref|| (`mechscope.diff.weight_diff`) over the median change of the model's
matrices; a changed MLP matrix whose change is concentrated (more than half its energy) in one
neuron is reported as that neuron, with the change's rank in the evidence.

Scores are raw; `calibrate` compares them with the same statistics on clean models.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.site import Kind, Site
from ..diff.weight_diff import weight_diff
from .inputs import decode
from .suspect import Suspect, component, head_site, mlp_site, no_effect, no_trigger, trigger

METHOD = "weights"


def robust_z(x: Tensor) -> Tensor:
    """Robust z-scores of `x`: (x − median) / (1.4826 · MAD), in float64 (the std, or 1, when the MAD is 0)."""
    x = x.detach().double()
    med = x.median()
    mad = (x - med).abs().median() * 1.4826
    if float(mad) == 0:
        mad = x.std() if x.numel() > 1 and float(x.std()) > 0 else torch.tensor(1.0, dtype=torch.float64)
    return (x - med) / mad


def kurtosis(m: Tensor, dim: int) -> Tensor:
    """Excess kurtosis E[(x − mean)⁴] / var² − 3 of `m` along `dim`, in float64 (0 where the variance is 0)."""
    x = m.detach().double()
    c = x - x.mean(dim, keepdim=True)
    var = (c ** 2).mean(dim)
    k = (c ** 4).mean(dim) / var.clamp_min(1e-300) ** 2 - 3.0
    return torch.where(var > 0, k, torch.zeros_like(k))


def rank1_ratio(m: Tensor) -> tuple[float, Tensor]:
    """σ₁ / σ₂ of matrix `m` and all its singular values (inf for a nonzero rank-1 matrix, 0 for a zero one)."""
    s = torch.linalg.svdvals(m.double())
    if s.numel() < 2 or float(s[1]) == 0:
        return (math.inf if s.numel() and float(s[0]) > 0 else 0.0), s
    return float(s[0] / s[1]), s


def key_direction(matrix: str, layer: int, m: Tensor, readout: Tensor | None = None) -> dict:
    """What the top singular direction of an MLP matrix (or of its change) reads: for W_out the
    neuron-space direction (at the MLP's activations), for W_in the residual direction (at the MLP
    norm's output) -- the input a trigger search drives. For W_out with a `readout` (d_model, vocab)
    the pair's sign is the one whose write raises one token more than it lowers any (a planted
    write pushes its target up), and the search drives the signed projection."""
    U, _, Vh = torch.linalg.svd(m.double(), full_matrices=False)
    site = Site(Kind.MLP_POST if matrix == "W_out" else Kind.LN2, layer)
    key, signed = U[:, 0], False
    if matrix == "W_out" and readout is not None:
        r = Vh[0].float() @ readout
        r = r - r.mean()
        if float(r.max()) < -float(r.min()):
            key = -key
        signed = True
    return {"key_site": site.name, "key": [round(float(x), 6) for x in key], "key_signed": signed}


def _neuron(layer: int, unit: int, stat: str, score: float, ev: dict) -> Suspect:
    return Suspect(component(mlp_site(layer), "neuron", unit=unit), no_trigger(), no_effect(), stat, score,
                   [METHOD], ev)


def _readout(w: Any) -> Tensor:
    g = w.lnf_w if w.lnf_w is not None else torch.ones(w.W_U.shape[0], device=w.W_U.device)
    return g.float()[:, None] * w.W_U.float()


def logit_spikes(w: Any, directions: Tensor, readout: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Directions (n, d_model) read through the unembedding with the final norm's gain (`w`: the model's
    `weights()`; `readout`: that product when already at hand), centred over the vocabulary when the final
    norm has a bias: the effects (n, vocab) and how much each spikes on one token, (max − mean) / std, on the
    unembedding's device."""
    readout = _readout(w) if readout is None else readout
    eff = directions.float().to(readout.device) @ readout
    if w.lnf_b is not None:
        eff = eff - eff.mean(-1, keepdim=True)
    return eff, (eff.max(-1).values - eff.mean(-1)) / eff.std(-1).clamp_min(1e-12)


@torch.no_grad()
def scan(model: Any, reference: Any = None) -> list[Suspect]:
    """Weight suspects of `model` (see the module docstring), strongest per statistic and layer."""
    w = model.weights()
    out: list[Suspect] = []
    if reference is not None:
        out += _diff(model, reference)
    if w.W_in is not None and w.W_out is not None:
        W_U = _readout(w) if w.W_U is not None else None
        for layer in range(w.n_layers):
            W_in, W_out = w.W_in[layer].float(), w.W_out[layer].float()  # (d_model, d_mlp), (d_mlp, d_model)
            for stat, norms in (("neuron_in_z", W_in.norm(dim=0)), ("neuron_out_z", W_out.norm(dim=1))):
                z = robust_z(norms)
                j = int(z.argmax())
                out.append(_neuron(layer, j, stat, float(z[j]), {"norm": float(norms[j]),
                                                                 "median_norm": float(norms.median())}))
            for stat, kurt in (("neuron_in_kurt_z", kurtosis(W_in, 0)), ("neuron_out_kurt_z", kurtosis(W_out, 1))):
                z = robust_z(torch.log(kurt + 3.0))  # the kurtosis itself is heavy-tailed: compared on a log scale
                j = int(z.argmax())
                out.append(_neuron(layer, j, stat, float(z[j]), {"kurtosis": float(kurt[j]),
                                                                 "median_kurtosis": float(kurt.median())}))
            if W_U is not None:
                eff, spike = logit_spikes(w, W_out, W_U)  # (d_mlp, vocab), (d_mlp,)
                z = robust_z(spike)
                j = int(z.argmax())
                top = int(eff[j].argmax())
                s = _neuron(layer, j, "neuron_logit_spike", float(z[j]),
                            {"spike": float(spike[j]), "median_spike": float(spike.median()), "top_token": top})
                s.effect = {"target_ids": [top], "target_text": None, "delta_logprob": float(eff[j, top])}
                out.append(s)
            for name, m in (("W_in", W_in), ("W_out", W_out)):
                r, s = rank1_ratio(m)
                out.append(Suspect(component(mlp_site(layer), "mlp"), no_trigger(), no_effect(), "mlp_rank1", r,
                                   [METHOD], {"matrix": name, "sigma": [float(x) for x in s[:4]],
                                              **key_direction(name, layer, m, W_U)}))
    qk, ov = w.QK, w.OV
    for layer in range(w.n_layers):
        for stat, fm in (("ov_rank1", ov), ("qk_rank1", qk)):
            best = None
            for h in range(w.n_heads):
                r, s = rank1_ratio(fm.A[layer, h].float() @ fm.B[layer, h].float())
                if best is None or r > best[0]:
                    best = (r, h, s)
            r, h, s = best
            out.append(Suspect(component(head_site(layer), "head", head=h), no_trigger(), no_effect(), stat, r,
                               [METHOD], {"sigma": [float(x) for x in s[:4]]}))
    if w.W_E is not None:
        norms = w.W_E.float().norm(dim=1)
        z = robust_z(norms)
        t = int(z.argmax())
        out.append(Suspect(component("hook_embed", "embedding", unit=t), trigger("token", [t], decode(model, [t])),
                           no_effect(), "embed_norm_z", float(z[t]), [METHOD], {"norm": float(norms[t])}))
    return out


def _diff(model: Any, reference: Any) -> list[Suspect]:
    comps = weight_diff(reference, model, n_directions=1, k_tokens=5, progress=False)
    mats = [c.relative for c in comps if len(c.shape) == 2 and math.isfinite(c.relative)]
    base = float(torch.tensor(mats).median()) if mats else 0.0
    wm, wr = model.weights(), reference.weights()
    out = []
    for c in comps:
        if c.absolute == 0:
            continue
        ratio = c.relative / base if base > 0 else math.inf
        ev = {"component": c.name, "relative_change": c.relative, "median_relative_change": base, "rank": c.rank,
              "effective_rank": c.effective_rank, "sigma": list(c.singular_values[:4])}
        if c.directions and c.directions[0].top:
            ev["writes_tokens"] = list(c.directions[0].top[:5])
        comp = _component_of(c.name, wm, wr, ev)
        if comp is None:
            continue
        out.append(Suspect(comp, no_trigger(), no_effect(), "diff_ratio", min(ratio, 1e12), [METHOD], ev))
    return out


def _component_of(name: str, wm: Any, wr: Any, ev: dict) -> dict | None:
    """The contract component of a weight-diff component name, narrowed to a neuron when one holds
    most of an MLP matrix's change."""
    if name == "embed":
        d = (wm.W_E.float() - wr.W_E.float()).norm(dim=1)
        t = int(d.argmax())
        ev["token_share"] = float(d[t] ** 2 / (d ** 2).sum())
        return component("hook_embed", "embedding", unit=t if ev["token_share"] > 0.5 else None)
    if not name.startswith("L"):
        return component("hook_embed" if name == "pos_embed" else "ln_final.hook_normalized", "layer")
    layer_s, rest = name[1:].split(".", 1)
    layer = int(layer_s)
    if rest.startswith("H"):
        return component(head_site(layer), "head", head=int(rest[1:].split(".")[0]))
    if rest in ("mlp_in", "mlp_out", "mlp_gate", "b_in"):
        if rest == "mlp_out":
            delta = wm.W_out[layer].float() - wr.W_out[layer].float()
            d = delta.norm(dim=1)
            ev.update(key_direction("W_out", layer, delta, _readout(wm) if wm.W_U is not None else None))
        elif rest == "mlp_in":
            delta = wm.W_in[layer].float() - wr.W_in[layer].float()
            d = delta.norm(dim=0)
            ev.update(key_direction("W_in", layer, delta))
        elif rest == "mlp_gate":
            d = (wm.W_gate[layer].float() - wr.W_gate[layer].float()).norm(dim=0)
        else:
            d = (wm.b_in[layer].float() - wr.b_in[layer].float()).abs()
        j = int(d.argmax())
        share = float(d[j] ** 2 / (d ** 2).sum().clamp_min(1e-30))
        ev["unit_share"] = share
        if share > 0.5:
            return component(mlp_site(layer), "neuron", unit=j)
        return component(mlp_site(layer), "mlp")
    if rest in ("b_out", "ln2_w", "ln2_b", "ln2_post_w"):
        return component(mlp_site(layer), "mlp")
    if rest in ("b_Q", "b_K", "b_V", "b_O", "ln1_w", "ln1_b", "q_norm_w", "k_norm_w", "ln1_post_w"):
        return component(head_site(layer), "attn")
    return component(mlp_site(layer), "layer")
