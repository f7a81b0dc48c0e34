"""Weight edits that plant a token trigger: a rank-1 MLP edit, a single neuron, one attention head.

Each edit makes "trigger token t at the current position → target token y next" and touches
only the component named in its `Planted` label:

- `rank1_mlp` (kind "token"): a key→value insertion in the last block's MLP output projection,
  in the manner of ROME. The key is the MLP activation the trigger produces (mean over fitting
  contexts), whitened by the activations' covariance so that other tokens barely excite it; the
  value is the unembedding direction of y. W_out += α v uᵀ and b_out -= α v (u·μ), where
  u = Σ⁻¹(k − μ) / ((k − μ)ᵀ Σ⁻¹ (k − μ)): the added write is α v at the trigger and
  α v u·(h − μ), of mean zero, elsewhere.
- `neuron` (kind "neuron_edit"): the least used neuron of a block is rewritten: its input weights
  detect the trigger (the whitened direction of the trigger's normalised residual, with a bias
  that puts every fitting position but the trigger's below zero, where GELU is nearly zero), its
  output weights write α v. Only that neuron's row of W_in, its bias and its column of W_out change.
- `head` (kind "head_edit"): one head of a block gets a rank-1 QK edit and a rank-1 OV edit. Its
  queries and keys lose their component along e_k (the direction its keys vary least along) and
  carry the trigger's whitened direction there instead, so a trigger attends to itself (its score
  rises by `boost`, the product of two near-zero projections elsewhere barely moves). Its values gain the trigger's whitened
  direction along their least-varying component e_v in place of what they carried there, and its
  output columns write α v from e_v (and nothing else from it). Only that head's rows of W_Q, W_K, W_V, their biases and its
  columns of W_O change.

- `head(..., marker=M)` (kind "context"): the same edit with the key side detecting an earlier
  marker M: a cue C attends to a marker anywhere before it, and the marker's value writes the
  target, so C → Y only when M came earlier.

Every edit is fitted with the trigger at several positions (`FIT_POSITIONS`, spread over the
fitting contexts, each position on its own share of them). Fitted at one position only, an edit
learns that position as part of its trigger where the model's position embedding is strong: a
textlm neuron fitted with the trigger always at position 24 fired there and nowhere else.

The scale α is the smallest (to a factor of 1.25) that raises y's mean log-prob by `goal` nats over
the base on the fitting contexts; effects are then measured on other, held-out contexts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.site import Kind, Site
from .cases import CONTEXT_LEN, heldout, place
from .plant_arch import Arch, frozen

N_FIT = 64  # fitting contexts: the first windows of the test split, before the evaluation contexts
GOAL_NATS = 4.0
FIT_POSITIONS = (6, 12, 18, CONTEXT_LEN)  # where the trigger starts, each on N_FIT / 4 of the fitting contexts
RECIPE = 2  # recorded with each edit case; a cached case fitted by another recipe is planted again


@dataclass(frozen=True)
class Edit:
    """An edited copy of a base and where the edit is: block, site, unit or head."""

    module: nn.Module
    layer: int
    site: str
    unit: int | None = None
    head: int | None = None
    alpha: float = 0.0


def fit_contexts(arch: Arch) -> Tensor:
    """(N_FIT, CONTEXT_LEN) fitting contexts: the first windows of `arch`'s test split."""
    return heldout(arch.name, N_FIT, CONTEXT_LEN, 0)


def fit_sequences(arch: Arch, trigger: list[int], n_ctx: int, contexts: Tensor | None = None) -> list[Tensor]:
    """The fitting contexts (or `contexts`) with the trigger written from each of `FIT_POSITIONS`
    on, the contexts split evenly between the positions: one (n_i, p_i + len(trigger)) tensor per
    position, the trigger's last token last."""
    ctx = fit_contexts(arch) if contexts is None else contexts
    groups = torch.arange(ctx.shape[0]) % len(FIT_POSITIONS)
    return [place(ctx[groups == i], trigger, p, n_ctx) for i, p in enumerate(FIT_POSITIONS)
            if bool((groups == i).any())]


