"""All-layer SAE training from the live model: where the time goes, and what the SAEs recover.

    python benchmarks/all_layers.py --tokens 1M --eval-tokens 32k --ce-tokens 8k --out runs/all30

Trains one TopK SAE per layer on resid_post (8×, k = 32, batch 4,096) from ONE model forward per batch
(capturing every layer), then evaluates them all on held-out tokens with shared passes. Prints one JSON line
for the run (time in the LM vs in the dictionaries, tokens/s) and one per layer (NMSE, L0, dead %, CE loss
recovered, KL). The run's folder keeps the SAEs (SAELens format) and run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import emit, log, machine

import llmri
from llmri.cli import parse_count
from llmri.dictionaries import EvalConfig, TrainConfig, plan, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="1M")
    ap.add_argument("--eval-tokens", default="32k")
    ap.add_argument("--ce-tokens", default="8k")
    ap.add_argument("--expansion", type=float, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--out", default="runs/all-layers")
    args = ap.parse_args()
    os.environ.setdefault("LLMRI_PROGRESS", "0")
    model = llmri.load_model()
    cfgs = plan(model, kind="sae", arch="topk", points=["resid_post"], layers=args.layers, expansion=args.expansion, k=args.k)
    tc = TrainConfig(tokens=parse_count(args.tokens), batch_size=4096, checkpoint_every=50)
    ev = EvalConfig(tokens=parse_count(args.eval_tokens), ce_tokens=parse_count(args.ce_tokens))
    t = time.perf_counter()
    train(model, cfgs, tc, args.out, eval_cfg=ev, resume=True)
    wall = time.perf_counter() - t
    run = json.loads((Path(args.out) / "run.json").read_text())
    in_dicts, in_lm = run["dictionary_seconds"], run["lm_seconds"]
    log(f"done in {wall:.0f} s")
    emit({"benchmark": "all_layers", "n_saes": len(cfgs), "n_latents": cfgs[0].n_latents, "k": args.k,
          "tokens": tc.tokens, "train_seconds": round(run["train_seconds"], 1), "total_seconds": round(wall, 1),
          "dictionary_seconds": round(in_dicts, 1), "lm_seconds": round(in_lm, 1),
          "dictionary_share_of_train_time": round(in_dicts / run["train_seconds"], 3),
          "dictionary_share_of_lm_plus_dict": round(in_dicts / (in_dicts + in_lm), 3),
          "tokens_per_s": round(tc.tokens / run["train_seconds"]), "eval_tokens": ev.tokens, "ce_tokens": ev.ce_tokens,
          "machine": machine()})
    for d in run["dictionaries"]:
        emit({"benchmark": "all_layers", "sae": d["name"], **{k: (round(v, 4) if isinstance(v, float) else v)
                                                             for k, v in d.items() if k not in ("name", "folder")}})


if __name__ == "__main__":
    main()
