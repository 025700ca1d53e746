"""The parts of a TopK step after the encoder GEMM, one at a time, against their alternatives (CPU or CUDA).

    python benchmarks/sae_kernels.py [--device cuda] [--latents 4608,16384,65536] [--batch 4096]

For each width: the encoder GEMM itself (fp32 and bf16), the per-row top-k (one ``topk``; the exact
two-stage selection of ``sparse.row_topk`` at 8/16/32 columns per group), and the sparse product Sᵀ·X that
gives both weight gradients (a CSR product, the CSC view of S's row structure, a scatter-add of weighted rows,
and the dense GEMM of the scattered matrix). Every alternative is checked against the first of its kind
(max abs difference) and timed (median of ``--repeat`` after a warm-up, device synchronised). One JSON line
per (width, part, alternative), with its time as a multiple of the fp32 encoder GEMM's.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from common import emit, machine

from llmri.dictionaries.sparse import from_topk, row_topk, transpose_matmul


def timed(fn, device: str, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def sparse_alternatives(s, w, x):
    """Sᵀ·X four ways ([n_latents, d] fp32 results)."""
    n, B = s.n_latents, s.n_rows

    def csc():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            offs = torch.cat([s.offsets, s.offsets.new_tensor([s.idx.numel()])])
            return torch.sparse_csc_tensor(offs, s.idx, w, (n, B), check_invariants=False) @ x

    def scatter():
        return torch.zeros(n, x.shape[1], device=x.device).index_add_(0, s.idx, x[s.rows] * w[:, None])

    def dense_bf16():
        g = torch.zeros(B, n, dtype=torch.bfloat16, device=x.device)
        g[s.rows, s.idx] = w.to(torch.bfloat16)
        return (g.t() @ x.to(torch.bfloat16)).float()

    return {"csr (llmri)": lambda: transpose_matmul(s, w, x), "csc view": csc, "scatter-add": scatter,
            "dense bf16 GEMM": dense_bf16}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--latents", default="4608,16384")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    dev, B, d, k = args.device, args.batch, args.d_in, args.k
    torch.manual_seed(0)
    base = {"benchmark": "sae_kernels", "device": dev, "batch": B, "d_in": d, "k": k, "machine": machine()}
    x = torch.randn(B, d, device=dev)
    for n in (int(v) for v in args.latents.split(",")):
        W = torch.randn(n, d, device=dev) / d**0.5
        pre = torch.empty(B, n, device=dev)
        gemm = timed(lambda: torch.addmm(torch.zeros(n, device=dev), x, W.t(), out=pre), dev, args.repeat)
        emit({**base, "n_latents": n, "part": "encoder GEMM", "alternative": "fp32", "ms": round(gemm * 1e3, 3),
              "x_gemm": 1.0})
        xb, Wb = x.bfloat16(), W.bfloat16()
        preb = torch.empty(B, n, device=dev, dtype=torch.bfloat16)
        t = timed(lambda: torch.mm(xb, Wb.t(), out=preb), dev, args.repeat)
        emit({**base, "n_latents": n, "part": "encoder GEMM", "alternative": "bf16", "ms": round(t * 1e3, 3),
              "x_gemm": round(t / gemm, 3)})
        ref = pre.topk(k, dim=1).values.sort(1).values
        for name, fn in [("one topk", lambda: pre.topk(k, dim=1, sorted=False))] + [
                (f"two-stage, {g} per group", lambda g=g: row_topk(pre, k, groups=g)) for g in (8, 16, 32)]:
            vals = fn()[0].sort(1).values
            t = timed(fn, dev, args.repeat)
            emit({**base, "n_latents": n, "part": "selection", "alternative": name, "ms": round(t * 1e3, 3),
                  "x_gemm": round(t / gemm, 3), "max_abs_diff": float((vals - ref).abs().max())})
        vals, idx = pre.topk(k, dim=1, sorted=False)
        s = from_topk(vals, idx, n)
        w = torch.randn(B * k, device=dev)
        alts = sparse_alternatives(s, w, x)
        first = None
        for name, fn in alts.items():
            try:
                out = fn()
            except RuntimeError as e:  # a layout the device's sparse library lacks
                emit({**base, "n_latents": n, "part": "sparse product", "alternative": name, "error": str(e)[:200]})
                continue
            first = out if first is None else first
            t = timed(fn, dev, args.repeat)
            emit({**base, "n_latents": n, "part": "sparse product", "alternative": name, "ms": round(t * 1e3, 3),
                  "x_gemm": round(t / gemm, 3), "max_abs_diff": float((out - first).abs().max())})


if __name__ == "__main__":
    main()
