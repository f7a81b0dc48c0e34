"""Dictionary latents that fire rarely but move the logits a lot.

A small TopK sparse autoencoder (`mechscope.dictionaries`, trained with its own trainer on the
corpus's activations at the last block's MLP output -- cheap: a few thousand rows, d_sae = 4 d_model)
or a given dictionary reads the site. For every latent: how often it fires over the corpus, and its
direct logit effect, its decoder direction read through the unembedding (final norm gain included,
centred), as the spike (max − mean) / std over the vocabulary. A latent that fires on at most
`rare` of the corpus's tokens and whose spike is an outlier among the latents (robust z-score,
statistic `latent_spike_z`) is a suspect: its component is the direction (the site and the latent's
index), its trigger the token it fires on most, its effect the token its direction raises most.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.site import Kind, Site
from .inputs import decode
from .suspect import Suspect, component, trigger
from .weights import robust_z

METHOD = "features"


def train_dictionary(model: Any, ids: Tensor, site: Site, seed: int = 0, progress: bool = False) -> Any:
    """A small TopK SAE (d_sae = 4 d_model, k = 8) trained on the activations of `site` over `ids` (n, pos)."""
    from .. import dictionaries as dl

    acts = model.run(ids, capture=[site]).cache[site].reshape(-1, model.weights().W_E.shape[1]).float()
    torch.manual_seed(seed)
    d = acts.shape[1]
    sae = dl.build("topk", d_in=d, d_sae=4 * d, k=8)
    dl.train(sae, dl.batches_from_tensors(acts, batch_size=256, seed=seed),
             dl.TrainConfig(tokens=min(20 * acts.shape[0], 60_000), batch_size=256, seed=seed, log_every=50),
             progress=progress)
    return sae


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
        codes = sae.encode(acts.reshape(-1, acts.shape[-1]))
        codes = codes.to_dense() if hasattr(codes, "to_dense") else codes
        codes = codes.reshape(*ids.shape, -1)  # (n, T, d_sae)
        fires = (codes > 0).float().mean((0, 1))  # (d_sae,)
        g = w.lnf_w.float() if w.lnf_w is not None else torch.ones(w.W_U.shape[0], device=w.W_U.device)
        eff = sae.W_dec.float() @ (g[:, None] * w.W_U.float())  # (d_sae, vocab)
        if w.lnf_b is not None:
            eff = eff - eff.mean(-1, keepdim=True)
        spike = (eff.max(-1).values - eff.mean(-1)) / eff.std(-1).clamp_min(1e-12)
    live = fires > 0
    if int(live.sum()) < 2:
        return []
    z = torch.full_like(spike, float("-inf"), dtype=torch.float64)
    z[live] = robust_z(spike[live])
    cand = live & (fires <= rare)
    if not bool(cand.any()):
        return []
    j = int(torch.where(cand, z, torch.full_like(z, float("-inf"))).argmax())
    where = codes[..., j]
    tok = ids[where > 0]
    t = int(torch.bincount(tok).argmax()) if tok.numel() else None
    top = int(eff[j].argmax())
    trig = trigger("token", [t], decode(model, [t])) if t is not None else trigger()
    comp = component(site, "direction", unit=j)
    comp["vector"] = [round(float(x), 6) for x in sae.W_dec[j].detach()]  # the direction confirm ablates
    return [Suspect(comp, trig,
                    {"target_ids": [top], "target_text": decode(model, [top]), "delta_logprob": float(eff[j, top])},
                    "latent_spike_z", float(z[j]), [METHOD],
                    {"latent": j, "firing_rate": float(fires[j]), "spike": float(spike[j]),
                     "median_spike": float(spike[live].median()), "dictionary": type(sae).__name__,
                     "site": site.name, "given": dictionary is not None})]
