"""The optimizer step of data-parallel training, shared out: each rank updates its shard of the parameters.

Once the gradients are summed, every rank would otherwise repeat the same work on the whole
dictionary: Adam's step, the removal of each decoder row's gradient component along the row, and
the decoder-norm constraint. Instead (ZeRO stage 1) rank r of N owns a part of every parameter
(`Shards`): the decoder rows of its latents, d_sae·r // N up to d_sae·(r + 1) // N, so that the
per-row operations find whole rows, and an equal share of the memory of every other parameter
(Adam acts on each value alone, so any split gives the same step). It keeps Adam's moments for its
pieces only (`ShardedAdam`), updates them, and the ranks then exchange the updated pieces (see
`exchange`). A checkpoint gathers the moments back into the whole optimizer's state, and a resumed
run hands each rank its pieces of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def flat(t: Tensor) -> Tensor:
    """The memory of a dense tensor as a 1-D view (in memory order, whatever its strides)."""
    return t.detach().as_strided((t.numel(),), (1,), t.storage_offset())


@dataclass(frozen=True)
class Piece:
    """Values start..stop of parameter `param`'s memory (in memory order)."""

    param: int
    start: int
    stop: int

    @property
    def numel(self) -> int:
        """The number of values."""
        return self.stop - self.start


class Shards:
    """Which piece of each of `params` each of `world` ranks updates.

    `rows` (one of `params`, the decoder: d_sae rows, each contiguous) is split by whole rows, the
    latents of rank r being `latents[r]`; every other parameter by an equal share of its memory.
    """

    def __init__(self, params: list[Tensor], rows: Tensor, world: int):
        if not any(p is rows for p in params):
            raise ValueError("the decoder to split by rows is not among the parameters being trained")
        d_sae = rows.shape[0]
        if not rows.is_contiguous():
            raise ValueError(f"data-parallel training splits the decoder by rows; its strides {rows.stride()} "
                             "do not keep a row's values together")
        small = [tuple(p.shape) for p in params if (p.shape[0] if p is rows else p.numel()) < world]
        if small:
            raise ValueError(f"{world} processes cannot each update a share of parameters of shape {small[0]} "
                             f"(a dictionary of {d_sae} latents); use fewer processes")
        self.world = world
        self.latents = [slice(d_sae * r // world, d_sae * (r + 1) // world) for r in range(world)]
        self.pieces: list[list[Piece]] = [[] for _ in range(world)]
        for i, p in enumerate(params):
            for r in range(world):
                if p is rows:
                    width = p.numel() // d_sae
                    lo, hi = self.latents[r].start * width, self.latents[r].stop * width
                else:
                    lo, hi = p.numel() * r // world, p.numel() * (r + 1) // world
                self.pieces[r].append(Piece(i, lo, hi))


def gathered_pieces(shards: "Shards", gather: Callable[[Tensor], Tensor], mine: Tensor, per_piece: int = 1):
    """Every rank's values of its pieces, through one all-gather: `mine` is this rank's, `per_piece`
    tensors of each piece's size laid end to end, piece after piece (padded to the widest rank).
    Yields (rank, piece, k, values) for the k-th tensor of every piece of every rank; a collective,
    every rank calls it."""
    width = max(per_piece * sum(c.numel for c in pieces) for pieces in shards.pieces)
    send = torch.zeros(1, width, dtype=mine.dtype, device=mine.device)
    send[0, :mine.numel()] = mine
    every = gather(send)  # (world, width)
    for r, pieces in enumerate(shards.pieces):
        at = 0
        for c in pieces:
            for k in range(per_piece):
                yield r, c, k, every[r, at:at + c.numel]
                at += c.numel


class ShardedAdam:
    """Adam on rank `rank`'s pieces of the parameters `full` (a torch Adam over whole parameters)
    optimises, with `full`'s groups and options; state `full` already holds (a resumed run) is
    taken over piece by piece. `gather(t)` is every rank's `t` concatenated along rows (a collective).

    `param_groups` (the learning rates the trainer sets), `zero_grad` and `step` as torch's
    optimizers have them; `state_dict` assembles the whole optimizer's state from every rank.
    """

    KEYS = ("exp_avg", "exp_avg_sq")

    def __init__(self, full: torch.optim.Adam, shards: Shards, rank: int, gather: Callable[[Tensor], Tensor]):
        self.params = [p for g in full.param_groups for p in g["params"]]
        at = [0]
        for g in full.param_groups:
            at.append(at[-1] + len(g["params"]))
        self.indices = [list(range(a, b)) for a, b in zip(at, at[1:])]  # each group's parameters, numbered
        self.shards, self.rank, self.gather = shards, rank, gather
        self.own = shards.pieces[rank]
        self.views = [flat(self.params[c.param])[c.start:c.stop] for c in self.own]
        group_of = {id(p): gi for gi, g in enumerate(full.param_groups) for p in g["params"]}
        groups = [dict(g, params=[v for c, v in zip(self.own, self.views)
                                  if group_of[id(self.params[c.param])] == gi])
                  for gi, g in enumerate(full.param_groups)]
        self.inner = torch.optim.Adam(groups, **full.defaults)
        for c, v in zip(self.own, self.views):
            p = self.params[c.param]
            st = full.state.get(p)
            if st:  # moments in the parameter's memory layout, then this rank's piece of them
                self.inner.state[v] = {"step": st["step"].clone(),
                                       **{k: flat(torch.empty_like(p).copy_(st[k]))[c.start:c.stop].clone()
                                          for k in self.KEYS}}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The groups of this rank's pieces, with the whole optimizer's options (the trainer sets "lr")."""
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients of the whole parameters (the next backward pass writes them afresh)."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        for v in self.views:
            v.grad = None

    def step(self) -> None:
        """Adam's step on this rank's pieces, from their parts of the (summed) gradients."""
        for c, v in zip(self.own, self.views):
            g = self.params[c.param].grad
            v.grad = flat(g)[c.start:c.stop] if g is not None else None  # laid out as the parameter (see exchange)
        self.inner.step()

    def state_dict(self) -> dict[str, Any]:
        """The state a torch Adam over the whole parameters would have ("state": per parameter index,
        in group order, its step and moments in the parameter's shape and layout), assembled from
        every rank's pieces: a collective, every rank calls it."""
        if not self.inner.state:  # no step yet
            return {"state": {}, "param_groups": self._groups()}
        mine = torch.cat([self.inner.state[v][k] for v in self.views for k in self.KEYS])
        state: dict[int, dict[str, Tensor]] = {}
        for c, v in zip(self.own, self.views):
            p = self.params[c.param]
            state[c.param] = {"step": self.inner.state[v]["step"].clone(),
                              **{k: torch.empty_like(p) for k in self.KEYS}}
        for _, c, k, values in gathered_pieces(self.shards, self.gather, mine, len(self.KEYS)):
            flat(state[c.param][self.KEYS[k]])[c.start:c.stop] = values
        return {"state": state, "param_groups": self._groups()}

    def _groups(self) -> list[dict[str, Any]]:
        return [{**{k: v for k, v in g.items() if k != "params"}, "params": ids}
                for g, ids in zip(self.inner.param_groups, self.indices)]