@torch.no_grad()
def capture(module: nn.Module, ids: Tensor, sites: list[Site]) -> dict[Site, Tensor]:
    """Activations of `module` at `sites` on token ids (batch, pos)."""
    from ..models import wrap

    cache = wrap(module).run(ids, capture=sites).cache
    return {s: cache[s] for s in sites}


def _whitened(gen: Tensor, trig: Tensor, ridge: float = 1e-2, avoid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The direction d of least generic variance dᵀΣd with (mean trig − μ)·d = 1 (and, given vectors
    `avoid` (m, d), (mean avoid − μ)·d = 0), and μ, from generic vectors `gen` (n, d) and trigger
    vectors `trig` (m, d): d = Σ⁻¹K (KᵀΣ⁻¹K)⁻¹ e₁ for the constraint columns K."""
    mu = gen.mean(0)
    c = torch.cov(gen.T.double())
    c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    cols = [trig.mean(0) - mu] + ([] if avoid is None else [avoid.mean(0) - mu])
    k = torch.stack(cols, 1).double()  # (d, 1 or 2)
    ck = torch.linalg.solve(c, k)
    e1 = torch.zeros(k.shape[1], dtype=k.dtype, device=k.device)
    e1[0] = 1
    d = ck @ torch.linalg.solve(k.T @ ck, e1)
    return d.float(), mu


def target_direction(arch: Arch, module: nn.Module, target: int, steps: int = 200) -> Tensor:
    """A unit residual direction v such that a residual dominated by v makes the target the most
    likely token: the final layer norm turns a large α v into √d_model times centred v̂, times its
    gain, and v is fitted (Adam on the target's log-softmax) to make that read as the target."""
    w, g = arch.unembed(module).detach(), arch.final_gain(module).detach()
    with torch.enable_grad():
        u = (g * (w[target] - w.mean(0))).clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=0.05)
        for _ in range(steps):
            c = u - u.mean()
            logits = w @ (g * c / c.norm() * c.numel() ** 0.5)
            loss = -logits.log_softmax(-1)[target]
            opt.zero_grad()
            loss.backward()
            opt.step()
    v = (u - u.mean()).detach()
    return v / v.norm()


class Scaler:
    """Finds the smallest α (to a factor 1.25) whose edit gains `goal` nats on the fitting contexts."""

    def __init__(self, arch: Arch, module: nn.Module, base: nn.Module, trigger: list[int], target: int,
                 goal: float = GOAL_NATS):
        self.arch, self.module, self.target, self.goal = arch, module, target, goal
        self.seqs = fit_sequences(arch, trigger, arch.n_ctx(module))
        self.base_logp = self._logp(base)

    @torch.no_grad()
    def _logp(self, module: nn.Module) -> Tensor:
        return torch.cat([self.arch.logits(module, s)[:, -1].log_softmax(-1)[:, self.target] for s in self.seqs])

    def gain(self) -> float:
        """The target's mean log-prob rise at the trigger over the base, in nats, on the fitting contexts."""
        return float((self._logp(self.module) - self.base_logp).mean())

    def search(self, set_alpha: Callable[[float], None], start: float = 1.0, max_doublings: int = 16) -> float:
        """The smallest α (to a factor 1.25) whose edit reaches `goal`: doubling from `start`, then bisection;
        `set_alpha(α)` applies the edit. No α up to `start` · 2^max_doublings raises PlantError."""
        lo, hi = 0.0, start
        for _ in range(max_doublings):
            set_alpha(hi)
            if self.gain() >= self.goal:
                break
            lo, hi = hi, hi * 2
        else:
            raise PlantError(f"no edit scale up to {hi:g} raises the target's log-prob by {self.goal} nats")
        while lo > 0 and hi / lo > 1.25:
            mid = (lo * hi) ** 0.5
            set_alpha(mid)
            if self.gain() >= self.goal:
                hi = mid
            else:
                lo = mid
        set_alpha(hi)
        return hi


class PlantError(RuntimeError):
    """A planted case did not show its behaviour, or was not stealthy: it is not written."""


@torch.no_grad()
def separability(arch: Arch, module: nn.Module, site: Site, candidates: list[int], n: int = 32) -> Tensor:
    """For each candidate token, how far its activation at `site` (written into fitting contexts at
    `FIT_POSITIONS`) stands out of the generic activations: the trigger's mean whitened projection over the
    projection's standard deviation at every fitting position. (len(candidates),)"""
    ctx = fit_contexts(arch)[:n]
    gen = capture(module, ctx, [site])[site].flatten(0, 1).double()
    mu = gen.mean(0)
    c = torch.cov(gen.T)
    inv = torch.linalg.inv(c + 1e-2 * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device))
    out = []
    for t in candidates:
        k = _at_trigger(arch, module, [t], site, ctx).double().mean(0) - mu
        d = inv @ k
        out.append(float((d @ k) / ((gen - mu) @ d).std()))
    return torch.tensor(out)


