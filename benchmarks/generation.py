"""Batched greedy chat generation: tokens/s at each batch size as a ratio to batch-1 decoding in the same run.

    python benchmarks/generation.py [--model smollm2-135m-instruct] [--batches 1,8,32] [--tokens 32]

The prompts are HarmBench-length harmless instructions (the project's harmless set, test split) through the
chat template; every prompt generates exactly ``--tokens`` new tokens (no early stop, so all batch sizes do
the same work). One JSON line per batch size (new tokens/s, ratio to batch 1), then one line projecting the
seconds of a full default ``llmri jailbreak eval`` (every default attack on every default set, 64 tokens) from
the fastest rate measured.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import emit, machine

import llmri
from llmri.generate import left_padded, render_ids
from llmri.safety.behaviours import load_set
from llmri.safety.evaluate import JailbreakConfig, behaviours


@torch.no_grad()
def rate(model, prompts: list[str], batch: int, tokens: int) -> float:
    rows = sorted((render_ids(model, p) for p in prompts), key=len, reverse=True)  # as llmri.generate batches them
    pad = model.tokenizer.pad_token_id or 0
    t0 = time.perf_counter()
    for s in range(0, len(rows), batch):
        ids, mask = left_padded(rows[s : s + batch], pad)
        model.hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                          pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    return len(rows) * tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    model = llmri.load_model(args.model)
    prompts = [b.prompt for b in load_set("harmless", "test")]
    batches = [int(x) for x in args.batches.split(",")]
    base = None
    best = 0.0
    for b in batches:
        n = max(b, 8) if b == 1 else 2 * b  # batch 1: 8 prompts; others: two full batches
        tok_s = rate(model, prompts[:n], b, args.tokens)
        base = base or tok_s
        best = max(best, tok_s)
        emit({"benchmark": "generation", "model": model.name, "batch": b, "new_tokens": args.tokens,
              "tok_per_s": round(tok_s, 1), "ratio_to_batch_1": round(tok_s / base, 2), "machine": machine()})
    cfg = JailbreakConfig()
    answers = len(behaviours(cfg)) * len(cfg.attacks)
    emit({"benchmark": "generation", "projection": "full default jailbreak eval", "answers": answers,
          "max_new_tokens": cfg.max_new_tokens, "seconds_at_best_rate": round(answers * cfg.max_new_tokens / best),
          "machine": machine()})


if __name__ == "__main__":
    main()
