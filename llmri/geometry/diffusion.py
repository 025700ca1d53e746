"""Diffusion maps (Coifman & Lafon 2006) on a sparse k-nearest-neighbour graph, with Nyström extension.

Kernel. Each point is joined to its ``n_neighbors`` nearest points, itself included (distance 0, kernel 1):
* ``bandwidth="variable"`` (self-tuning, Zelnik-Manor & Perona 2004): σ_i = distance from i to its
  ``bandwidth_rank``-th nearest *other* point, K_ij = exp(−d_ij² / (σ_i σ_j)).
* ``bandwidth="fixed"``: K_ij = exp(−d_ij² / ε), ε = ``epsilon`` if given, else the median squared kNN distance
  × ``epsilon_scale``. The kNN cut drops kernel mass beyond the k-th neighbour: keep ε small against it.
Both kernels are symmetric in value, so the graph is symmetrised by the elementwise **max** of K and Kᵀ: the
kernel on the union of the kNN graphs (an edge found from one side only keeps its full weight).
σ_i and ε are floored at 1e-12 × the median kNN distance (squared for ε), so duplicate points (distance 0)
give finite kernels, never 0/0. A point with ≥ ``bandwidth_rank`` exact copies gets the floored σ: it and its
copies then form a connected component of their own (see below); deduplicate such data first.

α-normalisation. q = K1 (row sums); K^α_ij = K_ij / (q_i^α q_j^α). α = 1 removes the sampling density (the
limit operator is the Laplace–Beltrami operator of the manifold), α = ½ gives Fokker–Planck diffusion,
α = 0 the classic normalised graph Laplacian, whose eigenvectors are bent by the density. This holds for the
fixed bandwidth; σ_i ∝ p^{-1/d} of the variable one brings the density back into the limit operator (Berry &
Harlim 2016), so under strongly non-uniform sampling its coordinates are a density-warped parametrisation.

Spectrum. The Markov matrix P = D⁻¹K^α (D = K^α 1) is similar to the symmetric S = D^{-½} K^α D^{-½}: S v = λv
gives P ψ = λψ with ψ = D^{-½} v. The ``n_components + 1`` largest eigenpairs of S come from
``scipy.sparse.linalg.eigsh``; sorted descending, the first (λ₀ = 1, ψ₀ constant) is dropped. Each ψ_j is
normalised so that Σ_i π_i ψ_j(i)² = 1, π = D / ΣD the stationary distribution, with the sign that makes its
largest-magnitude entry positive. Diffusion coordinates at time t are λ_j^t ψ_j.
A disconnected graph has one eigenvalue 1 per connected component: ψ₁, ... are then (nearly) indicator
vectors of the components, not coordinates along any one of them; raise ``n_neighbors``.

Nyström (``DiffusionMap.transform``). A new point y gets a kernel row over its ``n_neighbors`` nearest training
points (σ_y = distance to its ``bandwidth_rank``-th nearest training point other than itself: a y equal to a
training point is taken to be that point), is α-normalised with q_y = its kernel row sum and the stored
training q, row-normalised to p(y, ·), and ψ_j(y) = (1/λ_j) Σ_i p(y, i) ψ_j(i). On a training point this is
P ψ / λ = ψ up to the edges the max-symmetrisation added to its row (found only from the other side): it
reproduces the training coordinates to rounding where those edges carry no weight, closely (≲ 1%) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import GeometryError
from ..validate import bounded, check, check_choice

if TYPE_CHECKING:
    from sklearn.neighbors import NearestNeighbors

_FLOOR = 1e-12


@dataclass
class DiffusionConfig:
    n_neighbors: int = bounded(32, 2)
    """k of the sparse kNN graph, each point itself included; ≥ 2 (and fewer than the points)."""
    bandwidth: Literal["variable", "fixed"] = "variable"
    """"variable": self-tuning σ_i per point; "fixed": one ε for all pairs."""
    bandwidth_rank: int = bounded(7, 1)
    """Variable bandwidth: σ_i is the distance to the point's bandwidth_rank-th nearest other point;
    in [1, n_neighbors − 1]."""
    epsilon: float | None = bounded(None, 0, lo_open=True, none=True)
    """Fixed bandwidth: ε in exp(−d²/ε), > 0; None = median squared kNN distance × epsilon_scale."""
    epsilon_scale: float = bounded(1.0, 0, lo_open=True)
    """Fixed bandwidth: multiplier of the median squared kNN distance when epsilon is None; > 0."""
    alpha: float = bounded(1.0, 0)
    """α-normalisation: 1 removes density effects, 0.5 Fokker–Planck, 0 the classic graph Laplacian; ≥ 0."""
    n_components: int = bounded(8, 1)
    """Non-trivial eigenpairs kept (the constant λ₀ = 1 one is dropped); ≥ 1 (and ≤ points − 2)."""
    t: float = bounded(1.0, 0)
    """Default diffusion time: coordinates are λ^t ψ; ≥ 0."""
    seed: int = bounded(0, 0)
    """Seed of eigsh's start vector (makes the result reproducible); ≥ 0."""

    def __post_init__(self):
        check(self, GeometryError)
        check_choice("bandwidth", self.bandwidth, ("variable", "fixed"), GeometryError)


