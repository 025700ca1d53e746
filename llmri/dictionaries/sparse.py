"""Row-sparse latent activations and the kernels that make TopK-style training cheap on any device.

A TopK step needs one dense matmul, the encoder forward. Everything after the selection touches only the
k selected latents per token, so:

* decoding is an ``embedding_bag`` (gather-and-sum of k decoder rows per token),
* the decoder and encoder weight gradients are sparse-times-dense products ``Sᵀ·X`` with S the [tokens ×
  latents] selection pattern (a CSR product: MKL on CPU, cuSPARSE on CUDA),
* the gradient of the selected values is a per-entry dot product (``embedding_bag``'s own backward).

The big pre-activation matrix is written into a reused buffer (fresh 75 MB tensors cost page faults on
CPU) and never kept for backward.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Sparse(NamedTuple):
    """Latent activations of ``n_rows`` tokens over ``n_latents`` latents, stored by row.

    Entries of row ``r`` are ``idx[offsets[r]:offsets[r+1]]`` (``offsets`` has ``n_rows`` entries, as
    ``embedding_bag`` wants); ``rows[j]`` is the row of entry ``j``. ``memo`` (a dict shared by the copies
    ``_replace`` makes, so by the forward and backward of one training step) caches the by-latent index of
    the pattern: the decoder's and the encoder's weight gradients sort the same entries once.
    """

    vals: Tensor
    idx: Tensor
    rows: Tensor
    offsets: Tensor
    n_rows: int
    n_latents: int
    memo: dict | None = None

    def dense(self) -> Tensor:
        out = torch.zeros(self.n_rows, self.n_latents, dtype=self.vals.dtype, device=self.vals.device)
        out[self.rows, self.idx] = self.vals
        return out

    def l0(self) -> Tensor:
        """Number of nonzero entries per row."""
        counts = torch.zeros(self.n_rows, dtype=torch.long, device=self.idx.device)
        return counts.index_add_(0, self.rows, (self.vals != 0).long())

def from_topk(vals: Tensor, idx: Tensor, n_latents: int) -> Sparse:
    """Sparse view of per-row top-k results ([rows, k] each)."""
    n, k = idx.shape
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    offsets = torch.arange(0, n * k, k, device=idx.device)
    return Sparse(vals.reshape(-1), idx.reshape(-1), rows, offsets, n, n_latents)


def from_mask(values: Tensor, mask: Tensor) -> Sparse:
    """Sparse view of the entries of ``values`` [rows, n] where ``mask`` is True (row-major order)."""
    rows, idx = mask.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=values.shape[0])
    offsets = torch.cumsum(counts, 0) - counts
    return Sparse(values[rows, idx], idx, rows, offsets, values.shape[0], values.shape[1])


def from_dense(dense: Tensor) -> Sparse:
    return from_mask(dense, dense != 0)


# ---------------------------------------------------------------- Sᵀ·X


class ByLatent(NamedTuple):
    """The entries of a pattern sorted by latent: Sᵀ's CSR structure."""

    order: Tensor
    """Permutation of the entries that sorts them by latent."""
    crow: Tensor
    """[n_latents + 1] CSR row pointers of Sᵀ."""
    rows: Tensor
    """The entries' rows (S's row = Sᵀ's column), in that order."""


def by_latent(s: Sparse) -> ByLatent:
    """Sᵀ's CSR structure, computed once per pattern (cached in ``s.memo`` when it has one)."""
    if s.memo is not None and "by_latent" in s.memo:
        return s.memo["by_latent"]
    keys, order = torch.sort(s.idx.to(torch.int32))  # 32-bit keys sort ~2x faster than 64-bit
    crow = torch.searchsorted(keys, torch.arange(s.n_latents + 1, dtype=torch.int32, device=keys.device))  # no sync
    out = ByLatent(order, crow, s.rows[order])
    if s.memo is not None:
        s.memo["by_latent"] = out
    return out


def transpose_matmul(s: Sparse, weights: Tensor, x: Tensor) -> Tensor:
    """``Sᵀ @ x`` where S[rows[j], idx[j]] = weights[j]: a [n_latents, d] result (sparse weight gradients),
    accumulated and returned in fp32 for a bf16/fp16 ``x`` (fp64 stays fp64)."""
    with torch.profiler.record_function("sparse products"):  # named for benchmarks/sae_training.py
        return _transpose_matmul(s, weights, x)


