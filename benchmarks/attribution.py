"""Attribution-graph cost against prompt length: time, and memory, on the default model.

    python benchmarks/attribution.py [--transcoders RUN] [--lengths 16,64,256] [--max-features 4096]

Without ``--transcoders`` it uses random TopK transcoders of the trained set's shape (2,304 latents per
layer, k = 32, with skip): the cost depends on shapes and on how many features are active, not on the
weights. Prompts are corpus text cut to the length. Prints one JSON line per length: attribution time and
its ratio to one bare forward pass of the prompt (and to a forward of the batch of prompt copies the
backward passes run through), rows computed per second, the peak anonymous memory above the start, and
the two big buffers (row buffer, final adjacency) it predicts; then an extrapolation of the longest
prompt that fits in a given memory budget from that memory model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from common import AnonPeak, emit, log, machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import llmri  # noqa: E402
from llmri import data  # noqa: E402
from llmri.circuits import AttributionConfig, attribute, load_transcoders  # noqa: E402


def random_set(model, n: int, k: int):
    from test_circuits import random_tcs

    return random_tcs(model, arch="topk", n=n, k=k, skip=True)


def prompt_ids(model, length: int) -> torch.Tensor:
    docs = data.load_corpus(data.DEFAULT_CORPUS)
    ids = next(data.token_windows(model, docs, data.WindowSpec(context=length, split="eval", seed=1)))
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transcoders", default="")
    ap.add_argument("--lengths", default="16,64,256")
    ap.add_argument("--max-features", type=int, default=4096)
    ap.add_argument("--budget-gib", type=float, default=24.0)
    a = ap.parse_args()
    model = llmri.load_model()
    L = model.n_layers
    tcs = (load_transcoders(a.transcoders, L) if a.transcoders else random_set(model, 4 * model.d_model, 32))
    emit({"benchmark": "attribution", "machine": machine(), "transcoders": a.transcoders or "random topk 4x k=32 skip",
          "max_feature_nodes": a.max_features})
    fits = []
    for P in [int(x) for x in a.lengths.split(",")]:
        ids = prompt_ids(model, P)
        with torch.no_grad():
            t = time.perf_counter()
            model.capture(ids[None], ["logits"])
            fwd = time.perf_counter() - t
        cfg = AttributionConfig(max_feature_nodes=a.max_features)
        B = max(1, min(64, 8192 // P))
        with torch.no_grad():
            t = time.perf_counter()
            model.capture(ids[None].expand(B, -1), ["final_norm"])
            fwd_b = time.perf_counter() - t
        log(f"P={P}: forward {fwd:.2f}s, batch-{B} forward {fwd_b:.2f}s; attributing…")
        with AnonPeak() as mem:
            t = time.perf_counter()
            g = attribute(model, tcs, ids, cfg)
            secs = time.perf_counter() - t
        rows = g.n_features + g.n_logits
        n_cols = g.n_active + (L + 1) * P
        row_buf = rows * n_cols * 4 / 2**20
        adj = g.adjacency.numel() * 4 / 2**20
        rec = {"benchmark": "attribution", "tokens": P, "active_features": g.n_active, "feature_rows": g.n_features,
               "nodes": int(g.adjacency.shape[0]), "batch": B, "seconds": round(secs, 2),
               "x_forward": round(secs / fwd, 1), "x_batch_forward": round(secs / fwd_b, 1),
               "rows_per_s": round(rows / secs, 1), "peak_anon_mb": round(mem.peak_mb - mem.start_mb),
               "row_buffer_mb": round(row_buf), "adjacency_mb": round(adj)}
        emit(rec)
        fits.append(rec)
        del g
    # memory model: row buffer ∝ (F + logits)·(active + (L+1)P), adjacency ∝ N², plus what the largest run used besides
    last = fits[-1]
    per_tok_active = last["active_features"] / last["tokens"]
    rest = last["peak_anon_mb"] - last["row_buffer_mb"] - last["adjacency_mb"]
    F = a.max_features + 10
    for P in range(64, 200_000, 64):
        n_f = per_tok_active * P
        rows = min(F, n_f + 10)
        N = min(a.max_features, n_f) + (L + 1) * P + 10
        need = rows * (n_f + (L + 1) * P) * 4 / 2**20 + N * N * 4 / 2**20 + max(rest, 0)
        if need > a.budget_gib * 1024:
            emit({"benchmark": "attribution", "extrapolated_max_tokens": P - 64, "budget_gib": a.budget_gib,
                  "model": "row buffer + adjacency + the largest run's other memory; active features per token "
                           f"{per_tok_active:.0f}"})
            break


if __name__ == "__main__":
    main()
