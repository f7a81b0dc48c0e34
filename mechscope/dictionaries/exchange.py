"""Gradients of data-parallel ranks summed without copies, and the updated parameters shared back.

`GradBucket` gives every parameter's gradient a place in one flat buffer, laid out like the
parameter (fused Adam walks raw memory, and W_enc is stored transposed). A hook on each parameter
writes its gradient there, already multiplied by 1 / world, as the backward pass produces it, and
hands that view on as the gradient (autograd keeps it instead of cloning), so after the backward
pass the buffer holds this rank's share of the mean: no copy into a message, no division.

Each rank then needs the mean only for the pieces of the parameters it updates (`shards`: ZeRO
stage 1), and every rank needs everyone's updated pieces before the next forward pass.
`ShardedExchange` does both, one of two ways:

- ranks that share one host's memory on the CPU (`SharedMemory`): the ranks' buffers are slots
  of one shared-memory file, and the parameters themselves live in the same file, one copy that
  every rank reads. After a barrier each rank adds its peers' slots to its own, within its
  pieces (a reduce-scatter: it reads its peers' memory once and writes only its own);
  it updates its pieces of the parameters in place, and after a second barrier every rank reads
  the whole updated dictionary, with no copy at all. Between the two barriers no rank reads what
  another writes: a rank reads its peers' slots only within its own pieces, which the peers do
  not update, and writes parameters only there, which no peer reads until the second barrier.
  gloo's all-reduce over the loopback would copy every byte through the kernel's sockets several
  times (about ten times the CPU time on a 2-rank, 5.3M-gradient step);
- otherwise (several hosts, CUDA, or asked for): an all-reduce of the whole buffer, and an
  all-gather of the updated pieces, which each rank copies into its parameters.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import Dictionary
from .shards import Shards, flat, gathered_pieces

SHM_DIR = Path("/dev/shm")


def place(flat_buffer: Tensor, p: Tensor, start: int) -> Tensor:
    """A view of `flat_buffer` from `start` with the shape and strides of `p` (dense)."""
    return flat_buffer.as_strided(p.shape, p.stride(), flat_buffer.storage_offset() + start)


class GradBucket:
    """Gradients of `params` as views of `flat` (numel = their total), written by hooks scaled by `scale`.

    After a backward pass, `settle()` makes every parameter's `.grad` its view (a parameter the
    pass did not reach gets zeros); `remove()` takes the hooks off.
    """

    def __init__(self, params: list[torch.nn.Parameter], flat: Tensor, scale: float):
        total = sum(p.numel() for p in params)
        if flat.numel() != total or flat.dim() != 1:
            raise ValueError(f"a gradient bucket for {total} values needs a flat buffer of that size, got "
                             f"{tuple(flat.shape)}")
        for p in params:
            if p.dtype != flat.dtype or p.device != flat.device:
                raise ValueError(f"data-parallel training needs every parameter in {flat.dtype} on {flat.device}; "
                                 f"a parameter of shape {tuple(p.shape)} is {p.dtype} on {p.device}")
            if torch.empty_like(p).stride() != p.stride():  # overlapping or with gaps: no dense layout to copy
                raise ValueError(f"a parameter of shape {tuple(p.shape)} and strides {p.stride()} is not laid "
                                 "out densely; data-parallel training needs dense parameters")
        self.params, self.flat, self.scale = params, flat, scale
        self.starts = [0]
        for p in params:
            self.starts.append(self.starts[-1] + p.numel())
        self.written = [False] * len(params)
        self.handles = [p.register_hook(self._hook(i)) for i, p in enumerate(params)]

    def view(self, i: int) -> Tensor:
        """A new view of parameter i's place in the buffer, with the parameter's strides."""
        return place(self.flat, self.params[i], self.starts[i])

    def _hook(self, i: int) -> Callable[[Tensor], Tensor]:
        def write(grad: Tensor) -> Tensor:
            v = self.view(i)  # fresh, held by no one else: autograd adopts it as .grad rather than clone it
            torch.mul(grad, self.scale, out=v)
            self.written[i] = True
            return v
        return write

    def settle(self) -> None:
        """After the backward pass: every parameter's gradient is its view of the buffer."""
        for i, p in enumerate(self.params):
            if not self.written[i]:
                self.view(i).zero_()
            g = p.grad
            if g is None or g.data_ptr() != self.view(i).data_ptr() or g.stride() != p.stride():
                p.grad = self.view(i)
            self.written[i] = False

    def remove(self) -> None:
        """Take the hooks off the parameters."""
        for h in self.handles:
            h.remove()
        self.handles = []


