"""Streaming per-point activation statistics (norms, kurtosis, outlier dimensions) over kept tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PointStats:
    """Summary of one hook point over the kept tokens of a corpus sample."""

    n_tokens: int
    """Tokens included (after exclusion)."""
    n_excluded: int
    """Tokens excluded (position 0, special tokens, norm outliers)."""
    mean_norm: float
    """Mean L2 norm of the activation vector."""
    std_norm: float
    """Standard deviation of the norm."""
    excluded_mean_norm: float
    """Mean norm of the excluded tokens (the attention sinks), NaN if none."""
    kurtosis: float
    """Mean over tokens of the excess kurtosis of the token's coordinates (0 for Gaussian; large = a few
    coordinates dominate, the 'outlier features' signature)."""
    top_dims: list[tuple[int, float]]
    """Dimensions with the largest mean |x_i|, as (dim, ratio to the median dimension's mean |x|)."""
    mean_abs: list[float]
    """Mean |x_i| of every dimension."""


class RunningStats:
    """Accumulates :class:`PointStats` over batches in float64; memory O(d)."""

    def __init__(self, d: int, n_top: int = 5):
        self.d, self.n_top = d, n_top
        self.n = 0
        self.n_excl = 0
        self.sum_norm = 0.0
        self.sum_norm2 = 0.0
        self.sum_excl_norm = 0.0
        self.sum_kurt = 0.0
        self.sum_abs = torch.zeros(d, dtype=torch.float64)

    def update(self, x: Tensor, keep: Tensor) -> None:
        """``x`` [..., d] activations, ``keep`` [...] bool mask of included tokens."""
        x = x.reshape(-1, self.d).float()
        keep = keep.reshape(-1).to(x.device)
        norms = x.norm(dim=-1).double()
        kept = x[keep]
        self.n += len(kept)
        self.n_excl += int((~keep).sum())
        self.sum_excl_norm += float(norms[~keep].sum())
        self.sum_norm += float(norms[keep].sum())
        self.sum_norm2 += float(norms[keep].square().sum())
        if len(kept):
            c2 = (kept - kept.mean(dim=-1, keepdim=True)).square_()
            var = c2.mean(dim=-1).clamp_min(1e-30)
            self.sum_kurt += float((c2.square_().mean(dim=-1) / var.square() - 3.0).double().sum())
            self.sum_abs += kept.abs().sum(dim=0).double().cpu()

    def result(self) -> PointStats:
        n = max(self.n, 1)
        mean = self.sum_norm / n
        mean_abs = self.sum_abs / n
        ratio = mean_abs / mean_abs.median().clamp_min(1e-30)
        top = ratio.topk(min(self.n_top, self.d))
        return PointStats(
            n_tokens=self.n,
            n_excluded=self.n_excl,
            mean_norm=mean,
            std_norm=max(self.sum_norm2 / n - mean**2, 0.0) ** 0.5,
            excluded_mean_norm=self.sum_excl_norm / self.n_excl if self.n_excl else float("nan"),
            kurtosis=self.sum_kurt / n,
            top_dims=[(int(i), float(r)) for r, i in zip(top.values, top.indices)],
            mean_abs=mean_abs.tolist(),
        )
