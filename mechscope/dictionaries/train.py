"""Training a dictionary: Adam on batches of activations, with the architecture's constraints kept.

Steps of `train`:
1. take the first batch; with `normalise`, fix scales s_in, s_out so that E||x s_in||² = d_in
   (and likewise for the target); set the decoder bias to the target's mean; let the architecture
   initialise from the batch (`Dictionary.init_from_batch_`: JumpReLU thresholds, a transcoder's
   input mean). A dictionary that is already trained (`initialise=False`: fine-tuning, or a ReLU
   transcoder converted from a TopK one) keeps its weights; they are only rescaled to the scales;
2. per step: learning rate (linear warm-up, constant, linear decay over the last `decay_fraction`;
   each parameter group scales its own base rate, e.g. JumpReLU's thresholds), sparsity penalty
   ramp (`sparsity_warmup_fraction`) or, for a config with `target_l0`, the factor on the penalty
   from `target.L0Controller` (updated from each step's L0), the architecture's loss with the
   current dead-latent mask, backward; for unit-norm decoders the gradient along each decoder row
   is removed, Adam steps, constraints are restored (`Dictionary.constrain_`): `Reducer.step`;
3. dead latents: a latent is dead once it has not fired for `dead_after_tokens` rows; TopK-like
   architectures train dead latents through their auxiliary-k loss, others are resampled every
   `resample_every` steps (decoder direction: a high-error row's residual; Adam state reset);
4. every `log_every` steps a row of the training curve (loss parts, L0, dead fraction, lr, and the
   held-out FVU every `eval_every` steps when held-out rows are given);
5. at the end, fold the scales (and a transcoder's input mean) back into the weights, so the
   dictionary reads raw activations.

Data-parallel training (`reducer`, see `ddp`): each process trains on its own slice of every
batch; the first batch is gathered whole so that every process initialises alike, gradients are
averaged after each backward pass, each process updates its shard of the parameters (with Adam's
moments for that shard only) and the processes exchange the updates (`Reducer.step`), and fired
latents and L0 are combined across the processes (one exchange per step, started before the
backward pass so that it overlaps it), so the processes hold the same dictionary, and it is the
one a single process trains on the concatenated batches, up to the order of floating-point sums.
With `checkpointing`, the state is saved atomically every `every` steps before the last
(`checkpoint`) and a run started again resumes from it, replaying the batch stream up to its step
without training on it.

Run as `python -m mechscope.dictionaries.train` (or under `torchrun`) it trains on a store: see `ddp.main`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.progress import progress_bar
from . import checkpoint as ckpt
from .base import Dictionary
from .sparse import SparseCodes, one_thread_except_dense
from .target import L0Controller


@dataclass(frozen=True)
class TrainConfig:
    """How a dictionary is trained.

    Example::

        from mechscope.dictionaries import TrainConfig
        cfg = TrainConfig(tokens=2_000_000, batch_size=4096)
        cfg.steps, cfg.learning_rate(4608)
    """

    tokens: int  # rows (tokens) to train on
    batch_size: int = 4096  # rows per step
    lr: float | None = None  # Adam learning rate; None: 2e-4 * sqrt(2^14 / d_sae) (Gao et al. 2024's scaling)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    warmup_steps: int = 0  # linear learning-rate warm-up
    decay_fraction: float = 0.2  # the learning rate decays linearly to 0 over this last share of steps
    sparsity_warmup_fraction: float = 0.05  # an L1 / L0 penalty ramps in over this first share of steps
    normalise: bool = True  # train on inputs scaled to E||x||² = d_in; the scale is folded back at the end
    initialise: bool = True  # False: the dictionary is already trained; keep its weights (no first-batch init)
    dead_after_tokens: int = 1 << 19  # a latent that has not fired for this many rows is dead
    resample_every: int | None = None  # resample dead latents every N steps (architectures without aux-k)
    log_every: int = 20  # steps between rows of the training curve
    eval_every: int | None = None  # steps between held-out evaluations (None: at the end only)
    seed: int = 0  # seed of resampling draws

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig.tokens and batch_size must be positive, got {self.tokens}, {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive or None, got {self.lr}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        for f in ("decay_fraction", "sparsity_warmup_fraction"):
            if not 0 <= getattr(self, f) <= 1:
                raise ValueError(f"TrainConfig.{f} must be in [0, 1], got {getattr(self, f)}")
        for f in ("warmup_steps", "dead_after_tokens"):
            if getattr(self, f) < 0:
                raise ValueError(f"TrainConfig.{f} must be >= 0, got {getattr(self, f)}")
        for f in ("resample_every", "eval_every", "log_every"):
            v = getattr(self, f)
            if v is not None and v < 1:
                raise ValueError(f"TrainConfig.{f} must be positive{' or None' if f != 'log_every' else ''}, got {v}")

    @property
    def steps(self) -> int:
        """Optimiser steps: tokens // batch_size, at least 1."""
        return max(1, self.tokens // self.batch_size)

    def learning_rate(self, d_sae: int) -> float:
        """The learning rate used for a dictionary with d_sae latents."""
        return self.lr if self.lr is not None else 2e-4 * math.sqrt(2**14 / d_sae)


@dataclass
class TrainResult:
    """A trained dictionary (already reading raw activations) and how its training went.

    Example::

        from mechscope.dictionaries import TrainConfig, train
        res = train(sae, batches, TrainConfig(tokens=1_000_000))
        res.dictionary, res.curve[-1]            # the trained SAE and its last logged losses
        res.tokens_per_second
    """

    dictionary: Dictionary
    curve: list[dict[str, float]]
    config: TrainConfig
    scale_in: float = 1.0
    scale_out: float = 1.0
    tokens: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # CPU time of this process (all its threads) over the same loop as `seconds`

    @property
    def tokens_per_second(self) -> float:
        """Training throughput (NaN when no time was measured)."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record: architecture, both configs, tokens, time, scales and the curve's last entry."""
        return {"architecture": self.dictionary.architecture, "dictionary": self.dictionary.config.to_dict(),
                "train": asdict(self.config), "tokens": self.tokens, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds,
                "scale_in": self.scale_in, "scale_out": self.scale_out, "final": self.curve[-1] if self.curve else {}}


class Reducer:
    """How `train` combines what several data-parallel processes computed; this one is a single process."""

    world, rank = 1, 0

    def gather(self, t: Tensor) -> Tensor:
        """Every process's `t`, concatenated along rows in rank order."""
        return t

    def attach(self, dictionary: Dictionary, opt: torch.optim.Adam) -> tuple[Any, Callable[[], None]]:
        """Prepare to train the parameters `opt` optimises over the processes (called before the first
        backward pass); returns the optimizer this process steps (`opt` here; in several processes,
        one over its shard of the parameters) and the function to call when training ends."""
        return opt, lambda: None

    def step(self, dictionary: Dictionary, opt: Any) -> None:
        """After the backward pass: one optimizer step with the architecture's constraints (the
        gradient along each unit-norm decoder row removed, Adam, `Dictionary.constrain_`), on the
        gradients' mean over the processes."""
        if dictionary.unit_norm_decoder:
            dictionary.remove_parallel_grads_()
        opt.step()
        dictionary.constrain_()

    def any(self, mask: Tensor) -> Tensor:
        """True where any process has True."""
        return mask

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes."""
        return value

    def start_step_stats(self, fired: Tensor, l0: float) -> Callable[[], tuple[Tensor, float]]:
        """Begin combining a step's fired-latent mask (any process) and L0 (mean over processes);
        the returned function waits for the result. Started before the backward pass, the exchange
        overlaps it."""
        return lambda: (fired, l0)

    def barrier(self) -> None:
        """Wait until every process is here."""


def batches_from_tensors(*tensors: Tensor, batch_size: int, seed: int = 0) -> Iterator[tuple[Tensor, ...]]:
    """Endless shuffled batches of rows of in-memory tensors (a new permutation each pass).

    Example::

        from mechscope.dictionaries import batches_from_tensors
        batches = batches_from_tensors(x, y, batch_size=4096)   # x (rows, d_in), y (rows, d_out)
        xb, yb = next(batches)                                   # (4096, d_in), (4096, d_out)
    """
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"tensors must have the same number of rows, got {[t.shape[0] for t in tensors]}")
    if not 1 <= batch_size <= n:  # a batch larger than the rows would never be yielded
        raise ValueError(f"batch_size must be between 1 and the number of rows ({n}), got {batch_size}")
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for s in range(0, n - batch_size + 1, batch_size):
            idx = perm[s:s + batch_size]
            yield tuple(t[idx] for t in tensors)


def _adam(dictionary: Dictionary, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam over the dictionary's parameter groups (each remembers its base_lr for the schedule),
    fused into one pass over each tensor where the device and dtype allow it."""
    groups = [dict(g, base_lr=g["lr"]) for g in dictionary.optimizer_groups(lr)]
    try:
        return torch.optim.Adam(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(groups, lr=lr, betas=betas)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    steps = cfg.steps
    f = 1.0
    if cfg.warmup_steps and step < cfg.warmup_steps:
        f = (step + 1) / cfg.warmup_steps
    decay_start = int(steps * (1 - cfg.decay_fraction))
    if cfg.decay_fraction > 0 and step >= decay_start:
        f = min(f, (steps - step) / max(1, steps - decay_start))
    return f


def _scales(dictionary: Dictionary, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(s_in, s_out) with E||x s_in||² = in_width (x as the encoder reads it, see
    `Dictionary.input_energy`) and E||y s_out||² = out_width on this batch; an autoencoder's input
    and target share s_in."""
    s_in = math.sqrt(dictionary.config.in_width / float(dictionary.input_energy(x).clamp_min(1e-12)))
    if dictionary.config.apply_b_dec_to_input:
        return s_in, s_in
    return s_in, math.sqrt(dictionary.config.out_width / float(y.pow(2).sum(-1).mean().clamp_min(1e-12)))


def _fired(codes: Any) -> Tensor:
    if isinstance(codes, SparseCodes):
        return codes.fired() > 0
    return (codes > 0).any(0)


def _l0(codes: Any) -> float:
    if isinstance(codes, SparseCodes):
        return float((codes.values != 0).sum()) / max(1, codes.batch)
    return float((codes != 0).sum(-1).float().mean())


def train(dictionary: Dictionary, batches: Iterable[Tensor | tuple[Tensor, ...]], config: TrainConfig, *,
          held_out: Tensor | tuple[Tensor, ...] | None = None, progress: bool = True,
          description: str | None = None, reducer: Reducer | None = None,
          checkpointing: ckpt.Checkpointing | None = None) -> TrainResult:
    """Train `dictionary` in place on `batches` ((x,) or (x, target) rows) for `config.tokens` rows.

    With a `reducer` of several processes, `batches` are this process's slices and `config.tokens`
    and `config.batch_size` count the rows of all processes together.

    Example::

        from mechscope.dictionaries import ShuffleBuffer, TrainConfig, build, train
        sae = build("topk", d_in=576, d_sae=4608, k=32)
        res = train(sae, ShuffleBuffer(store, ["resid_post.14"], 4096), TrainConfig(tokens=2_000_000))
        # batches: x (batch, d_in) rows, or (x, target) rows for a transcoder
    """
    red = reducer or Reducer()
    if config.batch_size % red.world:
        raise ValueError(f"the batch of {config.batch_size} rows cannot be split equally over {red.world} processes")
    if red.world > 1 and config.resample_every and not dictionary.uses_aux_k:
        raise ValueError("resampling dead latents (resample_every) is single-process only; train this "
                         f"{dictionary.architecture} dictionary in one process or without resampling")
    it = iter(batches)
    first = next(it)
    whole = tuple(red.gather(t) for t in (first if isinstance(first, tuple) else (first,)))
    x0, y0 = dictionary.split_batch(whole if len(whole) > 1 else whole[0])
    s_in, s_out = _scales(dictionary, x0, y0) if config.normalise else (1.0, 1.0)
    if config.initialise:
        dictionary.init_decoder_bias_((y0 * s_out).mean(0))
        dictionary.init_from_batch_(x0 * s_in, y0 * s_out)
    else:  # a trained dictionary reads raw rows: unfold the scales, folded back at the end as usual
        dictionary.fold_scale_(1.0 / s_in, 1.0 / s_out)
    dictionary.constrain_()
    dictionary.train()
    d_sae = dictionary.config.d_sae
    base_lr = config.learning_rate(d_sae)
    opt = _adam(dictionary, base_lr, config.betas)
    since_fired = torch.zeros(d_sae, dtype=torch.int64, device=dictionary.W_enc.device)
    g = torch.Generator().manual_seed(config.seed)
    curve: list[dict[str, float]] = []
    steps = config.steps
    ramp = max(1, int(steps * config.sparsity_warmup_fraction))
    target_l0 = getattr(dictionary.config, "target_l0", None)
    controller = L0Controller(target_l0) if target_l0 is not None else None  # replaces the ramp
    seen, start = 0, 0
    ident = ckpt.identity(dictionary, config, red.world) if checkpointing else ""
    if checkpointing is not None and checkpointing.path.is_file():
        rest, state = ckpt.load(checkpointing.path, ident, dictionary, opt)
        since_fired.copy_(rest["since_fired"])
        g.set_state(rest["rng"])
        start, seen, s_in, s_out, curve = state["step"], state["seen"], state["s_in"], state["s_out"], state["curve"]
        if controller is not None:
            controller.integral, controller.error = state["controller"]
        for _ in range(start - 1):  # the batches the checkpointed steps trained on (the first is taken)
            next(it)
    bar = progress_bar(total=steps, initial=start, desc=description or f"train {dictionary.architecture}",
                       unit="step", disable=not progress, mininterval=1.0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    batch = first
    recent: deque[Tensor] = deque(maxlen=8)  # the last inputs, for a dictionary's end-of-training calibration
    opt, detach = red.attach(dictionary, opt)
    try:
        for step in range(start, steps):
            if step > 0:
                batch = next(it)
            x, y = dictionary.split_batch(batch)
            if config.normalise:
                same = y is x
                x = x * s_in
                y = x if same else y * s_out
            recent.append(x)
            lr_factor = _lr_factor(step, config)
            lr = base_lr * lr_factor
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_factor
            sparsity_scale = controller.scale if controller is not None else min(1.0, (step + 1) / ramp)
            dead = since_fired >= config.dead_after_tokens
            with one_thread_except_dense() if dictionary.sparse_step else nullcontext():
                out = dictionary.loss(x, y, dead if bool(dead.any()) else None, sparsity_scale)
                step_stats = red.start_step_stats(_fired(out.codes), _l0(out.codes))  # overlaps the backward pass
                opt.zero_grad(set_to_none=True)
                out.total.backward()
                red.step(dictionary, opt)
                fired, l0 = step_stats()
            if controller is not None:
                controller.update(l0)
            rows = x.shape[0] * red.world
            since_fired += rows
            since_fired[fired] = 0
            seen += rows
            if (config.resample_every and not dictionary.uses_aux_k and (step + 1) % config.resample_every == 0
                    and bool(dead.any())):
                _resample(dictionary, opt, x, y, out.recon.detach(), dead, g)
                since_fired[dead] = 0
            last = step + 1 == steps
            if (step + 1) % config.log_every == 0 or last or step == 0:
                row = {"step": step + 1, "tokens": seen, "loss": red.mean(float(out.total.detach())), "lr": lr,
                       "l0": l0, "dead_fraction": float(dead.float().mean()),
                       **({"sparsity_scale": sparsity_scale} if controller is not None else {}),
                       **{k: float(v) for k, v in out.parts.items()}}
                if held_out is not None and (last or (config.eval_every and (step + 1) % config.eval_every == 0)):
                    row["held_out_fvu"] = _held_out_fvu(dictionary, held_out, s_in, s_out)
                curve.append(row)  # one row of the training curve
                bar.set_postfix(fvu=f"{row.get('fvu', float('nan')):.3f}", l0=f"{row['l0']:.1f}",
                                dead=f"{row['dead_fraction']:.2f}")
            if checkpointing is not None and (step + 1) % checkpointing.every == 0 and not last:
                moments = opt.state_dict()["state"]  # every process: a sharded optimizer gathers its pieces
                if red.rank == 0:
                    ckpt.save(checkpointing.path, ident, dictionary, moments,
                              {"since_fired": since_fired, "rng": g.get_state()},
                              {"step": step + 1, "seen": seen, "s_in": s_in, "s_out": s_out, "curve": curve,
                               "controller": [controller.integral, controller.error] if controller else None})
                red.barrier()  # no process runs ahead of a checkpoint that is not written yet
            bar.update(1)
    finally:
        detach()
    bar.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    calibrate = getattr(dictionary, "calibrate_", None)
    if calibrate is not None:  # statistics that must match the final weights (BatchTopK's threshold)
        calibrate([red.gather(r) for r in recent])  # every process calibrates on the same rows
        if held_out is not None and curve and "held_out_fvu" in curve[-1]:  # measured again, calibrated
            curve[-1]["held_out_fvu"] = _held_out_fvu(dictionary, held_out, s_in, s_out)
    dictionary.eval()
    dictionary.fold_scale_(s_in, s_out)
    info = {"sparsity_scale": controller.scale} if controller is not None else {}  # λ's final factor
    return TrainResult(dictionary, curve, config, s_in, s_out, seen, seconds, info, cpu_seconds)


@torch.no_grad()
def _held_out_fvu(dictionary: Dictionary, held_out: Tensor | tuple[Tensor, ...], s_in: float, s_out: float
                  ) -> float:
    was = dictionary.training
    dictionary.eval()
    x, y = dictionary.split_batch(held_out)
    recon = dictionary.reconstruct(x * s_in, dictionary.codes(x * s_in)) / s_out
    dictionary.train(was)
    return float((recon - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12))


@torch.no_grad()
def _resample(dictionary: Dictionary, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, recon: Tensor,
              dead: Tensor, g: torch.Generator) -> None:
    """Point dead latents at rows the dictionary reconstructs worst (Bricken et al. 2023, simplified).

    Rows are drawn with probability proportional to their squared error; a dead latent's decoder
    row becomes the drawn row's residual direction and its encoder column the drawn input's
    direction at 0.2 times the mean norm of the live encoder columns; its encoder bias is zeroed,
    the architecture resets what else it keeps per latent (`Dictionary.reinit_latents_`: JumpReLU's
    thresholds) and Adam's moments for those entries are reset.
    """
    idx = dead.nonzero().squeeze(1)
    err = (y - recon).pow(2).sum(-1)
    if float(err.sum()) <= 0:
        return
    weights = (err.pow(2) / err.pow(2).sum()).to("cpu", torch.float64)  # the generator lives on the CPU
    pick = torch.multinomial(weights, idx.numel(), replacement=True, generator=g).to(y.device)
    resid = y[pick] - recon[pick]
    resid = resid / resid.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    xin = dictionary._centre(x[pick])
    xin = xin / xin.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    scale = 0.2 * float(dictionary.W_enc[:, alive].norm(dim=0).mean()) if bool(alive.any()) else 0.2
    dictionary.W_dec[idx] = resid.to(dictionary.W_dec.dtype)
    dictionary.W_enc[:, idx] = (xin * scale).t().to(dictionary.W_enc.dtype)
    dictionary.b_enc[idx] = 0.0
    more = dictionary.reinit_latents_(idx, x)
    for p, where in ((dictionary.W_dec, (idx,)), (dictionary.W_enc, (slice(None), idx)), (dictionary.b_enc, (idx,)),
                     *more):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][where] = 0.0


if __name__ == "__main__":  # python -m mechscope.dictionaries.train, under torchrun or alone
    import sys

    from .ddp import main

    sys.exit(main())
