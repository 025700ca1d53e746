"""Intrinsic-dimension estimators: the README's validation table and their cost at scale.

    python benchmarks/intrinsic_dimension.py            # validation table (markdown) on the synthetic
                                                        # manifolds of tests/test_geometry.py (same seeded points)
    python benchmarks/intrinsic_dimension.py --timing   # JSON lines: seconds per estimator on 50,000 × 576 points
                                                        # (a 10-d ball embedded linearly, small noise)

The timing compares each estimator with the time torch takes for the [n×d]·[d×n] Gram matrix a brute-force
all-pairs neighbour search needs (2n²d flop at the GEMM rate measured in the same run).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import emit, machine  # noqa: E402
from test_geometry import DATA, sample  # noqa: E402

from llmri.geometry.intrinsic import gride, local_pca, mle, twonn  # noqa: E402


def table() -> None:
    print("| dataset (d) | TwoNN | MLE (k=20) | GRIDE n=1 | GRIDE n=4 | local PCA |\n|---|---|---|---|---|---|")
    for name in DATA:
        X, d = sample(name)
        g = gride(X, ranks=(1, 4))
        cells = [twonn(X), mle(X), g[1], g[4], local_pca(X)]
        print(f"| {name} ({d}) | " + " | ".join(f"{e.d:.2f} [{e.lo:.2f}, {e.hi:.2f}]" for e in cells) + " |")


def gemm_gflops(d: int = 576, n: int = 4096) -> float:
    a = torch.randn(n, d)
    b = torch.randn(d, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * n * n * d / (time.perf_counter() - t0) / 1e9


def timing(n: int = 50_000, D: int = 576, d: int = 10) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, d))
    z *= (rng.random(n) ** (1 / d) / np.linalg.norm(z, axis=1))[:, None]
    X = (z @ np.linalg.qr(rng.standard_normal((D, d)))[0].T + 1e-4 * rng.standard_normal((n, D))).astype(np.float64)
    rate = gemm_gflops(D)
    gram_s = 2 * n * n * D / (rate * 1e9)
    emit({"benchmark": "intrinsic_dimension", "machine": machine(), "points": n, "ambient": D, "true_d": d,
          "gemm_gflops": round(rate, 1), "gram_seconds_at_gemm_rate": round(gram_s, 2)})
    for name, fn in (("twonn", lambda: twonn(X)), ("mle_k20", lambda: mle(X)),
                     ("gride_n1_4_16", lambda: gride(X, ranks=(1, 4, 16))), ("local_pca_500", lambda: local_pca(X))):
        t0 = time.perf_counter()
        est = fn()
        s = time.perf_counter() - t0
        d_hat = {k: round(v.d, 2) for k, v in est.items()} if isinstance(est, dict) else round(est.d, 2)
        emit({"estimator": name, "seconds": round(s, 2), "x_gram_time": round(s / gram_s, 2), "estimate": d_hat})


if __name__ == "__main__":
    timing() if "--timing" in sys.argv else table()
