"""Cross-layer transcoder (CLT; Ameisen et al. 2025): one sparse replacement for the MLPs of many layers.

Layer l's latents read layer l's MLP input and write to the MLP outputs of layer l and of every
later layer, through one decoder block per target layer:

    pre_l   = (x_l - μ_l) W_enc,l + b_enc,l            x_l: (batch, d_in), W_enc: (n_layers, d_in, m)
    codes_l = TopK_k(pre_l)                            k active latents per layer and token
    ŷ_t     = Σ_{l ≤ t} codes_l W_dec[l → t] + b_dec,t

so MLP t is replaced by what every layer up to t wrote to it. The latents are numbered layer by
layer (latent j belongs to layer j // m, m = d_sae / n_layers), and the decoder is stored flat,
W_dec (d_sae, n_layers · d_out), with the blocks l → t for t < l held at exactly zero (their
gradient is masked, so Adam never moves them). Each latent's decoder (all its target layers
together) has unit norm, as a crosscoder's does; the encoder is kept per layer, so a step costs one
(batch, d_in) x (d_in, m) product per layer, not a product with a block-diagonal matrix.

The loss is the sum over target layers of each layer's squared error divided by that layer's
variance (measured on the first batch), times d_out: every MLP counts alike however large its
output, and a layer's term is its FVU scaled as a one-layer transcoder's squared error is. Dead
latents train through the auxiliary-k loss, per layer: each layer's dead latents with the largest
pre-activations explain the residual error. As in `transcoder.py`, the encoder reads inputs centred
on the first batch's mean during training, folded into b_enc at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import _INIT_SALT, CentredInput, Dictionary, LossParts
from .sparse import SparseCodes, dense_threads, selected_preactivations, sparse_decode
from .topk import TopKConfig


@dataclass(frozen=True)
class CLTConfig(TopKConfig):
    """d_in and d_out are one layer's widths; d_sae counts the latents of all layers together (a
    multiple of n_layers); k is the active latents per layer and token.

    Example::

        from mechscope.dictionaries import CLTConfig, build
        clt = build(CLTConfig(d_in=128, d_sae=2048, d_out=128, k=16, n_layers=4))   # 512 latents per layer
    """

    n_layers: int = 2
    apply_b_dec_to_input: bool = False  # inputs and outputs live in different spaces

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"CLTConfig.n_layers must be >= 1, got {self.n_layers}")
        if self.d_out is None:
            raise ValueError("CLTConfig needs d_out, the width of one layer's MLP output")
        if self.d_sae % self.n_layers:
            raise ValueError(f"CLTConfig.d_sae ({self.d_sae}) must be a multiple of n_layers ({self.n_layers}): "
                             "it counts every layer's latents together")
        super().__post_init__()
        if self.k > self.per_layer:
            raise ValueError(f"CLTConfig.k ({self.k}) is per layer and must be <= d_sae / n_layers = {self.per_layer}")

    @property
    def per_layer(self) -> int:
        """m, the latents of one layer."""
        return self.d_sae // self.n_layers

    @property
    def in_width(self) -> int:
        """n_layers · d_in: every layer's MLP input side by side."""
        return self.n_layers * self.d_in

    @property
    def out_width(self) -> int:
        """n_layers · d_out: every layer's MLP output side by side."""
        return self.n_layers * self.d_out  # type: ignore[operator]


