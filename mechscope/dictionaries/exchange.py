"""Gradients of data-parallel ranks averaged without copies: a flat bucket the backward pass writes into.

`GradBucket` gives every parameter's gradient a place in one flat buffer, laid out like the
parameter (fused Adam walks raw memory, and W_enc is stored transposed). A hook on each parameter
writes its gradient there, already multiplied by 1 / world, as the backward pass produces it, and
hands that view on as the gradient (autograd keeps it instead of cloning), so after the backward
pass the buffer holds this rank's share of the mean and one in-place sum makes it the mean:
no copy into a message, no copy back, no division.

The sum: over torch.distributed (`dist.all_reduce` on the buffer), or, for ranks that share one
host's memory on the CPU, `SharedMemorySum`: the ranks' buffers are slots of one shared-memory
file; after a barrier each rank adds up its chunk of all slots and writes the sum into every slot,
and after a second barrier every slot holds the whole sum. A rank reads its peers' memory once and
writes it once, where gloo's all-reduce over the loopback copies every byte through the kernel's
sockets several times (about ten times the CPU time on a 2-rank, 5.3M-gradient step). Each rank's
gradients stay its own between steps (a slot is written by peers only between the two barriers),
so a rank may change them in place (the decoder's parallel component) while its peers run ahead.
The sum of a chunk is the same float sum in slot order on every rank.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SHM_DIR = Path("/dev/shm")


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
        p = self.params[i]
        return self.flat.as_strided(p.shape, p.stride(), self.flat.storage_offset() + self.starts[i])

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


class SharedMemorySum:
    """An in-place sum over the ranks of one host's CPU, through `world` slots of `numel` values in a
    shared-memory file (steps in the module docstring). `barrier()` synchronises the ranks (a
    torch.distributed barrier); `share(name)` is rank 0's file name as every rank receives it.
    """

    def __init__(self, numel: int, dtype: torch.dtype, rank: int, world: int, barrier: Callable[[], None],
                 share: Callable[[str], str]):
        self.rank, self.world, self.barrier = rank, world, barrier
        size = world * numel
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
                self.slots = torch.from_file(path, shared=True, size=size, dtype=dtype).view(world, numel)
            finally:
                barrier()  # every rank has mapped the file: its name can go (the mappings stay)
        finally:
            if rank == 0:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        bounds = [numel * r // world for r in range(world + 1)]
        self.chunk = slice(bounds[rank], bounds[rank + 1])

    @staticmethod
    def fits(numel: int, dtype: torch.dtype, world: int) -> bool:
        """Whether /dev/shm exists and has room for the slots (with a margin of a quarter)."""
        if not SHM_DIR.is_dir():
            return False
        st = os.statvfs(SHM_DIR)
        need = world * numel * torch.empty((), dtype=dtype).element_size()
        return st.f_bavail * st.f_frsize >= need * 5 // 4

    def slot(self) -> Tensor:
        """This rank's slot (numel,): what it contributes, and after `sum_` the sum."""
        return self.slots[self.rank]

    def sum_(self) -> None:
        """Replace every slot by the sum of all slots."""
        self.barrier()  # every rank has written its slot (and is done reading the last sum from it)
        c = self.chunk
        acc = self.slots[0, c]
        for i in range(1, self.world):
            acc.add_(self.slots[i, c])
        for i in range(1, self.world):
            self.slots[i, c].copy_(acc)
        self.barrier()  # every chunk is summed into every slot


class BucketExchange:
    """Averages the gradients of `params` over the ranks: a `GradBucket` summed in place, in shared
    memory when `shared` (ranks on one host's CPU) or else by `all_reduce(flat)`."""

    def __init__(self, params: list[torch.nn.Parameter], rank: int, world: int, *, shared: bool,
                 all_reduce: Callable[[Tensor], Any], barrier: Callable[[], None], share: Callable[[str], str]):
        numel = sum(p.numel() for p in params)
        dtype, device = params[0].dtype, params[0].device
        self.shm = SharedMemorySum(numel, dtype, rank, world, barrier, share) if shared else None
        flat = self.shm.slot() if self.shm is not None else torch.empty(numel, dtype=dtype, device=device)
        self.all_reduce = all_reduce
        self.bucket = GradBucket(params, flat, 1.0 / world)

    def average(self) -> None:
        """After the backward pass: every gradient is the mean over the ranks."""
        self.bucket.settle()
        if self.shm is not None:
            self.shm.sum_()
        else:
            self.all_reduce(self.bucket.flat)

    def close(self) -> None:
        """Take the hooks off; the gradients keep their current values."""
        self.bucket.remove()
        for p in self.bucket.params:  # detached from the shared buffer, which peers may still write
            if p.grad is not None:
                p.grad = p.grad.clone()