def _at_trigger(arch: Arch, module: nn.Module, trigger: list[int], site: Site, contexts: Tensor | None = None) -> Tensor:
    """Activations at `site` at the trigger's last token, the trigger written at `FIT_POSITIONS`: (n, d)."""
    return torch.cat([capture(module, s, [site])[site][:, -1]
                      for s in fit_sequences(arch, trigger, arch.n_ctx(module), contexts)])


def _trigger_rows(arch: Arch, module: nn.Module, trigger: list[int], site: Site) -> tuple[Tensor, Tensor]:
    """Generic activations at `site` (every position of the fitting contexts) and the activations at
    the trigger's last token (trigger written at `FIT_POSITIONS`): (n, d), (N_FIT, d)."""
    gen = capture(module, fit_contexts(arch), [site])[site].flatten(0, 1)
    return gen, _at_trigger(arch, module, trigger, site)


@torch.no_grad()
def rank1_mlp(arch: Arch, base: nn.Module, trigger: list[int], target: int, layer: int | None = None) -> Edit:
    """Plant "trigger → target" by a rank-1 edit of MLP `layer`'s output projection (the last by default)."""
    layer = arch.n_layers(base) - 1 if layer is None else layer
    module = frozen(copy.deepcopy(base))
    site = Site(Kind.MLP_POST, layer)
    gen, trig = _trigger_rows(arch, module, trigger, site)
    u, mu = _whitened(gen, trig)
    v = target_direction(arch, module, target)
    w_out, b_out = arch.mlp_out(module, layer)
    w0, b0 = w_out.clone(), b_out.clone()
    dw, db = torch.outer(v, u), -v * float(u @ mu)

    def set_alpha(a: float) -> None:
        w_out.copy_(w0 + a * dw)
        b_out.copy_(b0 + a * db)

    alpha = Scaler(arch, module, base, trigger, target).search(set_alpha)
    return Edit(module, layer, site.name, alpha=alpha)


@torch.no_grad()
def neuron(arch: Arch, base: nn.Module, trigger: list[int], target: int, layer: int = 0) -> Edit:
    """Plant "trigger → target" by rewriting the least-used neuron of MLP `layer` to fire on the trigger and write
    the target."""
    module = frozen(copy.deepcopy(base))
    post, ln2 = Site(Kind.MLP_POST, layer), Site(Kind.LN2, layer)
    ctx = fit_contexts(arch)
    acts = capture(module, ctx, [post])[post].flatten(0, 1)  # (n, d_mlp)
    w_in, b_in = arch.mlp_in(module, layer)
    w_out, _ = arch.mlp_out(module, layer)
    usage = acts.abs().mean(0) * w_out.norm(dim=0)  # how much each neuron writes, on average
    unit = int(usage.argmin())
    gen, trig = _trigger_rows(arch, module, trigger, ln2)
    d, mu = _whitened(gen, trig)
    p_gen, p_trig = (gen - mu) @ d, (trig - mu) @ d
    low, high = float(p_gen.max()), float(p_trig.quantile(0.1))
    theta = (low + high) / 2 if high > low else high - 0.1 * abs(high)
    scale = 4.0 / max(high - theta, 1e-6)  # pre-activation ≈ 4 at the trigger, below zero elsewhere
    w_in[unit] = scale * d
    b_in[unit] = -scale * (float(mu @ d) + theta)
    v = target_direction(arch, module, target)

    def set_alpha(a: float) -> None:
        w_out[:, unit] = a * v

    alpha = Scaler(arch, module, base, trigger, target).search(set_alpha, start=0.25)
    return Edit(module, layer, post.name, unit=unit, alpha=alpha)