class CrossLayerTranscoder(CentredInput, Dictionary):
    """Cross-layer transcoder: layer l's latents read MLP l's input and write to the MLP outputs of layers l and
    later.

    Inputs are (batch, n_layers, d_in), reconstructions (batch, n_layers, d_out); see the module docstring.

    Example::

        from mechscope.dictionaries import build
        clt = build("clt", d_in=128, d_sae=2048, d_out=128, k=16, n_layers=4)
        y = clt(x)                               # x (batch, 4, d_in) MLP inputs -> (batch, 4, d_out) MLP outputs
    """

    architecture = "clt"
    uses_aux_k = True
    sparse_step = True
    config: CLTConfig

    def __init__(self, config: CLTConfig):
        super().__init__(config)
        c = config
        n, m, d_out = c.n_layers, c.per_layer, c.d_out
        source = torch.arange(c.d_sae) // m  # the layer each latent reads
        target = torch.arange(n * d_out) // d_out  # the layer each output column belongs to
        self.register_buffer("mask", (source[:, None] <= target[None, :]).float(), persistent=False)
        g = torch.Generator().manual_seed(_INIT_SALT + c.seed + 1)
        W_enc = torch.randn(n, c.d_in, m, generator=g)
        self.W_enc = nn.Parameter(W_enc / W_enc.norm(dim=1, keepdim=True))
        with torch.no_grad():
            self.W_dec.mul_(self.mask)
            self.normalise_decoder_()
        self.W_dec.register_hook(lambda grad: grad * self.mask)  # blocks l -> t < l never move
        self.register_buffer("layer_var", torch.ones(n), persistent=False)  # each target's variance (training)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """(n_layers, d_in): one MLP input per layer."""
        return (self.config.n_layers, self.config.d_in)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """(n_layers, d_out): one MLP output per layer."""
        return (self.config.n_layers, self.config.d_out)

    def split_batch(self, batch: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """(x (batch, n_layers, d_in), y (batch, n_layers, d_out)), or n_layers input tensors
        (batch, d_in) followed by n_layers target tensors (batch, d_out), as a store serves them."""
        n = self.config.n_layers
        if isinstance(batch, (tuple, list)) and len(batch) == 2 * n and n > 1:
            batch = (torch.stack(list(batch[:n]), 1), torch.stack(list(batch[n:]), 1))
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"a cross-layer transcoder trains on (inputs, targets) or {2 * n} tensors, one input "
                             f"per layer then one target per layer")
        x = self._flat(batch[0])
        y = batch[1].reshape(-1, self.config.out_width).to(self.W_enc.device, self.W_enc.dtype)
        return x, y

    @torch.no_grad()
    def init_from_batch_(self, x: Tensor, y: Tensor) -> None:
        """Set the input mean μ and each target layer's output variance from the first batch (input rows x, target
        rows y)."""
        c = self.config
        self.input_mean.copy_(x.mean(0))
        self.layer_var.copy_((y - y.mean(0)).reshape(-1, c.n_layers, c.d_out).pow(2).sum(-1).mean(0).clamp_min(1e-12))

    # --- encoding ---------------------------------------------------------------------------------
    def _pre(self, xc: Tensor) -> Tensor:
        """(batch, n_layers, m) pre-activations without a graph: one product per layer."""
        c = self.config
        with torch.no_grad(), dense_threads():
            pre = torch.bmm(xc.reshape(-1, c.n_layers, c.d_in).transpose(0, 1), self.W_enc).transpose(0, 1)
            return pre + self.b_enc.reshape(c.n_layers, c.per_layer)

    def _select(self, xc: Tensor, pre: Tensor, k: int, allowed: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """Per layer, the k largest pre-activations (among `allowed` latents, (d_sae,) bool, if given):
        values differentiable in the encoder (batch, n_layers·k) and global latent ids, row-major."""
        c = self.config
        B, n, m = pre.shape
        if allowed is not None:
            pre = pre.masked_fill(~allowed.reshape(1, n, m), float("-inf"))
        with dense_threads():
            top, idx = pre.topk(k, dim=-1, sorted=False)  # (B, n, k)
        offsets = torch.arange(0, (B + 1) * k, k, device=xc.device)
        xl = xc.reshape(B, n, c.d_in)
        vals = [selected_preactivations(xl[:, l].contiguous(), self.W_enc[l], self.b_enc[l * m:(l + 1) * m],
                                        top[:, l].reshape(-1), idx[:, l].reshape(-1), offsets).reshape(B, k)
                for l in range(n)]
        latents = idx + (torch.arange(n, device=idx.device) * m)[None, :, None]
        return torch.stack(vals, 1).reshape(B, n * k), latents.reshape(B, n * k)

    def codes(self, x: Tensor) -> SparseCodes:
        """Sparse codes of rows `x` (batch, n_layers · d_in): the top k latents of each layer, ReLU applied."""
        xc = self._centre(x)
        vals, lat = self._select(xc, self._pre(xc), self.config.k)
        return SparseCodes.from_topk(vals.relu(), lat, self.config.d_sae)

    # --- one layer at a time (the replacement model computes layer by layer) ----------------------
    @torch.no_grad()
    def encode_layer(self, layer: int, x: Tensor) -> Tensor:
        """(rows, m) dense codes of `layer`'s latents from that layer's MLP input rows (rows, d_in)."""
        c = self.config
        m = c.per_layer
        xc = x.to(self.W_enc.dtype) - self.input_mean.reshape(c.n_layers, c.d_in)[layer]
        pre = torch.addmm(self.b_enc[layer * m:(layer + 1) * m], xc, self.W_enc[layer])
        top, idx = pre.topk(c.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, top.relu())

    @torch.no_grad()
    def decode_layer(self, target: int, codes: dict[int, Tensor]) -> Tensor:
        """(rows, d_out) reconstruction of MLP `target` from the codes of layers <= target
        (`codes[l]` as `encode_layer` gives them)."""
        c = self.config
        m, d = c.per_layer, c.d_out
        out = self.b_dec[target * d:(target + 1) * d].expand(next(iter(codes.values())).shape[0], d).clone()
        for l in range(target + 1):
            out.addmm_(codes[l], self.W_dec[l * m:(l + 1) * m, target * d:(target + 1) * d])
        return out

    # --- training ---------------------------------------------------------------------------------
    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        """The training loss on a batch: each target layer's squared error over its output variance, plus the
        auxiliary-k loss.

        Logs the total squared error, the mean FVU, each layer's FVU (`fvu_layerT`) and `aux` when it applies.
        """
        c = self.config
        n, d = c.n_layers, c.d_out
        with torch.no_grad():
            xc = self._centre(x)
        pre = self._pre(xc)
        vals, lat = self._select(xc, pre, c.k)
        codes = SparseCodes.from_topk(vals.relu(), lat, c.d_sae)
        recon = self.decode(codes)
        err = (recon - target).pow(2).reshape(-1, n, d).sum(-1).mean(0)  # (n,) per target layer
        total = (err / self.layer_var).sum() * d
        with torch.no_grad():
            var = (target - target.mean(0)).pow(2).reshape(-1, n, d).sum(-1).mean(0).clamp_min(1e-12)
            fvu = err.detach() / var
        parts = {"mse": err.detach().sum(), "fvu": fvu.mean(),
                 **{f"fvu_layer{t}": fvu[t] for t in range(n)}}
        if c.aux_coefficient > 0 and dead is not None and bool(dead.any()):
            aux = self._aux(xc, pre, (target - recon).detach(), dead)
            total = total + c.aux_coefficient * aux
            parts["aux"] = aux.detach()
        return LossParts(total, parts, codes, recon)

    def _aux(self, xc: Tensor, pre: Tensor, residual: Tensor, dead: Tensor) -> Tensor:
        """Auxiliary-k loss per layer: in each layer, the dead latents with the largest pre-activations
        (k_aux / n_layers of them, at most as many as are dead in any layer) reconstruct the residual."""
        c = self.config
        per_layer_dead = int(dead.reshape(c.n_layers, c.per_layer).sum(1).max())
        k = max(1, min(c.k_aux // c.n_layers, per_layer_dead))
        vals, lat = self._select(xc, pre, k, allowed=dead)
        vals = torch.where(dead[lat], vals, torch.zeros_like(vals)).relu()  # a layer with fewer dead than k
        e_hat = sparse_decode(SparseCodes.from_topk(vals, lat, c.d_sae), self.W_dec)
        return (e_hat - residual).pow(2).sum(-1).mean()

    @torch.no_grad()
    def constrain_(self, latents: slice = slice(None)) -> None:
        """Zero the decoder blocks from a layer to earlier layers (in the rows of `latents`), then the base
        class' constraints."""
        self.W_dec[latents].mul_(self.mask[latents])
        super().constrain_(latents)

    @torch.no_grad()
    def fold_mean_(self) -> None:
        """Fold μ into the encoder biases, layer by layer (each layer's latents read that layer's μ)."""
        c = self.config
        mu = self.input_mean.reshape(c.n_layers, 1, c.d_in)
        self.b_enc.sub_(torch.bmm(mu, self.W_enc).reshape(-1))
        self.input_mean.zero_()