def _transpose_matmul(s: Sparse, weights: Tensor, x: Tensor) -> Tensor:
    acc = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if s.idx.numel() == 0:
        return torch.zeros(s.n_latents, x.shape[1], dtype=acc, device=x.device)
    # Sᵀ as CSR (entries sorted by latent), times x: MKL on CPU, cuSPARSE on CUDA. On SAE training data it beats
    # ATen's embedding_bag weight-gradient kernel (per-latent segments are unbalanced when a few latents fire
    # often) and, on GPU, the scatter-add of weighted rows (atomics, and a [entries × d] temporary).
    t = by_latent(s)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        mat = torch.sparse_csr_tensor(t.crow, t.rows, weights[t.order].to(acc), (s.n_latents, s.n_rows),
                                      check_invariants=False)
    return mat @ x.to(acc)


# ---------------------------------------------------------------- encoder with selection


_BUFFERS: dict[tuple, Tensor] = {}


def _buffer(shape: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (shape, dtype, device)
    buf = _BUFFERS.get(key)
    if buf is None:
        _BUFFERS.clear()  # one live shape at a time is enough (a training run)
        buf = _BUFFERS[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf


Selector = Callable[[Tensor], Sparse]


class _EncodeSelect(torch.autograd.Function):
    """pre = (x − c) Wᵀ + b (into a reused buffer), then each selector picks entries; backward is sparse.

    The centre ``c`` (an SAE's b_dec, or None) is an input of its own so that its gradient is
    −(Σ_rows ∂pre)·W, a [n]×[n, d] product, instead of a per-token gradient of x."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor, center: Tensor | None, selectors: tuple[Selector, ...],
                memos: tuple[dict, ...]):
        xc = x if center is None else x - center.to(x.dtype)
        pre = _buffer((x.shape[0], W.shape[0]), x.dtype, x.device)
        torch.addmm(b.to(x.dtype), xc, W.t().to(x.dtype), out=pre)
        picks = [sel(pre)._replace(memo=m) for sel, m in zip(selectors, memos, strict=True)]
        ctx.picks = [p._replace(vals=p.vals > 0) for p in picks]  # ReLU'd entries get no gradient
        ctx.save_for_backward(xc, W)
        outs = []
        for p in picks:
            outs += [p.vals, p.idx, p.rows, p.offsets]
        ctx.mark_non_differentiable(*[t for i, t in enumerate(outs) if i % 4])
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        xc, W = ctx.saved_tensors
        # one product per selection (each reuses the by-latent index its decoder's backward already built)
        picks = [p._replace(vals=(g * p.vals).to(xc.dtype)) for g, p in zip(grads[0::4], ctx.picks, strict=True)
                 if g is not None]
        grad_x = grad_W = grad_b = grad_c = None
        if not picks:
            return grad_x, grad_W, grad_b, grad_c, None, None
        if ctx.needs_input_grad[0]:
            grad_x = sum(F.embedding_bag(p.idx, W.to(xc.dtype), p.offsets, per_sample_weights=p.vals, mode="sum")
                         for p in picks)
        if ctx.needs_input_grad[1]:
            grad_W = sum(transpose_matmul(p, p.vals, xc) for p in picks).to(W.dtype)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            per_latent = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
            for p in picks:
                per_latent.index_add_(0, p.idx, p.vals.to(W.dtype))
            grad_b = per_latent if ctx.needs_input_grad[2] else None
            grad_c = -(per_latent @ W) if ctx.needs_input_grad[3] else None
        return grad_x, grad_W, grad_b, grad_c, None, None


def encode_select(x: Tensor, W: Tensor, b: Tensor, selectors: list[Selector], center: Tensor | None = None) -> list[Sparse]:
    """Select entries of ``(x − center) @ W.T + b`` [rows, n_latents] with each selector, differentiably in
    the selected values only (gradients to x, W, b and center are computed sparsely)."""
    memos = tuple({} for _ in selectors)
    out = _EncodeSelect.apply(x, W, b, center, tuple(selectors), memos)
    return [Sparse(out[i], out[i + 1], out[i + 2], out[i + 3], x.shape[0], W.shape[0], memos[i // 4])
            for i in range(0, len(out), 4)]


# ---------------------------------------------------------------- decoder


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals: Tensor, W: Tensor, idx: Tensor, rows: Tensor, offsets: Tensor, n_rows: int,
                memo: dict | None):
        ctx.save_for_backward(vals, W, idx, rows, offsets)
        ctx.n_rows, ctx.memo = n_rows, memo
        return F.embedding_bag(idx, W.to(vals.dtype), offsets, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        vals, W, idx, rows, offsets = ctx.saved_tensors
        grad_vals = grad_W = None
        if ctx.needs_input_grad[0]:  # per-entry dot products ⟨grad_out[row], W[idx]⟩, no forward re-run
            grad_vals = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out.to(vals.dtype), W.detach().to(vals.dtype), idx, offsets, rows, 0, -1)
        if ctx.needs_input_grad[1]:
            s = Sparse(vals, idx, rows, offsets, ctx.n_rows, W.shape[0], ctx.memo)
            grad_W = transpose_matmul(s, vals, grad_out.to(vals.dtype)).to(W.dtype)
        return grad_vals, grad_W, None, None, None, None, None


def decode(s: Sparse, W: Tensor) -> Tensor:
    """``S @ W`` ([rows, n] sparse times [n, d] dense), differentiable in the values and in W."""
    if s.idx.numel() == 0:
        return torch.zeros(s.n_rows, W.shape[1], dtype=W.dtype, device=W.device) + 0 * W.sum()
    return _SparseDecode.apply(s.vals, W, s.idx, s.rows, s.offsets, s.n_rows, s.memo)


# ---------------------------------------------------------------- selections


def row_topk(pre: Tensor, k: int, groups: int = 8) -> tuple[Tensor, Tensor]:
    """Per-row top-k (values, indices; unsorted), exact, in two stages (faster than one topk over the whole
    row: ~1.2× on CPU; see benchmarks/sae_kernels.py): split the columns into n/groups strided groups
    {j, j + n/groups, …}, keep the k groups with the largest maxima, and take the top-k among their members.
    Exact because a top-k entry's group has a maximum at least as large as the entry, so fewer than k groups
    can beat it."""
    r, n = pre.shape
    g = n // groups
    if n % groups or g < 4 * k:
        return pre.topk(k, dim=1, sorted=False)
    best = pre.view(r, groups, g).amax(1).topk(k, dim=1, sorted=False).indices  # [r, k] group ids
    cols = (best[:, :, None] + torch.arange(0, n, g, device=pre.device)).reshape(r, k * groups)
    vals, j = pre.gather(1, cols).topk(k, dim=1, sorted=False)
    return vals, cols.gather(1, j)


def topk_selector(k: int) -> Selector:
    """Per-row top-k, then ReLU (entries that would be negative become zeros but stay selected)."""

    def select(pre: Tensor) -> Sparse:
        vals, idx = row_topk(pre, k)
        return from_topk(vals.relu_(), idx, pre.shape[1])

    return select


def batch_topk_selector(k: int, candidates: int = 4) -> Selector:
    """The ``rows·k`` largest positive entries of the whole batch (BatchTopK, Bussmann et al. 2024).

    Exact: each row's top ``candidates·k`` are examined; if some row could hold more selected entries than
    that, the full matrix is used instead.
    """

    def select(pre: Tensor) -> Sparse:
        rows, n = pre.shape
        kc = min(n, candidates * k)
        cv, ci = pre.topk(kc, dim=1, sorted=True)
        total = rows * k
        flat = cv.reshape(-1)
        thr = flat.topk(min(total, flat.numel()), sorted=False).values.min()
        if kc < n and bool((cv[:, -1] >= thr).any()):  # a row might have more than kc winners
            full = pre.reshape(-1)
            thr = full.topk(total, sorted=False).values.min()
            return from_mask(pre, (pre >= thr) & (pre > 0))
        keep = (cv >= thr) & (cv > 0)
        r, j = keep.nonzero(as_tuple=True)
        counts = torch.bincount(r, minlength=rows)
        return Sparse(cv[r, j], ci[r, j], r, torch.cumsum(counts, 0) - counts, rows, n)

    return select


def threshold_selector(threshold: Tensor) -> Selector:
    """JumpReLU inference: entries with pre > threshold (per latent)."""

    def select(pre: Tensor) -> Sparse:
        return from_mask(pre, pre > threshold.to(pre.dtype))

    return select


def aux_selector(k_aux: int, dead: Tensor, rows: int | None = None) -> Selector:
    """Per-row top-``k_aux`` among the ``dead`` latents (indices) — the aux-k loss's selection — on the first
    ``rows`` rows only (the other rows get no entries)."""

    def select(pre: Tensor) -> Sparse:
        n_rows = pre.shape[0] if rows is None else min(rows, pre.shape[0])
        sub = pre[:n_rows].index_select(1, dead)
        vals, j = sub.topk(min(k_aux, dead.numel()), dim=1, sorted=False)
        s = from_topk(vals.relu_(), dead[j], pre.shape[1])
        return s._replace(offsets=torch.cat([s.offsets, s.offsets.new_full((pre.shape[0] - n_rows,), s.idx.numel())]),
                          n_rows=pre.shape[0])

    return select