def _check(X: np.ndarray, c: DiffusionConfig) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise GeometryError(f"diffusion maps need a 2-D array [n_points, dim], got shape {X.shape}",
                            "reshape to one row per point (X.reshape(len(X), -1))")
    n = len(X)
    if not np.isfinite(X).all():
        raise GeometryError("the data holds NaN or infinite values", "drop or impute those rows first")
    if n < c.n_neighbors + 1:
        raise GeometryError(f"{n} points is fewer than n_neighbors + 1 = {c.n_neighbors + 1}",
                            "lower n_neighbors or pass more points")
    if not 1 <= c.n_components < n - 1:
        raise GeometryError(f"n_components = {c.n_components} must be in [1, n_points − 2] = [1, {n - 2}]",
                            "lower n_components")
    if not 1 <= c.bandwidth_rank < c.n_neighbors:
        raise GeometryError(f"bandwidth_rank = {c.bandwidth_rank} must be in [1, n_neighbors − 1]",
                            "lower bandwidth_rank or raise n_neighbors")
    return X


def _kernel(dist: np.ndarray, idx: np.ndarray, sigma_rows, sigma: np.ndarray | None, eps: float | None) -> np.ndarray:
    """[m, k] kernel values for rows at distances ``dist`` from the training points ``idx``."""
    if eps is not None:
        return np.exp(-dist**2 / eps)
    return np.exp(-dist**2 / (sigma_rows[:, None] * sigma[idx]))


