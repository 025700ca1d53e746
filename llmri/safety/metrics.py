"""Small statistics for safety evaluations: rates with Wilson intervals, agreement between labellings, and
seeded bootstrap intervals. Pure Python and NumPy; definitions as in DESIGN.md §5.

- :func:`wilson` — a rate k/n with its Wilson score interval (Wilson 1927): with p = k/n,
  centre = (p + z²/2n) / (1 + z²/n), half-width = z·√(p(1−p)/n + z²/4n²) / (1 + z²/n). z = 1.96 gives the
  95% interval that DESIGN.md asks for with every ASR (report n and the judge too).
- :func:`cohen_kappa` — Cohen's κ = (p_o − p_e) / (1 − p_e): p_o the observed agreement, p_e the agreement
  expected from the two labellings' marginal frequencies (Cohen 1960). Unweighted, equal to
  ``sklearn.metrics.cohen_kappa_score``; NaN when p_e = 1 (both labellings use one and the same label).
- :func:`confusion` — counts with rows = the first labelling (the reference), columns = the second.
- :func:`bootstrap` — percentile bootstrap (Efron 1979): resample the n items with replacement ``n_boot``
  times from ``numpy.random.default_rng(seed)``, recompute the statistic, take the (1−level)/2 and
  (1+level)/2 quantiles; resamples whose statistic is NaN are skipped. :func:`bootstrap_mean` and
  :func:`bootstrap_kappa` are the two uses.
- :func:`auroc` — the area under the ROC curve as the Mann–Whitney statistic: the probability that a random
  positive scores above a random negative, ties counting one half, (R₊ − n₊(n₊+1)/2) / (n₊n₀) with R₊ the sum
  of the positives' mid-ranks among all scores; equal to ``sklearn.metrics.roc_auc_score``.
  :func:`auroc_interval` adds a *stratified* percentile bootstrap (positives and negatives resampled apart, so
  every resample has both classes; all resamples ranked at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..errors import SafetyError


class Interval(NamedTuple):
    """An estimate with its interval."""

    value: float
    """The point estimate (a rate, a mean, κ)."""
    lo: float
    """Lower end of the interval."""
    hi: float
    """Upper end of the interval."""


def wilson(k: int, n: int, z: float = 1.96) -> Interval:
    """The rate k/n and its Wilson score interval (module docstring); z = 1.96 for 95%."""
    if n <= 0 or not 0 <= k <= n:
        raise SafetyError(f"a rate needs 0 ≤ k ≤ n and n ≥ 1, got k={k}, n={n}", "count at least one item")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, lo, hi)


def _labels(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    if len(a) != len(b):
        raise SafetyError(f"two labellings of different lengths ({len(a)} and {len(b)})", "label the same items")
    if labels is None:
        return sorted(set(a) | set(b))
    unknown = sorted((set(a) | set(b)) - set(labels))
    if unknown:
        raise SafetyError(f"labels {unknown} are not among {list(labels)}", "pass every label that occurs")
    return list(labels)


def confusion(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None) -> list[list[int]]:
    """Counts ``m[i][j]`` of items labelled ``labels[i]`` in ``a`` (the reference) and ``labels[j]`` in ``b``."""
    labels = _labels(a, b, labels)
    index = {label: i for i, label in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for x, y in zip(a, b):
        m[index[x]][index[y]] += 1
    return m


def _kappa(m: np.ndarray) -> float:
    n = m.sum()
    if n == 0:
        return float("nan")
    po = np.trace(m) / n
    pe = float((m.sum(0) * m.sum(1)).sum()) / (n * n)
    return float("nan") if pe >= 1 else float((po - pe) / (1 - pe))


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Cohen's κ between two labellings of the same items (module docstring)."""
    return _kappa(np.asarray(confusion(a, b, labels), dtype=np.float64))


def bootstrap(n: int, stat: Callable[[np.ndarray], float], *, n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> Interval:
    """Percentile bootstrap of ``stat(indices)`` over ``n`` items (module docstring). ``stat`` gets an int
    array of indices into the items (``np.arange(n)`` for the point estimate)."""
    if n <= 0 or n_boot < 1 or not 0 < level < 1:
        raise SafetyError(f"bootstrap needs n ≥ 1, n_boot ≥ 1 and 0 < level < 1 (got {n}, {n_boot}, {level})",
                          "give at least one item")
    rng = np.random.default_rng(seed)
    value = float(stat(np.arange(n)))
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return Interval(value, float("nan"), float("nan"))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(lo), float(hi))


def bootstrap_mean(x: Sequence[float], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean of ``x`` with its percentile-bootstrap interval."""
    arr = np.asarray(x, dtype=np.float64)
    return bootstrap(len(arr), lambda idx: arr[idx].mean(), n_boot=n_boot, seed=seed, level=level)


def bootstrap_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None, *, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> Interval:
    """Cohen's κ of ``a`` and ``b`` with its percentile-bootstrap interval (items resampled in pairs)."""
    labels = _labels(a, b, labels)
    index = {label: i for i, label in enumerate(labels)}
    ia = np.array([index[x] for x in a], dtype=np.int64)
    ib = np.array([index[y] for y in b], dtype=np.int64)
    k = len(labels)

    def stat(idx: np.ndarray) -> float:
        m = np.zeros((k, k), dtype=np.float64)
        np.add.at(m, (ia[idx], ib[idx]), 1)
        return _kappa(m)

    return bootstrap(len(ia), stat, n_boot=n_boot, seed=seed, level=level)


def auroc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each row pair: ``pos`` [B, n₊] and ``neg`` [B, n₀] scores (module docstring); many detectors at once."""
    from scipy.stats import rankdata  # not at import: the CLI starts without scipy

    n1, n0 = pos.shape[1], neg.shape[1]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # mid-ranks: ties count one half
    return (ranks[:, :n1].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _split(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise SafetyError(f"labels and scores must be two lists of one length (got {y.shape} and {s.shape})",
                          "give one score per labelled item")
    if y.all() or not y.any():
        raise SafetyError(f"an AUROC needs positives and negatives, got {int(y.sum())} positive(s) of {len(y)}",
                          "score items of both classes")
    if not np.isfinite(s).all():
        raise SafetyError("an AUROC got a score that is NaN or infinite", "check the detector's inputs")
    return s[y], s[~y]


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive; module docstring)."""
    pos, neg = _split(labels, scores)
    return float(auroc_rows(pos[None], neg[None])[0])


def auroc_interval(labels: Sequence[int], scores: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> Interval:
    """The AUROC with its stratified percentile-bootstrap interval (module docstring)."""
    pos, neg = _split(labels, scores)
    if n_boot < 1 or not 0 < level < 1:
        raise SafetyError(f"bootstrap needs n_boot ≥ 1 and 0 < level < 1 (got {n_boot}, {level})", "use the defaults")
    rng = np.random.default_rng(seed)
    draws = auroc_rows(pos[rng.integers(0, len(pos), (n_boot, len(pos)))],
                        neg[rng.integers(0, len(neg), (n_boot, len(neg)))])
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(auroc_rows(pos[None], neg[None])[0]), float(lo), float(hi))