class SharedMemory:
    """`world` gradient slots and one copy of the parameters, `numel` values each, in one shared-memory
    file every rank maps (steps in the module docstring). `barrier()` synchronises the ranks (a
    torch.distributed barrier); `share(name)` is rank 0's file name as every rank receives it.
    """

    def __init__(self, numel: int, dtype: torch.dtype, rank: int, world: int, barrier: Callable[[], None],
                 share: Callable[[str], str]):
        self.rank, self.world, self.barrier = rank, world, barrier
        size = (world + 1) * numel
        path = ""
        if rank == 0:
            path = str(SHM_DIR / f"mechscope-grads-{os.getpid()}-{secrets.token_hex(6)}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:  # rank 0 unlinks the file however this ends: a failed share or barrier leaves nothing in /dev/shm
            if rank == 0:
                try:  # the pages are reserved now: a full /dev/shm fails here, not as SIGBUS mid-training
                    os.posix_fallocate(fd, 0, size * torch.empty((), dtype=dtype).element_size())
                finally:
                    os.close(fd)
            path = share(path)
            try:
                whole = torch.from_file(path, shared=True, size=size, dtype=dtype)
            finally:
                barrier()  # every rank has mapped the file: its name can go (the mappings stay)
        finally:
            if rank == 0:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        self.slots = whole[:world * numel].view(world, numel)
        self.params = whole[world * numel:]

    @staticmethod
    def fits(numel: int, dtype: torch.dtype, world: int) -> bool:
        """Whether /dev/shm exists and has room for the slots and the parameters (with a margin of a quarter)."""
        if not SHM_DIR.is_dir():
            return False
        st = os.statvfs(SHM_DIR)
        need = (world + 1) * numel * torch.empty((), dtype=dtype).element_size()
        return st.f_bavail * st.f_frsize >= need * 5 // 4

    def slot(self) -> Tensor:
        """This rank's slot (numel,): what it contributes, and after `reduce_` the sum over its ranges."""
        return self.slots[self.rank]

    def reduce_(self, ranges: list[tuple[int, int]]) -> None:
        """Once every rank has written its slot: over `ranges` (start, stop) (this rank's pieces), the
        sum of all slots into this rank's slot: its own values plus its peers' in slot order (other
        values of its slot keep its own)."""
        self.barrier()  # every rank has written its slot (and is done with the last step's pieces)
        mine = self.slots[self.rank]
        for a, b in ranges:
            acc = mine[a:b]
            for i in range(self.world):
                if i != self.rank:
                    acc.add_(self.slots[i, a:b])


class ShardedExchange:
    """The gradients of `params` summed over the ranks within this rank's pieces of `shards`
    (`reduce`), and after this rank updated those pieces of the parameters, every rank's updated
    pieces on every rank (`publish`): through `SharedMemory` when `shared` (ranks on one host's
    CPU; the parameters move into it), else by `all_reduce(flat)` and `gather(pieces)` (every
    rank's (1, n) tensor, concatenated along rows). See the module docstring."""

    def __init__(self, params: list[torch.nn.Parameter], shards: Shards, rank: int, world: int, *, shared: bool,
                 all_reduce: Callable[[Tensor], Any], gather: Callable[[Tensor], Tensor],
                 barrier: Callable[[], None], share: Callable[[str], str]):
        numel = sum(p.numel() for p in params)
        dtype, device = params[0].dtype, params[0].device
        self.params, self.shards, self.rank = params, shards, rank
        self.all_reduce, self.gather = all_reduce, gather
        self.shm = SharedMemory(numel, dtype, rank, world, barrier, share) if shared else None
        flat_grads = self.shm.slot() if self.shm is not None else torch.empty(numel, dtype=dtype, device=device)
        self.bucket = GradBucket(params, flat_grads, 1.0 / world)
        starts = self.bucket.starts
        self.ranges = [(starts[c.param] + c.start, starts[c.param] + c.stop) for c in shards.pieces[rank]]
        if self.shm is not None:  # rank 0's parameters (every rank's are the same) become the shared copy
            if rank == 0:
                for i, p in enumerate(params):
                    place(self.shm.params, p, starts[i]).copy_(p.detach())
            barrier()
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.data = place(self.shm.params, p, starts[i])

    def step(self, dictionary: Dictionary, opt: Any) -> float:
        """After the backward pass, the ranks' optimizer step: sum this rank's pieces of the gradients
        (`reduce`), update them (the gradient along its latents' unit-norm decoder rows removed, `opt`:
        Adam on its pieces, `Dictionary.constrain_` of its latents), take every rank's updates
        (`publish`) and `Dictionary.refresh_`. Returns the seconds spent in (or waiting for) the
        exchanges."""
        latents = self.shards.latents[self.rank]
        t = time.perf_counter()
        self.reduce()
        waited = time.perf_counter() - t
        if dictionary.unit_norm_decoder:
            dictionary.remove_parallel_grads_(latents)
        opt.step()
        dictionary.constrain_(latents)
        t = time.perf_counter()
        self.publish()
        waited += time.perf_counter() - t
        dictionary.refresh_()
        return waited

    def reduce(self) -> None:
        """After the backward pass: within this rank's pieces, every gradient is the mean over the ranks."""
        self.bucket.settle()
        if self.shm is not None:
            self.shm.reduce_(self.ranges)
        else:
            self.all_reduce(self.bucket.flat)

    def publish(self) -> None:
        """After this rank updated its pieces of the parameters: every rank's updates, on every rank."""
        if self.shm is not None:
            self.shm.barrier()  # the parameters are one shared copy: every piece is written
            return
        mine = torch.cat([flat(self.params[c.param])[c.start:c.stop] for c in self.shards.pieces[self.rank]])
        for r, c, _, values in gathered_pieces(self.shards, self.gather, mine):
            if r != self.rank:
                flat(self.params[c.param])[c.start:c.stop] = values

    def close(self) -> None:
        """Take the hooks off; the gradients and parameters keep their values, in memory of their own
        (peers may still write the shared buffers)."""
        self.bucket.remove()
        with torch.no_grad():
            for p in self.bucket.params:
                if p.grad is not None:
                    p.grad = p.grad.clone()
                if self.shm is not None:
                    p.data = p.data.clone()