@dataclass
class DiffusionMap:
    config: DiffusionConfig
    X: np.ndarray
    """[n, dim] training points."""
    nn: NearestNeighbors
    """Neighbour index over the training points."""
    sigma: np.ndarray | None
    """[n] variable bandwidths (None for fixed)."""
    epsilon: float | None
    """Fixed bandwidth ε (None for variable)."""
    q: np.ndarray
    """[n] row sums of the symmetrised kernel K (density estimate used by the α-normalisation)."""
    d: np.ndarray
    """[n] row sums of K^α (the D of P = D⁻¹K^α); π = d / d.sum() is the stationary distribution."""
    evals: np.ndarray
    """[n_components] eigenvalues of P, descending, λ₀ = 1 dropped."""
    evecs: np.ndarray
    """[n, n_components] right eigenvectors ψ of P, Σ π ψ_j² = 1."""

    def coordinates(self, t: float | None = None) -> np.ndarray:
        """[n, n_components] diffusion coordinates λ^t ψ of the training points."""
        return self.evecs * self.evals ** (self.config.t if t is None else t)

    def transform(self, Y: np.ndarray, t: float | None = None) -> np.ndarray:
        """[m, n_components] Nyström-extended diffusion coordinates λ^t ψ(y) of new points."""
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim != 2 or Y.shape[1] != self.nn.n_features_in_:
            raise GeometryError(f"transform needs [m, {self.nn.n_features_in_}] points, got shape {Y.shape}",
                                "pass points of the same dimension as the training data")
        c = self.config
        dist, idx = self.nn.kneighbors(Y, n_neighbors=c.n_neighbors)
        sigma_y = None
        if self.sigma is not None:  # skip y itself when y is a training point (kNN distances to self are not 0)
            is_train = (Y == self.X[idx[:, 0]]).all(1)
            sigma_y = dist[np.arange(len(Y)), c.bandwidth_rank - ~is_train]
            sigma_y = np.maximum(sigma_y, _FLOOR * np.median(self.sigma))
        K = _kernel(dist, idx, sigma_y, self.sigma, self.epsilon)
        Ka = K / (K.sum(1, keepdims=True) ** c.alpha * self.q[idx] ** c.alpha)
        p = Ka / Ka.sum(1, keepdims=True)
        psi = np.einsum("mk,mkj->mj", p, self.evecs[idx]) / self.evals
        return psi * self.evals ** (c.t if t is None else t)


def fit(X: np.ndarray, config: DiffusionConfig | None = None) -> DiffusionMap:
    """Diffusion map of the rows of ``X`` [n, dim]."""
    import scipy.sparse as sp  # imported here: the CLI reads configs without scipy and scikit-learn
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh
    from sklearn.neighbors import NearestNeighbors

    c = config or DiffusionConfig()
    X = _check(X, c)
    n, k = len(X), c.n_neighbors
    nn = NearestNeighbors(n_neighbors=k).fit(X)
    dist, idx = nn.kneighbors(n_neighbors=k - 1)  # other points only (duplicates included), then prepend self
    dist = np.hstack([np.zeros((n, 1)), dist])
    idx = np.hstack([np.arange(n)[:, None], idx])
    scale = float(np.median(dist[:, 1:])) or 1.0  # all-duplicate data: any positive scale will do

    sigma = eps = None
    if c.bandwidth == "variable":
        sigma = np.maximum(dist[:, c.bandwidth_rank], _FLOOR * scale)
    else:
        eps = c.epsilon if c.epsilon is not None else float(np.median(dist[:, 1:] ** 2)) * c.epsilon_scale
        eps = max(eps, (_FLOOR * scale) ** 2)
    K = sp.csr_matrix((_kernel(dist, idx, sigma, sigma, eps).ravel(), (np.repeat(np.arange(n), k), idx.ravel())),
                      shape=(n, n))
    K = K.maximum(K.T).tocsr()  # union graph: the kernel values themselves are symmetric

    q = np.asarray(K.sum(1)).ravel()  # ≥ 1: the self-loop
    qa = sp.diags(q ** -c.alpha)
    Ka = qa @ K @ qa
    d = np.asarray(Ka.sum(1)).ravel()
    s = sp.diags(d ** -0.5)
    S = (s @ Ka @ s).tocsr()
    S = (S + S.T) * 0.5  # exact symmetry against rounding
    v0 = np.random.default_rng(c.seed).standard_normal(n)
    try:
        lam, V = eigsh(S, k=c.n_components + 1, which="LA", v0=v0)
    except ArpackNoConvergence:
        raise GeometryError("the eigensolver did not converge: the kNN graph probably falls apart into many pieces",
                            "raise n_neighbors or epsilon / epsilon_scale, or deduplicate the points") from None
    order = np.argsort(lam)[::-1][1:]
    lam, V = lam[order], V[:, order]
    psi = V / np.sqrt(d)[:, None] * np.sqrt(d.sum())  # Σ π ψ² = Σ v² = 1
    psi *= np.sign(psi[np.abs(psi).argmax(0), np.arange(psi.shape[1])])
    return DiffusionMap(c, X, nn, sigma, eps, q, d, lam, psi)
