"""The local replacement model of one prompt (Ameisen et al. 2025, "Circuit tracing").

Built from one run of the real model on the prompt:

- every MLP with latents (a `LatentLayer`, see latents.py) is replaced by its latents' writes,
  `Σ_sources codes @ W_dec[l] + b_dec[l]`, plus an *error* term, the MLP's real output minus that
  reconstruction on this prompt, held fixed; an MLP without latents keeps only its error (its whole
  output, fixed);
- with `frozen=True`, every attention pattern and every norm's divisor (`ln1.scale`, `ln2.scale`,
  `ln_final.scale`: LayerNorm's sqrt(var + eps), RMSNorm's sqrt(mean x² + eps)) is written back
  from the real run, so that, given the latents' codes, the model is linear from the token
  embeddings and the MLP outputs to every latent's pre-activation and every logit.

On the prompt it was built from, the replacement's logits are the model's: each error term makes
up exactly what the latents miss (`exactness` is the largest difference, measured at build time).
With `frozen=False` the same replacement runs with live attention and norms; ablating latents
there (`run(ablate=...)`) measures what removing them does, error terms held fixed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.interventions import Patch, Replace
from ..core.run import run
from ..core.site import Kind, Site
from .latents import LatentError, LatentLayer, latent_layers

_SCALES = (Kind.LN1_SCALE, Kind.LN2_SCALE)
_NORMS = {Kind.LN1: Kind.LN1_SCALE, Kind.LN2: Kind.LN2_SCALE}


class ReplacementError(ValueError):
    """A model the local replacement cannot freeze exactly (names the part and what to do).

    Example::

        from mechscope.graphs import LocalReplacement, ReplacementError
        try:
            LocalReplacement.build(ms.load("minilm-l6"), ids, tcs)
        except ReplacementError as err:
            print(err)                           # names the part and what to do
    """


def frozen_sites(adapter) -> list[Site]:
    """The sites whose values the frozen replacement writes back: attention patterns and norm divisors."""
    sites = list(adapter.sites())
    have = set(sites)
    if getattr(adapter, "post_norms", False):
        raise ReplacementError("this model normalises attention and MLP outputs (post-norms), which have no "
                               "scale sites to freeze; attribution graphs support pre-norm models")
    out = []
    for s in sites:
        if s.kind in _NORMS and Site(_NORMS[s.kind], s.layer) not in have:
            raise ReplacementError(f"{s.short}: the model's norm there has no scale site, so it cannot be frozen "
                                   "(a norm class the adapter does not recognise)")
        if s.kind is Kind.LN_FINAL and Site(Kind.LN_FINAL_SCALE) not in have:
            raise ReplacementError("ln_final: the final norm has no scale site, so it cannot be frozen")
        if s.kind is Kind.PATTERN or s.kind in _SCALES or s.kind is Kind.LN_FINAL_SCALE:
            out.append(s)
    return out


@dataclass(eq=False)
class LocalReplacement:
    """The replacement of `adapter` on the prompt `ids` (1, pos): frozen values, codes and errors.

    Example::

        from mechscope.graphs import LocalReplacement, load_transcoders
        model = ms.load("zoo:textlm-quick")
        ids = model.to_tokens(["ROMEO. But soft"])["input_ids"]                 # (1, pos)
        rep = LocalReplacement.build(model, ids, load_transcoders("runs/textlm-tc", adapter=model))
        rep.exactness                            # how well it reproduces the model's logits
    """

    adapter: object
    ids: Tensor  # (1, pos)
    latents: dict[int, LatentLayer]
    n_layers: int
    frozen: dict[Site, Tensor]  # pattern and norm-divisor values of the real run
    inputs: dict[int, Tensor]  # layer -> the MLP input the latents read (pos, d_model)
    codes: dict[int, Tensor]  # layer -> (pos, n) codes on the prompt
    errors: dict[int, Tensor]  # layer -> (pos, d_model) the MLP output minus the latents' writes
    mlp_out: dict[int, Tensor]  # layer -> (pos, d_model) the real MLP output
    embed: Tensor  # (pos, d_model) token embeddings (hook_embed)
    logits: Tensor  # (pos, vocab) of the real model
    exactness: float = float("nan")  # max |replacement logits - model logits| (frozen), at build time
    drop_first: int = 0  # positions at the start whose MLPs are not replaced (all error: BOS, say)
    extra: dict = field(default_factory=dict)

    @staticmethod
    def build(adapter, ids: Tensor, latents: Mapping[int, object], drop_first: int = 0) -> "LocalReplacement":
        """The local replacement of `adapter` on prompt `ids` (pos,) or (1, pos), with `latents` (layer ->
        transcoder or latent layer): runs the model once, keeps the frozen values, codes and error terms, and
        measures `exactness`. The first `drop_first` positions keep their whole MLP outputs as errors, with
        no latent active there: BOS, on which transcoders are usually not trained (`mechscope dict
        transcoders` neither trains on BOS nor replaces it)."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.shape[0] != 1:
            raise ReplacementError(f"a local replacement is built on one prompt; got {ids.shape[0]} rows")
        sites = list(adapter.sites())
        n_layers = sum(1 for s in sites if s.kind is Kind.MLP_OUT)
        if Site(Kind.EMBED) not in sites:
            raise ReplacementError("the model has no token-embedding site (embed)")
        frozen = frozen_sites(adapter)
        mlp_outs = [Site(Kind.MLP_OUT, l) for l in range(n_layers)]
        probe = run(adapter, ids, capture=[Site(Kind.EMBED), mlp_outs[0]] if mlp_outs else [Site(Kind.EMBED)])
        d_model = probe.cache[Site(Kind.EMBED)].shape[-1]
        lat = latent_layers(adapter, latents, d_model)
        reads = [lat[l].reads for l in lat]
        res = run(adapter, ids, capture=[Site(Kind.EMBED), *frozen, *reads, *mlp_outs])
        c = res.cache
        inputs = {l: c[lat[l].reads][0] for l in lat}
        if not 0 <= drop_first < ids.shape[1]:
            raise ReplacementError(f"drop_first={drop_first} leaves no position of the {ids.shape[1]}-token prompt "
                                   "to replace; give 0 or a number below the prompt's length")
        codes = {l: lat[l].encode(inputs[l]).to(inputs[l].dtype) for l in lat}
        for code in codes.values():
            code[:drop_first] = 0
        mlp_out = {l: c[s][0] for l, s in enumerate(mlp_outs)}
        errors = {l: mlp_out[l] - _writes(lat, codes, l, mlp_out[l]) for l in range(n_layers)}
        rep = LocalReplacement(adapter, ids, lat, n_layers, {s: c[s] for s in frozen}, inputs, codes, errors,
                               mlp_out, c[Site(Kind.EMBED)][0], res.logits[0], drop_first=drop_first)
        rep.exactness = float((rep.run().logits[0] - res.logits[0]).abs().max())
        return rep

    # --- running the replacement -------------------------------------------------------------
    def freeze(self, kinds: Collection[Kind] | None = None) -> list:
        """Interventions writing the real run's patterns and norm divisors back (detached); only
        the sites of `kinds` when given."""
        return [Patch(s, value=v.detach()) for s, v in self.frozen.items() if kinds is None or s.kind in kinds]

    def run(self, frozen: bool | Collection[Kind] = True, ablate: Sequence[Sequence[tuple[int, int, int]]] | None = None,
            capture: Sequence[Site] = (), fixed_active: bool = False):
        """The replacement's forward pass on the prompt.

        `frozen`: True freezes every pattern and norm divisor, False none, a collection of kinds
        (say the three norm scales) only those. `ablate`, if given, is one list of latents (layer, pos, index) per batch row: the prompt
        runs once per row with those latents' codes set to zero; the latents downstream are
        re-encoded from their (changed) inputs, the error terms stay fixed.

        `fixed_active`: every latent keeps the active set it has on the prompt, its code being its
        pre-activation there and zero elsewhere (what an active TopK, ReLU or JumpReLU latent's code
        is), so no latent switches on or off. With `frozen=True` this is the model the attribution
        graph is the exact linearisation of: linear from the sources to every node's input.
        """
        rows = 1 if ablate is None else len(ablate)
        ids = self.ids.expand(rows, -1)
        codes: dict[int, Tensor] = {}
        masks = {l: torch.ones(rows, *self.codes[l].shape, dtype=self.codes[l].dtype, device=self.codes[l].device)
                 for l in self.latents}
        for mask in masks.values():
            mask[:, :self.drop_first] = 0  # positions left to their MLPs (all error)
        for r, group in enumerate(ablate or []):
            for (l, p, f) in group:
                if l not in masks:
                    raise LatentError(f"no latents at layer {l} to ablate")
                masks[l][r, p, f] = 0

        def reader(layer: int):
            lat = self.latents[layer]
            active = (self.codes[layer] != 0).to(self.codes[layer].dtype)  # (pos, n)

            def fn(x: Tensor, ctx) -> Tensor:
                flat = x.reshape(-1, x.shape[-1])
                c = lat.preactivations(flat).reshape(*x.shape[:-1], -1) * active.to(x) if fixed_active else \
                    lat.encode(flat).reshape(*x.shape[:-1], -1)
                codes[layer] = c.to(x.dtype) * masks[layer]
                return x
            return fn

        def writer(layer: int):
            def fn(x: Tensor, ctx) -> Tensor:
                return _writes(self.latents, codes, layer, x) + self.errors[layer].to(x)
            return fn

        ivs = self.freeze(None if frozen is True else frozen) if frozen is not False else []
        ivs += [Replace(self.latents[l].reads, fn=reader(l)) for l in self.latents]
        ivs += [Replace(Site(Kind.MLP_OUT, l), fn=writer(l)) for l in range(self.n_layers)]
        return run(self.adapter, ids, capture=list(capture), interventions=ivs)


def _writes(latents: Mapping[int, LatentLayer], codes: Mapping[int, Tensor], layer: int, like: Tensor) -> Tensor:
    """Σ over latents writing `layer`: codes @ W_dec[layer] + b_dec[layer] (zero if none writes it)."""
    out = torch.zeros_like(like)
    for l, lat in latents.items():
        if layer in lat.W_dec and l in codes:
            out = out + (codes[l] @ lat.W_dec[layer].to(like) + lat.b_dec[layer].to(like))
    return out
