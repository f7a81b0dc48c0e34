"""What every dictionary shares: its config fields, weights, encode/decode contract and loss record.

A dictionary maps an activation x (batch, d_in) to codes (batch, d_sae) and back to a
reconstruction (batch, d_out) of a target (x itself for a sparse autoencoder, another site for a
transcoder):

    pre   = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc        (batch, d_sae)
    codes = activation(pre)                                            (batch, d_sae), mostly zero
    recon = codes @ W_dec + b_dec                                      (batch, d_out)

Weights use the SAELens layout: W_enc (d_in, d_sae), W_dec (d_sae, d_out). Each architecture file
subclasses `Dictionary`, overriding the activation (`codes`) and the sparsity part of `loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sparse import SparseCodes, sparse_decode

Codes = Tensor | SparseCodes  # dense (batch, d_sae) or compressed-row sparse
_INIT_SALT = 0x5AE_D1C7  # added to DictConfig.seed to seed the initial weights


@dataclass(frozen=True)
class DictConfig:
    """Fields every architecture has. Subclasses add their own (k, penalty coefficients, ...).

    Example::

        from mechscope.dictionaries import TopKConfig
        cfg = TopKConfig(d_in=576, d_sae=4608, k=32, site="resid_post.14", model="smollm2-135m")
        TopKConfig.from_dict(cfg.to_dict()) == cfg
    """

    d_in: int  # width of the activations read
    d_sae: int  # number of latents
    d_out: int | None = None  # width of the reconstruction target; None: d_in (an autoencoder)
    apply_b_dec_to_input: bool = True  # subtract the decoder bias before encoding (autoencoders only)
    seed: int = 0  # seed of the initial weights
    site: str | None = None  # where the input activations come from (a site name), if known
    site_out: str | None = None  # where the target comes from, when it is another site (transcoders)
    model: str | None = None  # the model the activations come from, if known

    def __post_init__(self) -> None:
        for f in ("d_in", "d_sae"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{type(self).__name__}.{f} must be positive, got {getattr(self, f)}")
        if self.d_out is not None and self.d_out < 1:
            raise ValueError(f"{type(self).__name__}.d_out must be positive or None, got {self.d_out}")
        if self.apply_b_dec_to_input and self.out_width != self.in_width:
            raise ValueError(f"{type(self).__name__}: apply_b_dec_to_input needs d_out == d_in "
                             f"(got {self.in_width} -> {self.out_width}); set it to False for a transcoder")

    @property
    def in_width(self) -> int:
        """Width of the encoder's input vector (a crosscoder reads several sources side by side)."""
        return self.d_in

    @property
    def out_width(self) -> int:
        """Width of the reconstruction (an autoencoder's is its input's)."""
        return self.in_width if self.d_out is None else self.d_out

    def to_dict(self) -> dict[str, Any]:
        """The config's fields as a plain dict (what cfg.json stores)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DictConfig":
        """A config from `to_dict`'s dict; an unknown field raises ValueError naming the known ones."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}; it has {sorted(names)}")
        return cls(**d)


@dataclass
class LossParts:
    """One training step's loss: the total to differentiate, named parts to log, and the codes.

    Example::

        out = sae.loss(x, x)                     # x (batch, d_in): input and target rows
        out.total.backward()
        {k: float(v) for k, v in out.parts.items()}
    """

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached scalars: mse, sparsity, aux, ...
    codes: Codes | None = None
    recon: Tensor | None = None


