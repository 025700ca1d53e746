"""Diffusion maps against manifolds with a known parametrisation (swiss roll, circle), linearly embedded in 576
dimensions with small noise; each dataset seeded by its name."""

import zlib

import numpy as np
import pytest
from scipy.stats import spearmanr
from test_geometry import embed

from llmri.errors import GeometryError
from llmri.geometry.diffusion import DiffusionConfig, fit


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def swiss_roll(name, n=2000, noise=1e-2):
    """Roll parameter t ∈ [1.5π, 4.5π] (arc length ≈ 89) ≫ height 10, so the slowest mode runs along t."""
    rng = rng_for(name)
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    return embed(np.stack([t * np.cos(t), 10 * rng.random(n), t * np.sin(t)], 1), rng, noise=noise), t


def circle(name, n=1000, warp=0.0, noise=2e-3):
    """Unit circle; warp > 0 samples θ = u − warp·sin u (u uniform): density ratio (1 + warp) / (1 − warp)."""
    rng = rng_for(name)
    u = 2 * np.pi * rng.random(n)
    theta = wrap(u - warp * np.sin(u))
    return embed(np.stack([np.cos(theta), np.sin(theta)], 1), rng, noise=noise), theta


def wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def angle_error(psi, theta):
    """Median |wrapped error| of atan2(ψ₂, ψ₁) against θ, after the better reflection and the mean rotation."""
    errs = []
    for sign in (1, -1):
        a = sign * np.arctan2(psi[:, 1], psi[:, 0])
        offset = np.angle(np.exp(1j * (a - theta)).mean())
        errs.append(float(np.median(np.abs(wrap(a - theta - offset)))))
    return min(errs)


@pytest.mark.parametrize("bandwidth", ["variable", "fixed"])
def test_swiss_roll_slowest_mode_is_the_roll_parameter(bandwidth):
    X, t = swiss_roll("diffusion-roll")
    m = fit(X, DiffusionConfig(bandwidth=bandwidth))
    assert m.evecs.shape == (2000, 8) and m.evals.shape == (8,)
    assert abs(spearmanr(m.evecs[:, 0], t)[0]) >= 0.95


@pytest.mark.parametrize("bandwidth", ["variable", "fixed"])
def test_circle_angle_and_degenerate_pair(bandwidth):
    X, theta = circle("diffusion-circle")
    m = fit(X, DiffusionConfig(bandwidth=bandwidth))
    assert angle_error(m.evecs, theta) < 0.1
    gap = 1 - m.evals  # decay rates: Laplacian eigenvalues k² on a circle → pairs at k = 1, 2, ...
    assert abs(gap[1] - gap[0]) < 0.15 * gap[0]  # 0.4–4.6% on 6 seeds; relative to λ itself it is < 1e-4
    assert 3.5 < gap[2] / gap[0] < 4.5 and 3.5 < gap[3] / gap[0] < 4.5


def test_nystrom_extends_to_held_out_points_and_nearly_reproduces_training():
    X, t = swiss_roll("diffusion-nystrom")
    m = fit(X[:1500])
    held = m.transform(X[1500:])
    assert held.shape == (500, 8) and abs(spearmanr(held[:, 0], t[1500:])[0]) >= 0.95
    # not exact: the max-symmetrised training rows also hold edges found only from the other point's kNN list
    again, train = m.transform(X[:1500]), m.coordinates()
    for j in range(2):
        assert np.corrcoef(again[:, j], train[:, j])[0, 1] > 0.9999
        assert np.abs(again[:, j] - train[:, j]).max() < 0.01 * np.abs(train[:, j]).max()  # measured 0.2%, 0.35%


@pytest.mark.parametrize("bandwidth", ["variable", "fixed"])
def test_nystrom_is_exact_when_symmetrisation_adds_nothing(bandwidth):
    # 200 points on a circle, k = 100: the points a kNN list misses are > √2 away, where the kernel is < e^-50,
    # so the max-symmetrised row equals the kNN row to rounding and P ψ = λ ψ is reproduced exactly
    X, _ = circle("diffusion-exact", n=200, noise=1e-4)
    m = fit(X, DiffusionConfig(bandwidth=bandwidth, n_neighbors=100, epsilon=0.01, alpha=0.5, n_components=4))
    np.testing.assert_allclose(m.transform(X, t=2), m.coordinates(t=2), rtol=0, atol=1e-9)


