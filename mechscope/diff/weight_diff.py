"""Weight diff per component: how much each matrix changed from A to B, in how many directions,
and which tokens those directions write.

Components come from the weight views (`core/weights.py`, row-vector convention x @ W, layer
norms not folded): the token and position embeddings, per block and head the bilinear QK form
W_Q W_K^T and the OV map W_V W_O (each d_model x d_model, with any per-head norm gains included),
the MLP's input (and gate) and output matrices, the unembedding, and every bias and norm gain as a
vector component. For each component ΔW = W_B − W_A:

- `absolute` = ||ΔW||_F and `relative` = ||ΔW||_F / ||W_A||_F (the score findings rank by);
- `rank` = the number of singular values of ΔW above `tol` times the largest (0 when ΔW = 0), and
  `effective_rank` = exp(entropy of σ / Σσ) (Roy & Vetterli 2007), which counts how spread the
  change is without a tolerance;
- the top singular directions, each read as tokens: a direction in the residual stream is read
  through B's unembedding with its final norm's gain (centred first when that norm is a
  LayerNorm): logits = d @ (g ⊙ W_U_B); a direction over the vocabulary (the embedding's rows, the
  unembedding's columns) names its tokens directly. A direction on the output side of the matrix
  (what it writes) is read when the output is the residual stream, else the input side (what it
  reads). Singular vectors have no sign of their own: each pair (u, v) is turned so the largest
  entry of u (the input side) is positive, so "top" tokens are those the change writes for inputs
  along +u.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.factored import effective_rank
from ..core.score import Score

TOL = 1e-3  # singular values below TOL x the largest do not count towards the rank


@dataclass(frozen=True)
class Direction:
    """One singular direction of a component's change: σ, which side was read, and its tokens.

    Example::

        from mechscope.diff import load_pair, weight_diff
        a, b = load_pair("zoo:modadd-quick", "zoo:modadd-frac05")
        d = next(c for c in weight_diff(a, b) if c.directions).directions[0]
        d.sigma, d.side, d.space                 # its singular value, "writes", "d_model"
        d.vector                                 # (d_model,): a unit vector in that space
        d.top                                    # the token ids it reads out highest
    """

    sigma: float
    side: str  # "writes" (output side) or "reads" (input side)
    space: str  # "d_model" or "vocab"
    vector: Tensor  # the direction (unit norm) in `space`
    top: tuple[int, ...]  # token ids with the highest readout
    bottom: tuple[int, ...]  # token ids with the lowest readout


@dataclass(frozen=True)
class ComponentDiff:
    """How one weight component changed from A to B: absolute and relative norms of ΔW, its rank, effective rank,
    largest singular values and top directions.

    Example::

        from mechscope.diff import load_pair, weight_diff
        a, b = load_pair("zoo:modadd-quick", "zoo:modadd-frac05")
        diffs = weight_diff(a, b)
        top = diffs[0]                           # the largest relative change, e.g. "L0.b_V"
        top.name, top.shape, top.relative, top.rank
        [c.name for c in diffs if c.directions]  # matrices, each with its top directions
    """

    name: str  # "embed", "L0.H1.OV", "L1.mlp_out", "unembed", "L0.b_out", ...
    shape: tuple[int, ...]
    absolute: float
    relative: float
    rank: int
    effective_rank: float
    singular_values: tuple[float, ...]  # the largest few
    directions: tuple[Direction, ...] = field(default=())

    @property
    def score(self) -> Score:
        """The relative norm as a Score."""
        return Score(value=self.relative, metric="relative Frobenius norm ||W_B − W_A|| / ||W_A||",
                     aggregation="one component", dataset="weights", n=1,
                     how={"component": self.name, "absolute": round(self.absolute, 6), "rank": self.rank,
                          "rank_tolerance": f"σ > {TOL:g} σ_max",
                          "effective_rank": round(self.effective_rank, 3)})


def _components(w: Any) -> list[tuple[str, Tensor, str, str]]:
    """(name, matrix or vector, row space, column space) of every component of a Weights."""
    out: list[tuple[str, Tensor, str, str]] = []
    if w.W_E is not None:
        out.append(("embed", w.W_E, "vocab", "d_model"))
    if w.W_pos is not None:
        out.append(("pos_embed", w.W_pos, "pos", "d_model"))
    qk, ov = w.QK, w.OV
    for layer in range(w.n_layers):
        for h in range(w.n_heads):
            out.append((f"L{layer}.H{h}.QK", qk.A[layer, h] @ qk.B[layer, h], "d_model", "d_model"))
            out.append((f"L{layer}.H{h}.OV", ov.A[layer, h] @ ov.B[layer, h], "d_model", "d_model"))
        if w.W_in is not None:
            out.append((f"L{layer}.mlp_in", w.W_in[layer], "d_model", "d_mlp"))
        if w.W_gate is not None:
            out.append((f"L{layer}.mlp_gate", w.W_gate[layer], "d_model", "d_mlp"))
        if w.W_out is not None:
            out.append((f"L{layer}.mlp_out", w.W_out[layer], "d_mlp", "d_model"))
        for key, space in (("b_Q", "d_head"), ("b_K", "d_head"), ("b_V", "d_head"), ("b_O", "d_model"),
                           ("b_in", "d_mlp"), ("b_out", "d_model"), ("ln1_w", "d_model"), ("ln1_b", "d_model"),
                           ("ln2_w", "d_model"), ("ln2_b", "d_model"), ("q_norm_w", "d_head"),
                           ("k_norm_w", "d_head"), ("ln1_post_w", "d_model"), ("ln2_post_w", "d_model")):
            t = getattr(w, key)
            if t is not None:
                out.append((f"L{layer}.{key}", t[layer].reshape(-1) if t[layer].dim() > 1 else t[layer],
                            space if t[layer].dim() == 1 else "flat", ""))
    if w.W_U is not None:
        out.append(("unembed", w.W_U, "d_model", "vocab"))
    for key, space in (("b_U", "vocab"), ("lnf_w", "d_model"), ("lnf_b", "d_model")):
        t = getattr(w, key)
        if t is not None:
            out.append((key, t, space, ""))
    return out


class Readout:
    """Tokens of a residual-stream direction through B's unembedding and final norm gain."""

    def __init__(self, w: Any):
        self.W_U = None
        if w.W_U is not None:
            g = w.lnf_w if w.lnf_w is not None else torch.ones(w.W_U.shape[0])
            self.W_U = (g.float()[:, None] * w.W_U.float())  # (d_model, vocab)
        self.center = w.lnf_b is not None  # a LayerNorm centres what it reads

    def logits(self, d: Tensor) -> Tensor | None:
        """(vocab,) logits a residual direction `d` (d_model,) writes (centred under LayerNorm); None without an
        unembedding."""
        if self.W_U is None:
            return None
        d = d.float()
        if self.center:
            d = d - d.mean()
        return d @ self.W_U

    def tokens(self, d: Tensor, space: str, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The `k` tokens with the largest and the smallest scores of `d`: its entries when `space` is "vocab",
        else its logits; empty without an unembedding."""
        scores = d.float() if space == "vocab" else self.logits(d)
        if scores is None:
            return (), ()
        k = min(k, scores.numel())
        return tuple(scores.topk(k).indices.tolist()), tuple((-scores).topk(k).indices.tolist())


def spectrum(delta: Tensor, tol: float = TOL, s: Tensor | None = None) -> tuple[Tensor, int, float]:
    """Singular values of `delta` (descending; `s` when already computed), its rank at `tol` and its
    effective rank."""
    s = torch.linalg.svdvals(delta.double()) if s is None else s
    if s.numel() == 0 or float(s[0]) == 0.0:
        return s, 0, 0.0
    return s, int((s > tol * s[0]).sum()), effective_rank(s)


def diff_component(name: str, wa: Tensor, wb: Tensor, rows: str, cols: str, readout: Readout,
                   n_directions: int = 3, k_tokens: int = 10, tol: float = TOL) -> ComponentDiff:
    """How `wb` differs from `wa` (see the module docstring); `rows` and `cols` name the spaces of the matrix'
    axes, which decide how its directions are read."""
    delta = (wb.detach().double() - wa.detach().double())
    absolute = float(delta.norm())
    base = float(wa.detach().double().norm())
    relative = absolute / base if base > 0 else (math.inf if absolute > 0 else 0.0)
    if delta.dim() == 1:  # a vector: rank 1 when it changed at all
        rank = int(absolute > 0)
        dirs: list[Direction] = []
        if rank and rows in ("d_model", "vocab"):
            v = (delta / absolute).float()
            top, bottom = readout.tokens(v, rows, k_tokens)
            dirs.append(Direction(absolute, "writes", rows, v, top, bottom))
        return ComponentDiff(name, tuple(delta.shape), absolute, relative, rank, float(rank), (absolute,),
                             tuple(dirs))
    if absolute == 0:  # unchanged: no decomposition to compute
        return ComponentDiff(name, tuple(delta.shape), 0.0, relative, 0, 0.0, (0.0,))
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)  # one decomposition for the spectrum and directions
    s, rank, eff = spectrum(delta, tol, S)
    dirs = []
    if rank:
        for i in range(min(n_directions, rank)):
            u, v = U[:, i], Vh[i]
            if u[u.abs().argmax()] < 0:  # the sign convention of the module docstring
                u, v = -u, -v
            if cols in ("d_model", "vocab"):
                side, space, vec = "writes", cols, v
            elif rows in ("d_model", "vocab"):
                side, space, vec = "reads", rows, u
            else:
                continue
            top, bottom = readout.tokens(vec.float(), space, k_tokens)
            dirs.append(Direction(float(S[i]), side, space, vec.float(), top, bottom))
    return ComponentDiff(name, tuple(delta.shape), absolute, relative, rank, eff,
                         tuple(float(x) for x in s[:8]), tuple(dirs))


def weight_diff(a: Any, b: Any, n_directions: int = 3, k_tokens: int = 10, tol: float = TOL,
                progress: bool = True) -> list[ComponentDiff]:
    """Every component's change from A to B, largest relative change first.

    Example::

        from mechscope.diff import load_pair, weight_diff
        a, b = load_pair("zoo:modadd-quick", "zoo:modadd-frac05")   # or run directories, HF directories
        for c in weight_diff(a, b)[:5]:
            print(c.name, c.relative, c.rank)
    """
    from ..core.progress import progress_bar

    wa, wb = a.weights().to("cpu"), b.weights().to("cpu")  # float64 statistics on the CPU (MPS has none)
    readout = Readout(wb)
    comps_a, comps_b = _components(wa), _components(wb)
    out = []
    for (name, ta, rows, cols), (_, tb, _, _) in progress_bar(list(zip(comps_a, comps_b)), desc="weight diff",
                                                              unit="component", disable=not progress):
        out.append(diff_component(name, ta, tb, rows, cols, readout, n_directions, k_tokens, tol))
    return sorted(out, key=lambda c: -c.relative if math.isfinite(c.relative) else -1e300)
