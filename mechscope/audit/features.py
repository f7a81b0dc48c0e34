"""Dictionary latents that fire rarely but move the logits a lot.

A small TopK sparse autoencoder (`mechscope.dictionaries`, trained with its own trainer on the
corpus's activations at the last block's MLP output -- cheap: a few thousand rows, d_sae = 4 d_model)
or a given dictionary reads the site. For every latent: how often it fires over the corpus, and its
direct logit effect, its decoder direction read through the unembedding (final norm gain included,
centred), as the spike (max − mean) / std over the vocabulary. A latent that fires on at most
`rare` of the corpus's tokens and whose spike is an outlier among the latents (robust z-score,
statistic `latent_spike_z`) is a suspect: its component is the direction (the site and the latent's
index), its trigger the token it fires on most, its effect the token its direction raises most.

With a reference, diff latents besides (`diff_scan`, the model-diffing machinery of
`mechscope.diff.crosscoder_diff`): a BatchTopK crosscoder is trained on the reference's and the
model's activations at the last block's output on the same tokens (d_sae = 4 d_model, k = 8).
Each latent has a decoder direction per model; what the model writes differently where the latent
fires is the difference d^model − d^ref, read through the model's unembedding as its spike. The
candidates fire rarely (but on at least `MIN_FIRES` tokens, over which ν is estimated) and have latent
scaling ν = β_ref / β_model below `MAX_NU`: where the latent
fires, the reference's activation lacks the model's direction (Minder et al. 2025; a small decoder
norm alone can be a sparsity artefact, and here it misleads the other way: a planted write rides
on a latent both models use for its token, relative norm about 0.5, while ν is near 0). The one
with the largest spike, as a robust z-score among the live latents, is a suspect (statistic
`diff_latent_spike_z`), its direction the decoder difference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.site import Kind, Site
from .inputs import decode, log_probs
from .suspect import Suspect, component, trigger
from .weights import logit_spikes, robust_z

METHOD = "features"
MAX_NU = 0.5  # latent scaling below which the reference lacks the latent's direction
# ν is a least-squares ratio over the tokens where the latent fires: over fewer than this many it is noise (a diff
# latent that fired on 1 of the 3,072 tokens of the audit tests' corpus had ν = -2.0 and a large spike, and no effect)
MIN_FIRES = 5


def train_dictionary(model: Any, ids: Tensor, site: Site, seed: int = 0, progress: bool = False) -> Any:
    """A small TopK SAE (d_sae = 4 d_model, k = 8) trained on the activations of `site` over `ids` (n, pos)."""
    from .. import dictionaries as dl

    acts = model.run(ids, capture=[site]).cache[site].reshape(-1, model.weights().W_E.shape[1]).float().cpu()
    torch.manual_seed(seed)
    d = acts.shape[1]
    sae = dl.build("topk", d_in=d, d_sae=4 * d, k=8)
    dl.train(sae, dl.batches_from_tensors(acts, batch_size=256, seed=seed),
             dl.TrainConfig(tokens=min(20 * acts.shape[0], 60_000), batch_size=256, seed=seed, log_every=50),
             progress=progress)
    return sae


def _spikes(model: Any, directions: Tensor) -> tuple[Tensor, Tensor]:
    """`weights.logit_spikes` of the directions, on the CPU beside the codes."""
    eff, spike = logit_spikes(model.weights(), directions)
    return eff.cpu(), spike.cpu()


def _pick(model: Any, ids: Tensor, codes: Tensor, spike: Tensor, eligible: Tensor, site: Site, vector: Any,
          effect: Any, stat: str, evidence: dict) -> list[Suspect]:
    """The eligible latent with the largest spike, as a robust z-score among the live latents, as a suspect:
    `codes` (n, T, d_sae) on `ids` (n, T), `vector(j)` its direction in the model, `effect(j)` the token it
    raises and by how much."""
    fires = (codes > 0).float().mean((0, 1))
    live = fires > 0
    if int(live.sum()) < 2:
        return []
    z = torch.full_like(spike, float("-inf"), dtype=torch.float64)
    z[live] = robust_z(spike[live])
    cand = live & eligible
    if not bool(cand.any()):
        return []
    j = int(torch.where(cand, z, torch.full_like(z, float("-inf"))).argmax())
    tok = ids[codes[..., j] > 0]
    t = int(torch.bincount(tok).argmax()) if tok.numel() else None
    top, rise = effect(j)
    trig = trigger("token", [t], decode(model, [t])) if t is not None else trigger()
    comp = component(site, "direction", unit=j)
    comp["vector"] = [round(float(x), 6) for x in vector(j)]  # the direction confirm ablates
    ev = {"latent": j, "firing_rate": float(fires[j]), "spike": float(spike[j]),
          "median_spike": float(spike[live].median()), "site": site.name}
    return [Suspect(comp, trig,
                    {"target_ids": [top], "target_text": decode(model, [top]), "delta_logprob": rise},
                    stat, float(z[j]), [METHOD],
                    {**ev, **{k: (v(j) if callable(v) else v) for k, v in evidence.items()}})]


def scan(model: Any, ids: Tensor, dictionary: Any = None, site: Site | None = None, rare: float = 0.01,
         seed: int = 0, progress: bool = False) -> list[Suspect]:
    """The latent that fires rarely (at most `rare` of tokens) with the largest direct logit spike, as a suspect;
    [] when there is none. Trains a dictionary when none is given."""
    w = model.weights()
    if w.W_U is None:
        return []
    site = site or Site(Kind.MLP_OUT if w.W_out is not None else Kind.ATTN_OUT, w.n_layers - 1)
    sae = dictionary if dictionary is not None else train_dictionary(model, ids, site, seed, progress)
    with torch.no_grad():
        acts = model.run(ids, capture=[site]).cache[site].float()  # (n, T, d)
        codes = sae.encode(acts.reshape(-1, acts.shape[-1]).to(sae.W_dec.device))  # where the dictionary is
        codes = codes.to_dense() if hasattr(codes, "to_dense") else codes
        codes = codes.reshape(*ids.shape, -1).cpu()  # (n, T, d_sae), beside the ids
        eff, spike = _spikes(model, sae.W_dec)
        fires = (codes > 0).float().mean((0, 1))
        return _pick(model, ids, codes, spike, fires <= rare, site, lambda j: sae.W_dec[j].detach(),
                     lambda j: (int(eff[j].argmax()), float(eff[j].max())), "latent_spike_z",
                     {"dictionary": type(sae).__name__, "given": dictionary is not None})


def train_crosscoder(reference: Any, model: Any, ids: Tensor, site: Site, seed: int = 0,
                     progress: bool = False) -> tuple[Any, Tensor]:
    """A small BatchTopK crosscoder (d_sae = 4 d_model, k = 8) trained on the reference's (source 0) and the model's
    (source 1) activations at `site` on the same tokens `ids` (n, pos), and those activations (n·pos, 2, d)."""
    from .. import dictionaries as dl
    from ..diff.crosscoder_diff import harvest

    xa, xb = harvest(reference, model, ids, site)
    n, d = xa.shape
    torch.manual_seed(seed)
    cc = dl.build("batchtopk-crosscoder", d_in=d, d_sae=4 * d, k=8, n_sources=2, seed=seed, site=site.name)
    dl.train(cc, dl.batches_from_tensors(xa, xb, batch_size=256, seed=seed),
             dl.TrainConfig(tokens=min(20 * n, 60_000), batch_size=256, seed=seed, log_every=50,
                            dead_after_tokens=4 * n), progress=progress, description=f"audit crosscoder at {site.name}")
    cc.eval()
    return cc, torch.stack([xa, xb], 1)


@torch.no_grad()
def _rise_where(model: Any, reference: Any, ids: Tensor, where: Tensor) -> tuple[int, float]:
    """The next token whose change from the reference carries most of KL(model ‖ reference) at the positions
    `where` (n, T) of `ids`, averaged over them -- p(y)·(log p(y) − log q(y)) --, and its mean log-prob rise
    there."""
    rows = where.any(1)
    lp, lq = log_probs(model, ids[rows]).cpu(), log_probs(reference, ids[rows]).cpu()
    at = where[rows]
    d = (lp - lq)[at]  # (k, vocab)
    y = int((lp[at].exp() * d).mean(0).argmax())
    return y, float(d[:, y].mean())


def diff_scan(model: Any, reference: Any, ids: Tensor, site: Site | None = None, rare: float = 0.01,
              seed: int = 0, progress: bool = False) -> list[Suspect]:
    """The rare crosscoder latent the model writes differently (see the module docstring) with the largest direct
    logit spike of its decoder difference, as a suspect; [] when there is none."""
    from ..diff.crosscoder_diff import latent_scaling

    w = model.weights()
    if w.W_U is None:
        return []
    site = site or Site(Kind.RESID_POST, w.n_layers - 1)
    cc, x = train_crosscoder(reference, model, ids, site, seed, progress)
    with torch.no_grad():
        codes = cc.encode(x)  # (N, d_sae)
        recon = cc.decode(codes).reshape(x.shape)
        W = cc.W_dec.detach().reshape(codes.shape[1], 2, x.shape[-1])
        delta = W[:, 1] - W[:, 0]
        rel = cc.relative_norms(0, 1)
        _, spike = _spikes(model, delta)
        count = (codes > 0).sum(0)  # tokens each latent fires on
        fires = count.float() / codes.shape[0]
        nu = torch.full_like(rel, float("nan"))
        for j in ((count >= MIN_FIRES) & (fires <= rare)).nonzero().flatten().tolist():  # where ν can be estimated
            nu[j] = latent_scaling(x, recon, codes, W, j)
        eligible = (fires <= rare) & (nu < MAX_NU)  # nan (not a candidate) compares False
        return _pick(model, ids, codes.reshape(*ids.shape, -1), spike, eligible, site, lambda j: delta[j],
                     lambda j: _rise_where(model, reference, ids, codes[:, j].reshape(ids.shape) > 0),
                     "diff_latent_spike_z",
                     {"dictionary": type(cc).__name__, "relative_norm": lambda j: float(rel[j]),
                      "nu": lambda j: float(nu[j])})