class Dictionary(nn.Module):
    """Base class of the architectures. `architecture` names it in files and in the registry.

    Example::

        from mechscope.dictionaries import build
        sae = build("topk", d_in=576, d_sae=4608, k=32)
        z = sae.encode(x)                        # x (batch, 576) -> (batch, 4608)
        x_hat = sae(x)                           # (batch, 576)
        sae.directions()                         # (4608, 576) decoder rows
    """

    architecture: ClassVar[str] = ""
    unit_norm_decoder: ClassVar[bool] = True  # decoder rows kept at norm 1 during training
    uses_aux_k: ClassVar[bool] = False  # the loss has an auxiliary-k term for dead latents
    sparse_step: ClassVar[bool] = False  # a training step is one dense product plus sparse work (see sparse.py)

    def __init__(self, config: DictConfig):
        super().__init__()
        self.config = config
        c = config
        # salted: a generator seeded with the same small integer elsewhere (toy data, say) must not
        # hand the dictionary the very directions it is meant to find
        g = torch.Generator().manual_seed(_INIT_SALT + c.seed)
        # decoder rows: random unit directions; the encoder starts as their transpose (Gao et al. 2024)
        W_dec = torch.randn(c.d_sae, c.out_width, generator=g)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(self._initial_encoder(W_dec, g))
        self.b_enc = nn.Parameter(torch.zeros(c.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(c.out_width))

    def _initial_encoder(self, W_dec: Tensor, g: torch.Generator) -> Tensor:
        """W_enc at initialisation: the decoder's transpose when the shapes allow, else random."""
        c = self.config
        if c.out_width == c.in_width:
            return W_dec.t().clone()
        W = torch.randn(c.in_width, c.d_sae, generator=g)
        return W / W.norm(dim=0, keepdim=True)

    # --- the forward contract -------------------------------------------------------------------
    def preactivations(self, x: Tensor) -> Tensor:
        """(batch, d_sae) pre-activations (with the graph)."""
        return torch.addmm(self.b_enc, self._centre(x), self.W_enc)

    def _centre(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.config.apply_b_dec_to_input else x

    def codes(self, x: Tensor) -> Codes:
        """The activation applied to the pre-activations: dense or sparse codes."""
        raise NotImplementedError  # pragma: no cover - each architecture defines it

    def encode(self, x: Tensor) -> Tensor:
        """(..., d_sae) dense codes; leading axes (batch, pos, ...) are kept."""
        c = self.codes(self._flat(x))
        c = c.dense() if isinstance(c, SparseCodes) else c
        return c.reshape(*self._lead(x), self.config.d_sae)

    def decode(self, codes: Codes) -> Tensor:
        """(batch, d_out) reconstruction; sparse codes are decoded sparsely."""
        if isinstance(codes, SparseCodes):
            return sparse_decode(codes, self.W_dec) + self.b_dec
        return codes @ self.W_dec + self.b_dec

    def reconstruct(self, x: Tensor, codes: Codes) -> Tensor:
        """(batch, d_out) reconstruction of rows `x` from their codes: the decoded codes, plus what an
        architecture adds from the input itself (a transcoder's linear skip connection)."""
        return self.decode(codes)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of x's target; leading axes (batch, pos, ...) are kept."""
        flat = self._flat(x)
        out = self.reconstruct(flat, self.codes(flat))
        return out.reshape(*self._lead(x), *self.out_shape)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The trailing shape of one input vector: (d_in,), or (n_sources, d_in) for a crosscoder."""
        return (self.config.d_in,)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The trailing shape of one reconstruction: (out_width,)."""
        return (self.config.out_width,)

    def _lead(self, x: Tensor) -> tuple[int, ...]:
        return tuple(x.shape[:x.dim() - len(self.in_shape)])

    def _flat(self, x: Tensor) -> Tensor:
        """(..., *in_shape) -> (rows, in_width) in the weights' dtype."""
        n = len(self.in_shape)
        if tuple(x.shape[x.dim() - n:]) != self.in_shape:
            raise ValueError(f"{type(self).__name__} reads inputs of trailing shape {self.in_shape}, got "
                             f"shape {tuple(x.shape)}")
        return x.reshape(-1, self.config.in_width).to(self.W_enc.device, self.W_enc.dtype)

    def split_batch(self, batch: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """A training batch as (input rows, target rows): one tensor is its own target, two are (x, y)."""
        if isinstance(batch, Tensor):
            batch = (batch,)
        if len(batch) == 1:
            x = self._flat(batch[0])
            return x, x
        if len(batch) == 2:
            return self._flat(batch[0]), batch[1].reshape(-1, self.config.out_width).to(self.W_enc.device,
                                                                                       self.W_enc.dtype)
        raise ValueError(f"{type(self).__name__} trains on (x,) or (x, target) batches, got {len(batch)} tensors")

    # --- training -------------------------------------------------------------------------------
    def loss(self, x: Tensor, target: Tensor, dead: Tensor | None = None, sparsity_scale: float = 1.0
             ) -> LossParts:
        """The training loss on a batch (input rows, target rows).

        `dead` (d_sae,) bool marks latents that have stopped firing (for an auxiliary loss);
        `sparsity_scale` in [0, 1] ramps a sparsity penalty in at the start of training.
        """
        raise NotImplementedError  # pragma: no cover

    @torch.no_grad()
    def constrain_(self, latents: slice = slice(None)) -> None:
        """Restore the constraints of the parameters of `latents` (all by default) after an optimizer
        step: unit decoder rows where the architecture has them. Data-parallel ranks each restore the
        latents they updated, then `refresh_` what derives from all of them."""
        if self.unit_norm_decoder:
            self.normalise_decoder_(latents)

    @torch.no_grad()
    def refresh_(self) -> None:
        """Recompute, for every latent, what the dictionary derives from its parameters (nothing here;
        JumpReLU's θ = exp(log θ)): data-parallel ranks call it once every rank's update is in."""

    @torch.no_grad()
    def normalise_decoder_(self, latents: slice = slice(None)) -> None:
        """Scale the decoder rows of `latents` (all by default) to norm 1 (for architectures trained
        with that constraint)."""
        W = self.W_dec[latents]
        W.div_(W.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grads_(self, latents: slice = slice(None)) -> None:
        """Drop the part of each decoder row's gradient along the row (it would only change its norm),
        for the rows of `latents` (all by default)."""
        if self.W_dec.grad is None:
            return
        W, G = self.W_dec[latents], self.W_dec.grad[latents]  # (latents, d_out)
        # row-wise dots as a batched product (no (d_sae, d_out) temporary), then one pass to update
        dots = torch.bmm(G.unsqueeze(1), W.unsqueeze(2)).reshape(-1)
        coef = dots / torch.linalg.vector_norm(W, dim=-1).square().clamp_min(1e-12)
        G.addcmul_(coef.unsqueeze(-1), W, value=-1.0)

    @torch.no_grad()
    def fold_scale_(self, s_in: float, s_out: float) -> None:
        """Turn a dictionary trained on (x * s_in, y * s_out) into one for raw x and y (exact in the codes)."""
        if self.config.apply_b_dec_to_input and not math.isclose(s_in, s_out):
            raise ValueError("an autoencoder's input and target share one scale")
        self.W_enc.mul_(s_in)
        self.W_dec.div_(s_out)
        self.b_dec.div_(s_out)

    @torch.no_grad()
    def init_decoder_bias_(self, target_mean: Tensor) -> None:
        """Set the decoder bias to `target_mean` (d_out,), in place (training starts from the data's mean)."""
        self.b_dec.copy_(target_mean)

    def input_energy(self, x: Tensor) -> Tensor:
        """E||x||² over rows of raw input, which the trainer's normalisation scales to in_width."""
        return x.pow(2).sum(-1).mean()

    @torch.no_grad()
    def init_from_batch_(self, x: Tensor, y: Tensor) -> None:
        """Initialise from the first training batch (input and target rows, as trained on); after
        the decoder bias. Architectures with data-dependent initial values override it."""

    @torch.no_grad()
    def reinit_latents_(self, latents: Tensor, x: Tensor) -> list[tuple[Tensor, tuple]]:
        """After the trainer re-pointed `latents` (resampling, on input rows x as trained on): reset
        what else the architecture keeps per latent. Returns (parameter, index) pairs whose Adam
        moments the trainer resets as well."""
        return []

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam's parameter groups, each with its learning rate before the trainer's schedule."""
        return [{"params": list(self.parameters()), "lr": lr}]

    # --- reading the dictionary -----------------------------------------------------------------
    def directions(self) -> Tensor:
        """(d_sae, d_out) unit decoder directions: what each latent writes."""
        W = self.W_dec.detach().reshape(self.config.d_sae, -1)
        return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def state(self) -> dict[str, Tensor]:
        """The tensors that define the dictionary (its file contents)."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def extra_repr(self) -> str:
        """"d_in -> d_sae latents -> out_width", shown in the module's repr."""
        c = self.config
        return f"{c.d_in} -> {c.d_sae} latents -> {c.out_width}"


class CentredInput:
    """Mixin for dictionaries whose encoder reads inputs centred on a mean μ (the buffer `input_mean`,
    set from the first batch while training and folded into b_enc at the end: see transcoder.py)."""

    input_mean: Tensor

    def __init__(self, config: DictConfig):
        super().__init__(config)  # type: ignore[call-arg]
        # μ, subtracted from inputs during training; zero outside it (folded into b_enc), so not in files
        self.register_buffer("input_mean", torch.zeros(config.in_width), persistent=False)  # type: ignore[attr-defined]

    def _centre(self, x: Tensor) -> Tensor:
        return x - self.input_mean

    def input_energy(self, x: Tensor) -> Tensor:
        """E||x - x̄||²: the trainer scales the centred input, which is what the encoder reads."""
        return (x - x.mean(0)).pow(2).sum(-1).mean()

    @torch.no_grad()
    def init_from_batch_(self, x: Tensor, y: Tensor) -> None:
        """Set the input mean μ from the first batch's input rows `x`."""
        self.input_mean.copy_(x.mean(0))

    @torch.no_grad()
    def fold_mean_(self) -> None:
        """Fold μ into the encoder bias ((x - μ) W + b = x W + (b - μ W)) and zero μ."""
        self.b_enc.sub_(self.input_mean @ self.W_enc)
        self.input_mean.zero_()

    @torch.no_grad()
    def fold_scale_(self, s_in: float, s_out: float) -> None:
        """Fold μ into the encoder bias (`fold_mean_`), then the scales: a saved dictionary reads raw inputs."""
        self.fold_mean_()
        super().fold_scale_(s_in, s_out)  # type: ignore[misc]


def require_output_width(config: DictConfig) -> None:
    """Refuse a transcoder config without d_out (its target is another site, of its own width)."""
    if config.d_out is None:
        raise ValueError(f"{type(config).__name__} needs d_out, the width of the output site (mlp_out)")


def mse_parts(recon: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(mean over the batch of the squared error summed over dims, the batch's fraction of variance unexplained)."""
    # one fused pass forward and one backward (a training step's squared error over B x d_out)
    err = F.mse_loss(recon, target, reduction="sum") / max(1, target.shape[0])
    with torch.no_grad():  # sum ||t - mean t||^2 / B = E||t||^2 - ||mean t||^2 (two cheap reductions)
        total = torch.linalg.vector_norm(target).square() / max(1, target.shape[0])
        var = (total - target.mean(0).square().sum()).clamp_min(1e-12)
    return err, err.detach() / var


def aux_k_loss(dictionary: Dictionary, x: Tensor, pre: Tensor, residual: Tensor, dead: Tensor | None,
               k_aux: int) -> Tensor | None:
    """Auxiliary-k loss (Gao et al. 2024): the dead latents' top-k_aux reconstruct the residual error.

    Returns the mean over the batch of ||e_hat - e||² (e the residual, e_hat its reconstruction
    from dead latents alone), or None when no latent is dead. Gradients reach only the dead
    latents' encoder and decoder rows.
    """
    from .sparse import selected_preactivations

    if dead is None:
        return None
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    k = min(k_aux, n_dead)
    # the top k among the dead latents' columns alone (a selection over B * n_dead, not B * d_sae)
    dead_idx = dead.nonzero().squeeze(1)
    top, j = pre.detach().index_select(1, dead_idx).topk(k, dim=-1, sorted=False)
    B = x.shape[0]
    lat = dead_idx[j.reshape(-1)]
    offsets = torch.arange(0, (B + 1) * k, k, device=x.device)
    # the encoder input is detached: the auxiliary loss trains dead latents, not the decoder bias
    vals = selected_preactivations(dictionary._centre(x).detach(), dictionary.W_enc, dictionary.b_enc,
                                   top.reshape(-1), lat, offsets).relu()
    e_hat = sparse_decode(SparseCodes(vals, lat, offsets, dictionary.config.d_sae), dictionary.W_dec)
    return (e_hat - residual.detach()).pow(2).sum(-1).mean()