def test_eigenvalues_and_diffusion_time():
    X, _ = swiss_roll("diffusion-roll")
    m = fit(X[:1000], DiffusionConfig(n_components=6, t=1))
    assert np.all(m.evals > 0) and np.all(m.evals <= 1 + 1e-12) and np.all(np.diff(m.evals) <= 0)
    pi = m.d / m.d.sum()
    np.testing.assert_allclose((pi[:, None] * m.evecs**2).sum(0), 1, rtol=1e-8)
    np.testing.assert_allclose(m.coordinates(t=2), m.evecs * m.evals**2)
    np.testing.assert_allclose(m.coordinates(), m.evecs * m.evals)
    np.testing.assert_allclose(m.transform(X[1000:1010], t=2), m.transform(X[1000:1010], t=0) * m.evals**2)


def test_alpha_one_removes_a_nine_to_one_sampling_density():
    # fixed bandwidth (α = 1 → Laplace–Beltrami); k = 100 so the kernel has decayed within the kNN radius even
    # where the points are densest. α = 0 was worse on all 5 seeds tried (0.13–0.22 rad against 0.013–0.077).
    X, theta = circle("diffusion-density", warp=0.8, noise=1e-4)
    cfg = dict(bandwidth="fixed", n_neighbors=100, epsilon_scale=0.3, n_components=2)
    err1 = angle_error(fit(X, DiffusionConfig(alpha=1.0, **cfg)).evecs, theta)
    err0 = angle_error(fit(X, DiffusionConfig(alpha=0.0, **cfg)).evecs, theta)
    assert err1 < 0.15 and err0 > 2 * err1


@pytest.mark.parametrize("bandwidth", ["variable", "fixed"])
def test_duplicate_rows_give_finite_coordinates(bandwidth):
    X, t = swiss_roll("diffusion-dup")
    X, t = np.concatenate([X, X[:100]]), np.concatenate([t, t[:100]])  # 5% exact duplicates
    m = fit(X, DiffusionConfig(bandwidth=bandwidth))
    assert np.isfinite(m.evecs).all() and np.isfinite(m.evals).all() and np.isfinite(m.transform(X[:50])).all()
    # copies agree up to kNN tie-breaking (a third point's list may hold only one of two equidistant copies)
    assert np.abs(m.evecs[2000:, :2] - m.evecs[:100, :2]).max() < 0.1
    assert abs(spearmanr(m.evecs[:, 0], t)[0]) >= 0.95
    # many copies of one point: σ hits the floor, no NaN (the copies become their own component)
    m = fit(np.concatenate([X, np.repeat(X[:1], 20, 0)]), DiffusionConfig(bandwidth=bandwidth, n_components=3))
    assert np.isfinite(m.evecs).all() and np.isfinite(m.evals).all()


def test_bad_input_raises_a_clear_error():
    X, _ = circle("diffusion-bad", n=40)
    with pytest.raises(GeometryError, match="fewer than n_neighbors"):
        fit(X[:32])
    with pytest.raises(GeometryError, match="n_components"):
        fit(X, DiffusionConfig(n_neighbors=8, n_components=40))
    with pytest.raises(GeometryError, match="2-D array"):
        fit(X[:, 0])
    with pytest.raises(GeometryError, match="bandwidth"):
        fit(X, DiffusionConfig(n_neighbors=8, bandwidth="adaptive"))
    with pytest.raises(GeometryError, match="same dimension"):
        fit(X, DiffusionConfig(n_neighbors=8, n_components=2)).transform(X[:, :10])
    X, _ = circle("diffusion-shattered", n=300, noise=1e-4)  # ε far below the spacing: 300 isolated-ish points
    with pytest.raises(GeometryError, match="did not converge"):
        fit(X, DiffusionConfig(bandwidth="fixed", epsilon=1e-6))
