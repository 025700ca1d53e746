#!/usr/bin/env bash
# The GPU rows of benchmarks/sae_training.py in one run (GPU time is scarce: one prepared command).
# Needs, beside the repository: the stores (llmri cache ... --out .devdata/rp15-train / .devdata/rp15-eval) and
# the sparsify install (.peers/sparsify, see benchmarks/peers.py). Writes JSON lines to ${OUT:-.}/gpu_sae.jsonl.
set -euo pipefail
out=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
cd "$(dirname "$0")"
PYTHONUNBUFFERED=1 PYTHONPATH=.. python3 sae_training.py --device cuda \
    --train-store ../.devdata/rp15-train --eval-store ../.devdata/rp15-eval --sparsify ../.peers/sparsify \
    --latents "${LATENTS:-16384,65536}" --batch "${BATCH:-8192}" --tokens "${TOKENS:-2000000}" \
    --eval-tokens 8192 --variants "${VARIANTS:-llmri,sparsify,plain}" --dtypes float32,bfloat16 \
    2> >(tee "$out/gpu_sae.log" >&2) | tee "$out/gpu_sae.jsonl"
