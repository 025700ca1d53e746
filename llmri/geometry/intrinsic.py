"""Intrinsic-dimension estimators (definitions below), with bootstrap confidence intervals.

* TwoNN (Facco et al. 2017): μ = r₂/r₁ per point; d = slope through the origin of −log(1 − F(μ)) against
  log μ, F the empirical CDF, the top 10% of μ discarded.
* MLE (Levina & Bickel 2005) over the k nearest neighbours, averaged as MacKay & Ghahramani suggest: the
  mean of the per-point *inverse* estimates, inverted.
* GRIDE (Denti et al. 2022): maximum likelihood on μ = r_{2n}/r_n, the multi-scale generalisation of TwoNN;
  d as a function of the neighbourhood rank n.
* Local PCA (Fukunaga–Olsen): per sampled point, the number of eigenvalues of its k neighbours' covariance
  above ``alpha`` × the largest; averaged.

Duplicate points (identical activations, e.g. a repeated token at the same position) make r₁ = 0; they are
removed before any estimate (their count is returned). Nearest neighbours come from scikit-learn.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Estimate(NamedTuple):
    d: float
    lo: float
    """Bootstrap 2.5% quantile."""
    hi: float
    """Bootstrap 97.5% quantile."""
    n: int
    """Distinct points used."""
    duplicates: int
    """Points dropped as exact duplicates."""


def distinct(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of ``X`` with exact duplicates removed, and how many were removed."""
    u = np.unique(X, axis=0)
    return u, len(X) - len(u)


def neighbour_distances(X: np.ndarray, k: int) -> np.ndarray:
    """[n, k] distances to the k nearest other points (ascending)."""
    from sklearn.neighbors import NearestNeighbors  # imported here: the CLI reads configs without scikit-learn

    nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
    dist, _ = nn.kneighbors(X)
    return dist[:, 1:]


def _bootstrap(per_point: np.ndarray, stat, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = [stat(per_point[rng.integers(0, len(per_point), len(per_point))]) for _ in range(n_boot)]
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def _twonn_from_mu(mu: np.ndarray, discard: float = 0.1) -> float:
    mu = np.sort(mu)
    n = len(mu)
    keep = int(np.floor(n * (1 - discard)))
    F = np.arange(1, n + 1) / n
    x, y = np.log(mu[:keep]), -np.log(1 - F[:keep])
    return float((x * y).sum() / (x * x).sum())


def twonn(X: np.ndarray, *, n_boot: int = 200, seed: int = 0) -> Estimate:
    Xd, dup = distinct(np.asarray(X, dtype=np.float64))
    r = neighbour_distances(Xd, 2)
    mu = r[:, 1] / r[:, 0]
    return Estimate(_twonn_from_mu(mu), *_bootstrap(mu, _twonn_from_mu, n_boot, seed), len(Xd), dup)


def mle(X: np.ndarray, k: int = 20, *, n_boot: int = 200, seed: int = 0) -> Estimate:
    Xd, dup = distinct(np.asarray(X, dtype=np.float64))
    r = neighbour_distances(Xd, k)
    # per-point inverse estimate: mean over j < k of log(T_k / T_j)
    inv = np.log(r[:, -1:] / r[:, :-1]).mean(1)
    stat = lambda v: 1.0 / v.mean()  # noqa: E731
    return Estimate(stat(inv), *_bootstrap(inv, stat, n_boot, seed), len(Xd), dup)


def _gride_d(mu: np.ndarray, n1: int, n2: int) -> float:
    """MLE of d from μ = r_{n2}/r_{n1}: f(μ) = d (μ^d − 1)^{n2−n1−1} / (μ^{(n2−1)d+1} B(n2−n1, n1))."""
    from scipy.optimize import minimize_scalar
    from scipy.special import betaln

    lm = np.log(mu)

    def nll(d: float) -> float:
        a = d * lm
        log_term = np.log(np.expm1(a))
        return -(len(mu) * np.log(d) + (n2 - n1 - 1) * log_term.sum() - ((n2 - 1) * d + 1) * lm.sum()
                 - len(mu) * betaln(n2 - n1, n1))

    return float(minimize_scalar(nll, bounds=(0.1, 200.0), method="bounded").x)


def gride(X: np.ndarray, ranks: tuple[int, ...] = (1, 2, 4, 8, 16), *, n_boot: int = 50, seed: int = 0) -> dict[int, Estimate]:
    """ID at neighbourhood ranks n (μ = r_{2n}/r_n): small n probe the finest scale (and noise), larger n
    coarser scales (and curvature)."""
    Xd, dup = distinct(np.asarray(X, dtype=np.float64))
    r = neighbour_distances(Xd, 2 * max(ranks))
    out = {}
    for n in ranks:
        mu = r[:, 2 * n - 1] / r[:, n - 1]
        stat = lambda v, n=n: _gride_d(v, n, 2 * n)  # noqa: E731
        out[n] = Estimate(stat(mu), *_bootstrap(mu, stat, n_boot, seed), len(Xd), dup)
    return out


def local_pca(X: np.ndarray, k: int = 60, *, alpha: float = 0.1, samples: int = 500, n_boot: int = 200,
              seed: int = 0) -> Estimate:
    Xd, dup = distinct(np.asarray(X, dtype=np.float64))
    rng = np.random.default_rng(seed)
    centres = rng.choice(len(Xd), min(samples, len(Xd)), replace=False)
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(Xd)
    _, idx = nn.kneighbors(Xd[centres])
    dims = []
    for rows in idx:
        P = Xd[rows] - Xd[rows].mean(0)
        s = np.linalg.eigvalsh(P @ P.T)[::-1]  # squared singular values, via the small k×k Gram matrix
        dims.append(int((s > alpha * s[0]).sum()))
    dims = np.array(dims, dtype=np.float64)
    stat = lambda v: float(v.mean())  # noqa: E731
    return Estimate(stat(dims), *_bootstrap(dims, stat, n_boot, seed), len(Xd), dup)
