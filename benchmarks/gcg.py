"""GCG adversarial-suffix search (llmri.safety.gcg) on a few HarmBench behaviours: time per step, what a step
costs against one forward pass, and success against steps.

    python benchmarks/gcg.py [--model smollm2-135m-instruct | ORGANISM_FOLDER] [--limit 3] [--steps 50]
                             [--candidates 64] [--seconds 0] [--check-every 10]

First one step of the first behaviour is taken apart (best of 3 each): the one-hot gradient (one forward and
backward of one prompt), the candidate sampling and round-trip filter, the candidate losses (``--candidates``
rows, cached template prefix), and — the yardstick — one plain forward pass of the same ``--candidates`` full
prompts (no cache, logits of the target positions only); ``step_over_forward`` is the step's time over that
forward's. Then each behaviour is searched with the budget (checks every ``--check-every`` steps, keyword
judge), one JSON line each (no answers: they stay out of the output), then a summary: seconds per step
(checks included) and the fraction of behaviours succeeded by each step. The machine line adds the CPU's
vector/matrix flags (AVX2, AVX-512, AMX), which decide the forward's speed on a CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import emit, machine

import llmri
from llmri.safety import gcg as G
from llmri.safety.behaviours import load_set

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def anatomy(model, request: str, cfg: G.GcgConfig) -> dict:
    """Seconds of one step's parts and of one plain forward of the same candidate batch (module docstring)."""
    tok = model.tokenizer
    prompt, ids = G.build_prompt(tok, request, " ".join([cfg.init] * cfg.suffix_tokens), cfg.target)
    ids = torch.tensor(ids)
    scorer, allowed = G.Scorer(model, prompt, cfg.prefix_cache), G.allowed_tokens(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    _, grad = scorer.gradient(ids)
    rows = G.sample(ids, grad, allowed, cfg.top_k, cfg.candidates, gen)
    full = torch.cat([torch.tensor(prompt.head).expand(len(rows), -1), rows,
                      torch.tensor(prompt.tail + prompt.target).expand(len(rows), -1)], 1)

    @torch.no_grad()
    def forward():
        for s in range(0, len(full), cfg.batch_size):
            model.hf(input_ids=full[s : s + cfg.batch_size], logits_to_keep=len(prompt.target) + 1)

    parts = {"gradient": best(lambda: scorer.gradient(ids)),
             "sample_and_filter": best(lambda: G.round_trips(tok, prompt, G.sample(ids, grad, allowed, cfg.top_k,
                                                                                   cfg.candidates, gen))),
             "candidate_losses": best(lambda: scorer.losses(rows, cfg.batch_size))}
    step, fwd = sum(parts.values()), best(forward)
    return {"prompt_tokens": full.shape[1], "suffix_tokens": len(ids), "target_tokens": len(prompt.target),
            "candidates": len(rows), "seconds": {k: round(v, 4) for k, v in parts.items()},
            "step_seconds": round(step, 4), "forward_seconds": round(fwd, 4), "step_over_forward": round(step / fwd, 2),
            "prefix_cache": scorer.cache is not None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--check-every", type=int, default=10)
    args = ap.parse_args()
    model = llmri.load_model(args.model)
    cfg = G.GcgConfig(steps=args.steps, candidates=args.candidates, seconds=args.seconds or None,
                      check_every=args.check_every)
    items = sorted(load_set("harmbench"), key=lambda b: b.id)[: args.limit]
    emit({"benchmark": "gcg", "model": model.name, "machine": {**machine(), "cpu_flags": cpu_flags()},
          "step_anatomy": anatomy(model, items[0].prompt, cfg)})
    allowed, done = G.allowed_tokens(model), []
    for b in items:
        r = G.search(model, b.prompt, cfg, allowed=allowed, label=b.id)
        first = G.first_success(r.history)
        done.append({"id": b.id, "success": r.success, "first_success_step": first and first["step"],
                     "first_success_seconds": first and round(first["seconds"], 2), "steps": r.steps,
                     "seconds": round(r.seconds, 2),
                     "seconds_per_step": round(r.seconds / r.steps, 3) if r.steps else None,
                     "initial_loss": round(r.history[0]["loss"], 4), "best_loss": round(r.loss, 4)})
        emit({"benchmark": "gcg", "behaviour": done[-1]})
    marks = sorted({0, *range(args.check_every or args.steps, args.steps + 1, args.check_every or args.steps)})
    steps = sum(d["steps"] for d in done)
    emit({"benchmark": "gcg", "model": model.name, "n": len(done), "steps_budget": args.steps,
          "candidates": args.candidates, "judge": "keyword",
          "seconds_per_step": round(sum(d["seconds"] for d in done) / steps, 3) if steps else None,
          "success_by_step": {s: sum(d["success"] and d["first_success_step"] <= s for d in done) / len(done)
                              for s in marks}})


if __name__ == "__main__":
    main()
