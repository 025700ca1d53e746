"""Intrinsic-dimension estimators on the synthetic manifolds of tests/test_geometry.py (same seeded points):
the validation table of the README, as markdown.

    python benchmarks/intrinsic_dimension.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_geometry import DATA, sample  # noqa: E402

from llmri.geometry.intrinsic import gride, local_pca, mle, twonn  # noqa: E402


def main() -> None:
    print("| dataset (d) | TwoNN | MLE (k=20) | GRIDE n=1 | GRIDE n=4 | local PCA |\n|---|---|---|---|---|---|")
    for name in DATA:
        X, d = sample(name)
        g = gride(X, ranks=(1, 4))
        cells = [twonn(X), mle(X), g[1], g[4], local_pca(X)]
        print(f"| {name} ({d}) | " + " | ".join(f"{e.d:.2f} [{e.lo:.2f}, {e.hi:.2f}]" for e in cells) + " |")


if __name__ == "__main__":
    main()
