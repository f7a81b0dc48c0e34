"""Latents that stand in for MLPs: what a local replacement model and an attribution graph read.

A `LatentLayer` is the part of a (per-layer or cross-layer) transcoder whose encoder reads one
layer's MLP input: its encoder (W_enc, b_enc and the activation), and one decoder per MLP output it
writes. A per-layer transcoder writes its own layer only; a cross-layer transcoder's latents read
layer l and write the MLP outputs of l and later layers (a decoder per target layer), so a
latent's effect on a later node sums over those writes.

    pre(x)   = x @ W_enc + b_enc                      (rows, n)   the latents' pre-activations
    codes(x) = encode(x)                              (rows, n)   mostly zero; for the TopK, ReLU
                                                                  and JumpReLU activations an active
                                                                  latent's code is its pre-activation
    write_l  = codes @ W_dec[l] + b_dec[l]            (rows, d_model) for each target layer l

`latent_layers` turns any mapping layer -> mechscope `Dictionary` (a transcoder reading that
layer's MLP input and writing its MLP output) or `LatentLayer` into the mapping the graph code
uses; layers missing from it keep their MLP, whose whole output becomes an error node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.site import Kind, Site


class LatentError(ValueError):
    """A transcoder that does not fit the model or layer it was given for (names which and why).

    Example::

        from mechscope.graphs import LatentError, LocalReplacement
        try:
            LocalReplacement.build(model, ids, {0: transcoder_of_another_model})
        except LatentError as err:
            print(err)
    """


@dataclass(frozen=True, eq=False)
class LatentLayer:
    """Latents reading layer `layer`'s MLP input (`reads`) and writing MLP outputs (`W_dec` keys).

    Example::

        from mechscope.graphs import neuron_latents
        lay = neuron_latents(model, 1)           # a LatentLayer of MLP 1's own neurons
        lay.W_enc                                # (d_model, n)
        lay.preactivations(x)                    # x (batch, d_model) -> (batch, n)
    """

    layer: int
    reads: Site  # the site the encoder reads: the MLP's input (ln2.L with a norm, else mlp_in.L)
    W_enc: Tensor  # (d_in, n)
    b_enc: Tensor  # (n,)
    encode: Callable[[Tensor], Tensor]  # (rows, d_in) -> dense codes (rows, n)
    W_dec: Mapping[int, Tensor]  # target layer -> (n, d_model)
    b_dec: Mapping[int, Tensor]  # target layer -> (d_model,)
    name: str = ""

    def __post_init__(self) -> None:
        n = self.W_enc.shape[1]
        if self.b_enc.shape != (n,):
            raise LatentError(f"latents at layer {self.layer}: b_enc has shape {tuple(self.b_enc.shape)}, "
                              f"W_enc {tuple(self.W_enc.shape)} needs ({n},)")
        if not self.W_dec:
            raise LatentError(f"latents at layer {self.layer} write no layer: give at least one decoder")
        for t, W in self.W_dec.items():
            if t < self.layer:
                raise LatentError(f"latents at layer {self.layer} cannot write the earlier layer {t}'s MLP "
                                  "output (a cross-layer transcoder writes its own layer and later ones)")
            if W.shape[0] != n:
                raise LatentError(f"latents at layer {self.layer}: the decoder to layer {t} has "
                                  f"{W.shape[0]} rows, the encoder {n} latents")
            if t not in self.b_dec:
                raise LatentError(f"latents at layer {self.layer}: no decoder bias for layer {t}")

    @property
    def n(self) -> int:
        """The number of latents."""
        return self.W_enc.shape[1]

    def preactivations(self, x: Tensor) -> Tensor:
        """(rows, n) pre-activations x @ W_enc + b_enc of MLP inputs `x` (rows, d_in)."""
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    @staticmethod
    def from_dictionary(layer: int, dictionary, reads: Site) -> "LatentLayer":
        """A mechscope transcoder (any Dictionary with d_out) as the latents of `layer`."""
        c = dictionary.config
        mean = getattr(dictionary, "input_mean", None)
        if getattr(c, "apply_b_dec_to_input", False) or (mean is not None and bool(mean.abs().max() > 0)):
            raise LatentError(f"the dictionary for layer {layer} subtracts something from its input before "
                              "encoding; a transcoder for graphs reads raw MLP inputs (save it after training)")
        if getattr(dictionary, "W_skip", None) is not None:
            raise LatentError(f"the transcoder for layer {layer} has a skip connection (x W_skip), a path the "
                              "graph does not draw yet; use transcoders trained without --skip")
        W_enc, b_enc = dictionary.W_enc.detach(), dictionary.b_enc.detach()

        @torch.no_grad()
        def encode(x: Tensor) -> Tensor:
            return dictionary.encode(x)

        return LatentLayer(layer, reads, W_enc, b_enc, encode, {layer: dictionary.W_dec.detach()},
                           {layer: dictionary.b_dec.detach()}, name=type(dictionary).__name__)


def mlp_input_site(sites: list[Site], layer: int) -> Site:
    """Where layer `layer`'s MLP reads from: its norm's output, or the residual when it has no norm."""
    for kind in (Kind.LN2, Kind.MLP_IN):
        if Site(kind, layer) in sites:
            return Site(kind, layer)
    raise LatentError(f"layer {layer} has no MLP input site (ln2.{layer} or mlp_in.{layer}): "
                      "the model has no MLP there to replace")


def latent_layers(adapter, latents: Mapping[int, object], d_model: int) -> dict[int, LatentLayer]:
    """Check and convert a mapping layer -> transcoder (Dictionary or LatentLayer) for `adapter`.

    Example::

        from mechscope.graphs import latent_layers
        layers = latent_layers(model, {0: tc0, 1: tc1}, d_model=128)   # {layer: LatentLayer}
    """
    sites = list(adapter.sites())
    n_layers = sum(1 for s in sites if s.kind is Kind.MLP_OUT)
    out: dict[int, LatentLayer] = {}
    for layer, tc in sorted(latents.items()):
        if not 0 <= layer < n_layers:
            raise LatentError(f"a transcoder is given for layer {layer}; the model has MLPs at layers "
                              f"0..{n_layers - 1}")
        reads = mlp_input_site(sites, layer)
        if isinstance(tc, LatentLayer):
            lat = tc
        else:
            c = getattr(tc, "config", None)
            if c is None or getattr(c, "d_out", None) is None:
                raise LatentError(f"the dictionary for layer {layer} is not a transcoder (it has no d_out); "
                                  "train one with `mechscope dict train --arch transcoder`")
            want = f"{reads.short}"
            if c.site is not None and Site.parse(c.site) != reads:
                raise LatentError(f"the transcoder given for layer {layer} reads {c.site}, not {want}: "
                                  "it was trained for another layer or site")
            lat = LatentLayer.from_dictionary(layer, tc, reads)
        if lat.W_enc.shape[0] != d_model:
            raise LatentError(f"the transcoder for layer {layer} reads vectors of width {lat.W_enc.shape[0]}, "
                              f"the model's MLP input has width {d_model}: it belongs to another model")
        for t, W in lat.W_dec.items():
            if t >= n_layers:
                raise LatentError(f"the transcoder for layer {layer} writes layer {t}; the model has "
                                  f"{n_layers} layers")
            if W.shape[1] != d_model:
                raise LatentError(f"the transcoder for layer {layer} writes vectors of width {W.shape[1]} to "
                                  f"layer {t}; the model's MLP output has width {d_model}: it belongs to "
                                  "another model")
        out[layer] = lat
    return out


def neuron_latents(adapter, layer: int) -> LatentLayer:
    """A ReLU MLP's own neurons as latents: pre = x W_in + b_in, codes = ReLU(pre), decoder W_out.

    For a model whose MLPs are ReLU MLPs (compiled RASP programs, say) this replacement is exact
    (its error terms are zero up to rounding): a graph of the MLP itself. Another activation leaves
    the difference in the error terms, which the replacement's `errors` show.

    Example::

        from mechscope.graphs import LocalReplacement, neuron_latents
        model = ms.load("zoo:induction-quick")
        rep = LocalReplacement.build(model, ids, {1: neuron_latents(model, 1)})
    """
    w = adapter.weights()
    if getattr(w, "W_gate", None) is not None:
        raise LatentError("a gated MLP's neurons are not latents of one input direction each; use a transcoder")
    W_in, W_out = w.W_in[layer].detach(), w.W_out[layer].detach()
    zeros = lambda n: torch.zeros(n, dtype=W_in.dtype, device=W_in.device)  # noqa: E731
    b_in = w.b_in[layer].detach() if w.b_in is not None else zeros(W_in.shape[1])
    b_out = w.b_out[layer].detach() if w.b_out is not None else zeros(W_out.shape[1])
    reads = mlp_input_site(list(adapter.sites()), layer)

    def encode(x: Tensor) -> Tensor:
        return torch.relu(x.to(W_in.dtype) @ W_in + b_in)

    return LatentLayer(layer, reads, W_in, b_in, encode, {layer: W_out}, {layer: b_out}, name="neurons")