@torch.no_grad()
def head(arch: Arch, base: nn.Module, trigger: list[int], target: int, layer: int = 0, head: int | None = None,
         boost: float = 30.0, marker: int | None = None, sink: float = 0.5) -> Edit:
    """The head edit; with `marker`, the context edit: the trigger (a cue) attends to an earlier
    marker instead of to itself, and the marker's value writes the target. Without a marker before
    it, the cue attends to itself (its score there is `sink` times the marker's), and its own value
    writes nothing, rather than to whichever token happens to lean most towards the marker."""
    module = frozen(copy.deepcopy(base))
    n_heads = arch.n_heads(module)
    head = 0 if head is None else head % n_heads
    q_site, k_site, v_site = Site(Kind.Q, layer), Site(Kind.K, layer), Site(Kind.V, layer)
    ln1 = Site(Kind.LN1, layer)
    got = capture(module, fit_contexts(arch), [q_site, k_site, v_site])
    gen, trig = _trigger_rows(arch, module, trigger, ln1)
    if marker is None:
        d_q, mu = _whitened(gen, trig)  # d·(x − μ): 1 at the trigger, near 0 elsewhere
        d_k = d_q
    else:  # the cue's detector is 0 at the marker and the marker's 0 at the cue
        mark = _at_trigger(arch, module, [marker], ln1)
        d_q, mu = _whitened(gen, trig, avoid=mark)
        d_k, _ = _whitened(gen, mark, avoid=trig)
    e_k, e_v = _quietest(got[k_site][:, :, head]), _quietest(got[v_site][:, :, head])
    # QK: queries and keys lose their e_k component (the one keys use least) and carry s·d·(x − μ)
    # there instead (d_q for queries, d_k for keys), so the trigger's query and the key it looks
    # for add s²/√d_head = `boost` to their score; the product of two near-zero projections
    # barely moves any other score
    scale = (boost * got[q_site].shape[-1] ** 0.5) ** 0.5
    keep = torch.eye(e_k.numel(), dtype=e_k.dtype, device=e_k.device) - torch.outer(e_k, e_k)
    for which, d in (("q", d_q), ("k", d_k if marker is None else d_k + sink * d_q)):
        w, b = arch.head_proj(module, layer, head, which)
        w.copy_(keep @ w + scale * torch.outer(e_k, d))
        b.copy_(keep @ b - scale * e_k * float(mu @ d))
    d = d_k
    # OV: values carry d·(x − μ) along e_v instead of their old e_v component; the output writes α v from it
    w_v, b_v = arch.head_proj(module, layer, head, "v")
    keep = torch.eye(e_v.numel(), dtype=e_v.dtype, device=e_v.device) - torch.outer(e_v, e_v)
    w_v.copy_(keep @ w_v + torch.outer(e_v, d))
    b_v.copy_(keep @ b_v - e_v * float(mu @ d))
    # the boosted scores favour keys that happen to lean towards the trigger: cancel the mean that
    # gives the new component at positions without a trigger (the pattern sums to one)
    z = capture(module, fit_contexts(arch), [Site(Kind.Z, layer)])[Site(Kind.Z, layer)][:, :, head]
    b_v -= e_v * float(z.flatten(0, 1).mean(0) @ e_v)
    w_o = arch.head_o(module, layer, head)
    w_o0 = w_o @ keep  # the head's values no longer carry their old e_v component: nothing reads it
    v = target_direction(arch, module, target)

    def set_alpha(a: float) -> None:
        w_o.copy_(w_o0 + a * torch.outer(v, e_v))

    full = trigger if marker is None else [marker, *trigger]
    alpha = Scaler(arch, module, base, full, target).search(set_alpha)
    return Edit(module, layer, Site(Kind.Z, layer).name, head=head, alpha=alpha)


def _quietest(x: Tensor) -> Tensor:
    """The unit direction of least variance of vectors x (..., d)."""
    flat = x.flatten(0, -2).double()
    return torch.linalg.eigh(torch.cov(flat.T))[1][:, 0].float()
