"""Feature statistics throughput and memory: a 4,608-feature SAE over 1M tokens of an activation store.

    python benchmarks/features.py --dict RUN/resid_post.15 --store STORE [--tokens 1M]

Prints JSON lines: the statistics pass (tokens/s, features × tokens/s, peak memory above the start —
RSS, which counts the memory-mapped store pages read, and anonymous memory, which is what the pass itself
allocates — and the accumulator's own size), and in the same run the references it is measured against: the
encoder alone over the same windows, the encoder-shaped GEMM rate, and the LM forward that would produce
the activations live (SmolLM2 up to the dictionary's layer, batch 16 × 128).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from common import AnonPeak, emit, gemm_rate, log, machine, reset_peak_rss, rss_mb

from llmri.features.stats import FeatureConfig, Windows, collect, encode_rows
from llmri.features.pipeline import load_dictionary
from llmri.store import ActivationStore


def store_windows(store: ActivationStore, points: list[str], tokens: int, batch: int):
    n = max(1, tokens // store.context)
    it = store.windows(batch, points=points)
    done = 0
    for toks, acts, keep in it:
        if done >= n:
            break
        take = min(len(toks), n - done)
        done += take
        yield Windows(toks[:take], {p: a[:take] for p, a in acts.items()}, keep[:take])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dict", required=True, help="a saved dictionary folder (e.g. 4,608-latent SAE on resid_post.15)")
    ap.add_argument("--store", required=True, help="activation store holding its input point")
    ap.add_argument("--tokens", type=float, default=1e6)
    ap.add_argument("--batch-windows", type=int, default=32)
    ap.add_argument("--lm-batches", type=int, default=3, help="LM batches timed for the forward reference (0: skip)")
    args = ap.parse_args()
    tokens = int(args.tokens)
    d = load_dictionary(args.dict)
    store = ActivationStore(args.store)
    points = list(d.cfg.in_points)
    n = d.n_latents
    emit({"machine": machine(), "dictionary": d.cfg.name, "features": n, "tokens": tokens})

    cfg = FeatureConfig(tokens=tokens, context=store.context)
    list(store_windows(store, points, 8 * store.context, args.batch_windows))  # map the first shard
    reset_peak_rss()
    base = rss_mb("VmRSS")
    t0 = time.perf_counter()
    with AnonPeak() as anon:
        stats = collect(d, store_windows(store, points, tokens, args.batch_windows), cfg, total_tokens=tokens)
    wall = time.perf_counter() - t0
    peak = rss_mb("VmHWM") - base
    buffers = sum(t.numel() * t.element_size() for ex in (stats.top, stats.samples) for t in ex) + stats.hist.numel() * 8
    read = stats.meta["windows"] * store.context
    emit({"pass": "feature statistics", "tokens_read": read, "tokens_kept": stats.n_tokens, "seconds": round(wall, 1),
          "tokens_per_s": round(read / wall), "feature_tokens_per_s": round(n * read / wall),
          "peak_rss_mb_above_start": round(peak), "peak_anon_mb_above_start": round(anon.peak_mb - anon.start_mb),
          "accumulator_mb": round(buffers / 2**20, 1),
          "cooc_tokens": stats.meta["cooc_tokens"], "dead": int((stats.counts == 0).sum())})

    # references, same run: the encoder alone over the same windows, the GEMM rate, the LM forward
    sub = list(store_windows(store, points, min(tokens, 131_072), args.batch_windows))
    t0 = time.perf_counter()
    with torch.no_grad():
        for w in sub:
            encode_rows(d, {p: w.acts[p][w.keep].float() for p in points})
    enc_wall = time.perf_counter() - t0
    enc_rate = sum(w.tokens.numel() for w in sub) / enc_wall
    gemm = gemm_rate(torch.float32, d_in=d.cfg.d_in * len(points), n=n)
    flops_per_token = 2 * d.cfg.d_in * len(points) * n
    rec = {"reference": "encoder only + GEMM", "encode_tokens_per_s": round(enc_rate), "gemm_gflops": round(gemm / 1e9, 1),
           "stats_vs_encode": round(read / wall / enc_rate, 3),
           "stats_encoder_gflops": round(read / wall * flops_per_token / 1e9, 1),
           "stats_vs_gemm_ceiling": round(read / wall * flops_per_token / gemm, 3)}
    if args.lm_batches:
        from llmri import data, load_model

        lm = load_model(store.meta["model"])
        spec = data.WindowSpec(context=store.context, split="train")
        batches = list(itertools.islice(data.batched(data.token_windows(lm, data.load_corpus(store.meta["corpus"]), spec), 16),
                                        args.lm_batches + 1))
        lm.capture(batches[0], points)
        t0 = time.perf_counter()
        for b in batches[1:]:
            lm.capture(b, points)
        lm_rate = sum(b.numel() for b in batches[1:]) / (time.perf_counter() - t0)
        rec |= {"lm_forward_tokens_per_s": round(lm_rate), "stats_vs_lm_forward": round(read / wall / lm_rate, 2),
                "stats_cost_fraction_of_live_pass": round(lm_rate / (read / wall), 3)}
    emit(rec)
    log("done")


if __name__ == "__main__":
    main()
