"""Caching throughput: ``create_store`` tokens/s as a ratio to a bare forward pass on the same inputs.

    python benchmarks/cache_throughput.py [--tokens 8192] [--batch-size 16] [--context 128]

Prints one JSON line per configuration. Baselines run on the very same windows in the same process:
``forward`` = ``model.hf(input_ids)`` (full model with logits), ``body`` = the transformer body without the
unembedding. Each timing is the best of ``--repeat`` runs. The caching time is the whole ``create_store``
call: tokenising the corpus on the fly, the forward pass(es) with hooks, float16 conversion, the shards'
checksums and writing the shards.

Integrity cost, over all shards of the store just written: ``checksum_seconds`` = computing the shards'
sha256 as the writer does (part of the caching time; it runs on the writer thread), ``verify_seconds`` =
what a reader pays to verify them in full (``ActivationStore(...).verify()``: headers and sizes, checksum
read back from the file, token-id range, finite activations; page cache warm), both also as a fraction of
the caching time (``checksum_fraction_of_cache_pass``, ``verify_fraction_of_cache_pass``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch
from safetensors.torch import load_file

from common import emit, log, machine, reset_peak_rss, rss_mb, timed

import llmri
from llmri import data
from llmri.store import checksum


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.environ["LLMRI_PROGRESS"] = "0"

    model = llmri.load_model(args.model)
    docs = llmri.load_corpus("sotu")
    spec = data.WindowSpec(context=args.context)
    n_windows = args.tokens // args.context
    batches = list(data.batched(data.token_windows(model, docs, spec), args.batch_size, limit=n_windows))
    tokens = sum(b.numel() for b in batches)

    def forward():
        with torch.no_grad():
            for b in batches:
                model.hf(input_ids=b, use_cache=False)

    def body():
        with torch.no_grad():
            for b in batches:
                model.hf.get_submodule(model.adapter.blocks.rsplit(".", 1)[0])(input_ids=b, use_cache=False)

    forward()  # warm-up
    t_forward = timed(forward, args.repeat)
    t_body = timed(body, args.repeat)
    log(f"forward {tokens / t_forward:.0f} tok/s, body {tokens / t_body:.0f} tok/s")
    L = model.n_layers
    configs = {
        f"resid_post.{L - 1}": [f"resid_post.{L - 1}"],
        f"resid_post.{L // 2}": [f"resid_post.{L // 2}"],
        "mlp_in+mlp_out (all layers)": [f"{k}.{l}" for l in range(L) for k in ("mlp_in", "mlp_out")],
    }
    for label, points in configs.items():
        cfg = llmri.StoreConfig(points=points, tokens=tokens, corpus="sotu", windows=spec,
                                batch_size=args.batch_size, dtype="float16", shard_tokens=4096)
        best, peak, base_rss = float("inf"), 0.0, rss_mb("VmRSS")
        t_sum = t_verify = float("inf")
        for _ in range(args.repeat):
            out = tempfile.mkdtemp(prefix="llmri-bench-")
            reset_peak_rss()
            t = time.perf_counter()
            llmri.create_store(model, out, cfg)
            best = min(best, time.perf_counter() - t)
            peak = max(peak, rss_mb("VmHWM"))
            shards = sorted(f.path for f in os.scandir(os.path.join(out, "shards")))
            size = sum(os.path.getsize(f) for f in shards)
            spent = 0.0
            for f in shards:
                tensors = load_file(f)
                t = time.perf_counter()
                checksum(tensors)
                spent += time.perf_counter() - t
            t_sum = min(t_sum, spent)
            t = time.perf_counter()
            llmri.ActivationStore(out).verify()
            t_verify = min(t_verify, time.perf_counter() - t)
            shutil.rmtree(out)
        emit({
            "benchmark": "cache_throughput",
            "points": label,
            "n_points": len(points),
            "tokens": tokens,
            "batch_size": args.batch_size,
            "context": args.context,
            "store_dtype": "float16",
            "cache_tok_per_s": round(tokens / best),
            "forward_tok_per_s": round(tokens / t_forward),
            "body_tok_per_s": round(tokens / t_body),
            "ratio_vs_forward": round(t_forward / best, 3),
            "ratio_vs_body": round(t_body / best, 3),
            "rss_before_mb": round(base_rss),
            "peak_rss_mb": round(peak),
            "peak_extra_mb": round(peak - base_rss),
            "store_mb": round(size / 2**20, 1),
            "n_shards": len(shards),
            "checksum_seconds": round(t_sum, 4),
            "verify_seconds": round(t_verify, 4),
            "checksum_fraction_of_cache_pass": round(t_sum / best, 4),
            "verify_fraction_of_cache_pass": round(t_verify / best, 4),
            "machine": machine(),
        })


if __name__ == "__main__":
    main()
