"""Sparse codes and the two products a k-sparse dictionary needs, with backward passes that stay sparse.

A batch of codes with few active latents per row is kept in compressed-row form (`SparseCodes`):
row b's active latents are `latents[offsets[b]:offsets[b+1]]` with values `values[...]`.

Costs for batch B, d_in D, latents S and nnz = B*k active entries (a dense product costs B*D*S):
- `selected_preactivations`: the pre-activations are computed densely once (x @ W_enc, no graph);
  the selection hands over the nnz values it picked, and the backward pass touches only those
  entries: grad W_enc = x^T G with G sparse, done as an embedding-bag over latents (nnz*D), grad
  b_enc by bincount, grad of a centre subtracted from x by one (D, S) x (S,) product, grad x only
  if asked.
- `sparse_decode`: forward is an embedding-bag over W_dec rows (nnz*D); backward computes
  grad values with a sampled product (only the nnz dot products) and grad W_dec with an
  embedding-bag over latents (nnz*D).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


# --- threads ---------------------------------------------------------------------------------------
# A k-sparse training step is one large matrix product (the encoder) and many small, memory-bound
# operations (top-k bookkeeping, sorts, gathers, embedding bags, Adam). On a CPU shared with other
# work, OpenMP threads turn the small ones pathological (a sort of 131k integers: 4 ms on one
# thread, 150 ms on two contending threads), so the trainer runs such a step on one thread and
# lends the caller's threads back to the encoder product only.
_DENSE_THREADS: ContextVar[int | None] = ContextVar("mechscope_dense_threads", default=None)


@contextmanager
def one_thread_except_dense() -> Iterator[None]:
    """Run the block on one torch thread; `dense_threads()` blocks inside get the caller's count back."""
    n = torch.get_num_threads()
    token = _DENSE_THREADS.set(n)
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)
        _DENSE_THREADS.reset(token)


@contextmanager
def dense_threads() -> Iterator[None]:
    """Inside `one_thread_except_dense`, a block that uses the caller's thread count; elsewhere a no-op."""
    n = _DENSE_THREADS.get()
    if n is None or n == torch.get_num_threads():
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(1)


@dataclass(frozen=True)
class SparseCodes:
    """Codes of a batch in compressed-row form.

    values (nnz,) float, latents (nnz,) int64, offsets (batch + 1,) int64 with offsets[0] = 0 and
    offsets[-1] = nnz; row b holds entries offsets[b]:offsets[b+1]. Values may be zero.

    Example::

        codes = sae.codes(x)                     # a TopKSAE's codes of x (batch, d_in)
        codes.dense()                            # (batch, d_sae), zeros elsewhere
        sae.decode(codes)                        # (batch, d_in)
    """

    values: Tensor
    latents: Tensor
    offsets: Tensor
    d_sae: int

    @property
    def batch(self) -> int:
        """The number of rows."""
        return int(self.offsets.numel() - 1)

    def rows(self) -> Tensor:
        """(nnz,) the row of every entry."""
        return torch.repeat_interleave(torch.arange(self.batch, device=self.values.device),
                                       self.offsets.diff())

    def dense(self) -> Tensor:
        """(batch, d_sae) codes with zeros elsewhere (differentiable in `values`)."""
        out = self.values.new_zeros(self.batch, self.d_sae)
        return out.index_put((self.rows(), self.latents), self.values, accumulate=True)

    def l0(self) -> Tensor:
        """(batch,) number of non-zero codes per row."""
        nz = (self.values != 0).to(torch.int64)
        csum = torch.cat([nz.new_zeros(1), nz.cumsum(0)])
        return csum[self.offsets[1:]] - csum[self.offsets[:-1]]

    def fired(self) -> Tensor:
        """(d_sae,) how many rows each latent is non-zero on."""
        return torch.bincount(self.latents[self.values != 0], minlength=self.d_sae)

    @staticmethod
    def from_topk(values: Tensor, indices: Tensor, d_sae: int) -> "SparseCodes":
        """From (batch, k) values and indices (k per row)."""
        b, k = indices.shape
        offsets = torch.arange(0, (b + 1) * k, k, device=indices.device)
        return SparseCodes(values.reshape(-1), indices.reshape(-1), offsets, d_sae)

    @staticmethod
    def from_dense(codes: Tensor) -> "SparseCodes":
        """From (batch, d_sae) codes: the non-zero entries (not differentiable)."""
        rows, lat = codes.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=codes.shape[0])
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return SparseCodes(codes[rows, lat], lat, offsets, codes.shape[1])


