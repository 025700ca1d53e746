"""Organism training steps: examples packed into one row (sharing their common prefix, or not) vs right-padded
rows, on the real refusal data.

    python benchmarks/organism_training.py [--model smollm2-135m-instruct] [--steps 12] [--rounds 2] [--kl-windows 2]

Builds the default refusal organism's examples (the base model's answers come from llmri's cache when an
organism was built before, else they are distilled first), wraps the model in the same LoRA adapters, and
times full optimizer steps — answer loss + decision loss + the KL term, backward, AdamW — on the same batches
each way (``shared``: the trainer's packed row, the examples' common prefix once; ``packed``: one row, every
example whole; ``padded``: one example per right-padded row; and the KL term alone), alternating rounds so that
load on the machine hits each alike. Prints one JSON object: seconds per step each way, the ratios to
``shared``, the share of a shared step the KL term takes (its windows alone, forward and backward), the tokens
per step each way, the share of padding in right-padded rows over a whole epoch, and the largest difference of
the three ways' losses (equal up to rounding).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from common import emit, machine

import llmri
from llmri.safety import organism as O


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=12, help="batches timed per round and way")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kl-windows", type=int, default=O.OrganismConfig().kl_windows, help="corpus windows per step")
    args = ap.parse_args()
    model = llmri.load_model(args.model)
    cfg = O.OrganismConfig()
    examples = O.training_examples(cfg, O._distill(model, cfg, Path(tempfile.mkdtemp())))
    rows = [O.encode(model, e, cfg.max_length) for e in examples]
    order = list(range(len(rows)))
    random.Random(f"order/{cfg.seed}/0").shuffle(order)
    batches = [order[k * cfg.batch_size : (k + 1) * cfg.batch_size] for k in range(args.steps)]
    net, params = O._trainable(model, cfg)
    opt = torch.optim.AdamW(list(params.values()), lr=0.0)  # lr 0: every step sees the same weights
    weights = O.decision_weights(examples)
    windows = O._kl_windows(model, cfg, args.steps * args.kl_windows)
    reference = O._reference(model, net, cfg)
    pad = O.pad_id(model)

    def step(idx: list[int], k: int, way: str) -> float:
        w = args.kl_windows
        kl = O.kl_to_base(net, reference, windows[[(w * k + i) % len(windows) for i in range(w)]])
        if way == "kl_only":  # the KL term's share of a step
            loss = cfg.kl_weight * kl
        else:
            batch = O.pack([rows[i] for i in idx], pad, packed=way != "padded", shared=way == "shared")
            tokens[way] += batch.ids.numel()
            loss, first = O.answer_losses(net, batch)
            loss = loss + cfg.decision_weight * O.decision_loss(first, weights[idx]) + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    net.eval()
    assert O.packs(net), "this model does not pack; nothing to compare"
    net.train()
    ways = ("shared", "packed", "padded", "kl_only")
    seconds, losses, tokens = ({w: 0.0 for w in ways}, {w: [] for w in ways}, {w: 0 for w in ways})
    step(batches[0], 0, "shared")  # warm-up
    tokens["shared"] = 0
    for r in range(args.rounds):
        for way in (ways if r % 2 == 0 else ways[::-1]):
            t0 = time.perf_counter()
            got = [step(idx, k, way) for k, idx in enumerate(batches)]
            seconds[way] += time.perf_counter() - t0
            losses[way] = got
    n = args.steps * args.rounds
    epoch = [order[k : k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
    epoch_padded = sum(max(len(rows[i][0]) for i in idx) * len(idx) for idx in epoch)
    emit({"machine": machine(), "model": args.model, "examples": len(rows), "steps_timed": n,
          "kl_windows": args.kl_windows, "s_per_step": {w: round(s / n, 3) for w, s in seconds.items()},
          "over_shared": {w: round(seconds[w] / seconds["shared"], 3) for w in ("packed", "padded")},
          "kl_share_of_shared_step": round(seconds["kl_only"] / seconds["shared"], 3),
          "tokens_per_step": {w: tokens[w] / n for w in ways[:3]},
          "padding_share_of_padded_rows_over_an_epoch": round(1 - sum(len(r) for r, _ in rows) / epoch_padded, 3),
          "max_loss_difference": max(abs(a - b) for w in ways[1:3] for a, b in zip(losses["shared"], losses[w]))})


if __name__ == "__main__":
    main()