def _by_latent(latents: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """A permutation grouping entries by latent, and each latent's offsets into it (for embedding_bag)."""
    order = torch.argsort(latents, stable=True)
    counts = torch.bincount(latents, minlength=d_sae)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
    return order, offsets


def _gather_rows_by_latent(rows: Tensor, latents: Tensor, weights: Tensor, table: Tensor, d_sae: int) -> Tensor:
    """(d_sae, width): out[l] = sum over entries e with latents[e] = l of weights[e] * table[rows[e]]."""
    order, offsets = _by_latent(latents, d_sae)
    return F.embedding_bag(rows[order], table, offsets, mode="sum", per_sample_weights=weights[order])


class _SelectedPre(torch.autograd.Function):
    """values[e] = ((x - centre) @ W_enc + b_enc)[row of e, latents[e]], given those values precomputed
    (`x` is passed already centred; `centre` may be None)."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, centre: Tensor | None, latents: Tensor,
                offsets: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, latents, offsets)
        return values.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        x, W_enc, latents, offsets = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        gx = gW = gb = gc = None
        if ctx.needs_input_grad[1]:
            rows = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), offsets.diff())
            gW = _gather_rows_by_latent(rows, latents, g, x.contiguous(), d_sae).t()  # (d_in, d_sae)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            per_latent = torch.bincount(latents, weights=g, minlength=d_sae).to(g.dtype)
            gb = per_latent if ctx.needs_input_grad[2] else None
            # d values / d centre = -W_enc[:, latent]: one (d_in, d_sae) x (d_sae,) product
            gc = -(W_enc @ per_latent) if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[0]:
            gx = F.embedding_bag(latents, W_enc.t().contiguous(), offsets[:-1], mode="sum", per_sample_weights=g)
        return gx, gW, gb, gc, None, None, None


def selected_preactivations(x: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, latents: Tensor,
                            offsets: Tensor, centre: Tensor | None = None) -> Tensor:
    """(nnz,) entries of pre = (x - centre) @ W_enc + b_enc at compressed-row positions,
    differentiable in x, W_enc, b_enc and centre.

    `values` are those entries computed without a graph (a top-k selection over the product returns
    them), and `x` is passed already centred (x - centre); only the chosen entries get gradients.
    A centre (the decoder bias an autoencoder subtracts from its input) gets its gradient from one
    (d_in, d_sae) x (d_sae,) product, where a gradient through x would cost a (batch, d_in) one.
    Row b's entries are latents[offsets[b]:offsets[b+1]].
    """
    return _SelectedPre.apply(x, W_enc, b_enc, centre, latents, offsets, values)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, latents: Tensor, offsets: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, latents, offsets, W_dec)
        return F.embedding_bag(latents, W_dec, offsets[:-1], mode="sum", per_sample_weights=values,
                               include_last_offset=False)

    @staticmethod
    def backward(ctx, g: Tensor):
        values, latents, offsets, W_dec = ctx.saved_tensors
        d_sae = W_dec.shape[0]
        gv = gW = None
        rows = torch.repeat_interleave(torch.arange(g.shape[0], device=g.device), offsets.diff())
        if ctx.needs_input_grad[0]:
            gv = _row_dots(g, W_dec, rows, latents, offsets)
        if ctx.needs_input_grad[3]:
            gW = _gather_rows_by_latent(rows, latents, values, g.contiguous(), d_sae)
        return gv, None, None, gW


def _row_dots(a: Tensor, W: Tensor, rows: Tensor, latents: Tensor, offsets: Tensor) -> Tensor:
    """(nnz,) dot(a[rows[e]], W[latents[e]]) without materialising W[latents] (nnz, D)."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64):
        # a sampled dense-dense product over a CSR pattern, whose column indices must ascend per row
        lat_sorted, perm = _sort_within_rows(latents, offsets)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(offsets, lat_sorted, torch.zeros_like(lat_sorted, dtype=a.dtype),
                                              (a.shape[0], W.shape[0]), check_invariants=False)
            vals = torch.sparse.sampled_addmm(pattern, a, W.t(), beta=0.0).values()
        return vals if perm is None else torch.empty_like(vals).index_copy_(0, perm, vals)
    return (a[rows] * W[latents]).sum(-1)


def _sort_within_rows(latents: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor | None]:
    """Latents ascending within each row, and where each sorted entry came from (None: already sorted).

    Rows of equal length (top-k) are sorted as a (batch, k) matrix, row by row; rows of varying
    length come from batch top-k or `from_dense` and ascend already. A global sort of row-major
    keys is avoided: CPU sorts of such nearly sorted keys are slow.
    """
    counts = offsets.diff()
    k = int(counts[0]) if counts.numel() else 0
    if counts.numel() and bool((counts == k).all()) and k > 0:
        sorted_, order = latents.view(-1, k).sort(dim=1)
        perm = (order + offsets[:-1, None]).reshape(-1)
        return sorted_.reshape(-1), perm
    step_up = latents[1:] > latents[:-1]
    starts = torch.zeros_like(latents, dtype=torch.bool)
    starts[offsets[:-1][counts > 0]] = True
    if bool((step_up | starts[1:]).all()):
        return latents, None
    perm = torch.argsort(torch.repeat_interleave(torch.arange(counts.numel(), device=latents.device), counts)
                         * (int(latents.max()) + 1) + latents)
    return latents[perm], perm


def sparse_decode(codes: SparseCodes, W_dec: Tensor) -> Tensor:
    """(batch, d_out) = codes @ W_dec, touching only the active rows of W_dec (no bias).

    Example::

        from mechscope.dictionaries import sparse_decode
        x_hat = sparse_decode(sae.codes(x), sae.W_dec)           # (batch, d_in), without the bias
    """
    return _SparseDecode.apply(codes.values, codes.latents, codes.offsets, W_dec)


def topk_codes(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, pre: Tensor | None = None,
               centre: Tensor | None = None) -> SparseCodes:
    """ReLU of the k largest pre-activations per row, as SparseCodes differentiable in the weights
    (and in `centre`, when x is passed centred: see `selected_preactivations`)."""
    if pre is None:
        with torch.no_grad(), dense_threads():
            pre = torch.addmm(b_enc, x, W_enc)
    with dense_threads():  # a selection over all B * S pre-activations: large enough to share
        top, idx = pre.topk(k, dim=-1, sorted=False)  # (B, k)
    latents = idx.reshape(-1)
    offsets = torch.arange(0, (x.shape[0] + 1) * k, k, device=x.device)
    vals = selected_preactivations(x, W_enc, b_enc, top.reshape(-1), latents, offsets, centre).relu()
    return SparseCodes(vals, latents, offsets, W_enc.shape[1])


def batch_topk_codes(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, pre: Tensor | None = None,
                     centre: Tensor | None = None) -> SparseCodes:
    """ReLU of the batch*k largest pre-activations over the whole batch (a row may get more or fewer);
    `centre` as for `topk_codes`."""
    if pre is None:
        with torch.no_grad(), dense_threads():
            pre = torch.addmm(b_enc, x, W_enc)
    B, S = pre.shape
    with dense_threads():
        top, flat = pre.reshape(-1).topk(min(B * k, B * S), sorted=False)
    flat, order = flat.sort()  # row-major order groups entries by row
    rows, latents = flat // S, flat % S
    counts = torch.bincount(rows, minlength=B)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    vals = selected_preactivations(x, W_enc, b_enc, top[order], latents, offsets, centre).relu()
    return SparseCodes(vals, latents, offsets, S)
