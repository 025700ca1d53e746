"""TopK SAE training: speed against the encoder-GEMM ceiling, and held-out quality, vs a plain PyTorch loop.

    llmri cache --points resid_post.15 --tokens 4.3M --out stores/rp15-train
    llmri cache --points resid_post.15 --tokens 256k --split eval --out stores/rp15-eval
    python benchmarks/sae_training.py --train-store stores/rp15-train --eval-store stores/rp15-eval

SmolLM2 ``resid_post.15``, 8× = 4,608 latents, k = 32, batch 4,096 tokens, position 0 / special tokens /
norm outliers excluded (the store's flags). A TopK step needs one dense matmul, the encoder forward
(2·d_in·d_sae FLOPs per token): the ceiling is the GEMM rate measured here, in this run, divided by that.

Prints one JSON line per (variant, token budget): tokens/s of the whole loop and of the step alone, the
fraction of the ceiling the step reaches, and NMSE / L0 / dead % on held-out eval tokens (dead = never
active over ``--eval-tokens`` tokens). ``plain`` is the 40-line dense loop most people write (dense
encode/decode, autograd, ``torch.optim.Adam``, no aux-k), fed the same batches.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from common import emit, gemm_rate, log, machine

from llmri.dictionaries import DictConfig, StoreSource, TrainConfig, Trainer, build
from llmri.dictionaries.evaluate import reconstruction_metrics
from llmri.store import ActivationStore

D_IN, N_LAT, K, BATCH = 576, 4608, 32, 4096


def plain_loop(store: ActivationStore, tokens: int, point: str, lr: float, seed: int = 0):
    """The dense 40-line baseline: same init idea, same batches, no aux-k, constant ``lr``."""
    torch.manual_seed(seed)
    W_dec = F.normalize(torch.randn(N_LAT, D_IN), dim=1)
    W_enc = torch.nn.Parameter(W_dec.clone())
    W_dec = torch.nn.Parameter(W_dec)
    b_enc = torch.nn.Parameter(torch.zeros(N_LAT))
    b_dec = torch.nn.Parameter(torch.zeros(D_IN))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    src = iter(StoreSource(store, [point], BATCH, seed=seed))
    first = next(src)[point]
    scale = D_IN**0.5 / first.norm(dim=1).mean()
    with torch.no_grad():
        b_dec.copy_((first * scale).mean(0))
    steps, step_time = tokens // BATCH, 0.0
    t_all = time.perf_counter()
    for _ in range(steps):
        x = next(src)[point] * scale
        t = time.perf_counter()
        pre = F.linear(x - b_dec, W_enc, b_enc)
        vals, idx = pre.topk(K, dim=1)
        acts = torch.zeros_like(pre).scatter(1, idx, vals.relu())
        recon = acts @ W_dec + b_dec
        loss = (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        step_time += time.perf_counter() - t
    wall = time.perf_counter() - t_all
    # wrap as an llmri SAE (scale folded) for identical evaluation
    sae = build(DictConfig(kind="sae", arch="topk", in_points=[point], d_in=D_IN, n_latents=N_LAT, k=K))
    with torch.no_grad():
        for mine, theirs in ((sae.W_enc, W_enc), (sae.W_dec, W_dec), (sae.b_enc, b_enc), (sae.b_dec, b_dec)):
            mine.copy_(theirs)
        sae.in_scale.fill_(scale)
        sae.out_scale.fill_(scale)
    return sae.eval(), steps * BATCH / wall, steps * BATCH / step_time


def run_llmri(store: ActivationStore, tokens: int, point: str, dtype: str, seed: int = 0):
    cfg = DictConfig(kind="sae", arch="topk", in_points=[point], d_in=D_IN, n_latents=N_LAT, k=K)
    sae = build(cfg, seed=seed)
    tc = TrainConfig(tokens=tokens, batch_size=BATCH, seed=seed, dtype=dtype, checkpoint_every=0, log_every=25)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer([sae], tc, StoreSource(store, [point], BATCH, seed=seed), out)
        t = time.perf_counter()
        tr.fit()
        wall = time.perf_counter() - t
    steps = tr.total_steps
    return sae.eval(), steps * BATCH / wall, steps * BATCH / tr.dict_seconds, tr.history(0)


def profile_step(store: ActivationStore, point: str, steps: int = 4) -> dict:
    """Share of step time per op (torch.profiler, self CPU time) over a few steps of a warmed-up trainer."""
    from torch.profiler import ProfilerActivity, profile

    cfg = DictConfig(kind="sae", arch="topk", in_points=[point], d_in=D_IN, n_latents=N_LAT, k=K)
    sae = build(cfg)
    tc = TrainConfig(tokens=(steps + 6) * BATCH, batch_size=BATCH, checkpoint_every=0, log_every=1000, norm_batches=1)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer([sae], tc, StoreSource(store, [point], BATCH), out)
        tr._initialise([next(iter(StoreSource(store, [point], BATCH)))])
        batches = iter(StoreSource(store, [point], BATCH, seed=1))
        for _ in range(2):
            tr._train_step(next(batches))
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                tr._train_step(next(batches))
    rows = prof.key_averages(group_by_input_shape=True)
    total = sum(r.self_cpu_time_total for r in rows)

    def share(pred) -> float:
        return round(sum(r.self_cpu_time_total for r in rows if pred(r)) / total, 3)

    def encoder_gemm(r) -> bool:  # the dense addmm: bias [n_latents], input [batch, d_in]
        return r.key == "aten::addmm" and str(r.input_shapes).startswith(f"[[{N_LAT}], [{BATCH}, {D_IN}]")

    shares = {
        "encoder GEMM": share(encoder_gemm),
        "sparse weight gradients (CSR matmul)": share(lambda r: r.key in ("aten::addmm", "aten::mm") and not encoder_gemm(r)),
        "top-k selection (two-stage: amax, topk, gather)": share(lambda r: r.key in ("aten::topk", "aten::amax", "aten::gather")),
        "decode and per-entry grads (embedding_bag)": share(lambda r: "embedding_bag" in r.key),
        "Adam (fused)": share(lambda r: r.key == "aten::_fused_adam_"),
        "sorting for CSR": share(lambda r: r.key in ("aten::sort", "aten::argsort")),
    }
    shares["everything else"] = round(1 - sum(shares.values()), 3)
    return shares


def evaluate(sae, eval_store: ActivationStore, point: str, tokens: int) -> dict:
    batches = eval_store.batches(4096, points=[point], shuffle=False)
    m = reconstruction_metrics(sae, batches, tokens)
    return {"nmse": round(m["nmse"], 4), "l0": round(m["l0"], 2), "dead_pct": round(100 * m["dead_fraction"], 2),
            "eval_tokens": m["tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-store", required=True)
    ap.add_argument("--eval-store", required=True)
    ap.add_argument("--point", default="resid_post.15")
    ap.add_argument("--budgets", default="1000000,4000000", help="training tokens, comma-separated")
    ap.add_argument("--variants", default="llmri,plain,plain-samelr,llmri-bf16")
    ap.add_argument("--eval-tokens", type=int, default=131072)
    ap.add_argument("--bf16-steps", type=int, default=30, help="steps of the bf16 speed probe when bf16 GEMM is slow")
    ap.add_argument("--allow-incomplete", action="store_true", help="read stores still being written (smoke tests)")
    args = ap.parse_args()
    os.environ["LLMRI_PROGRESS"] = "0"
    train = ActivationStore(args.train_store, allow_incomplete=args.allow_incomplete)
    evals = ActivationStore(args.eval_store, allow_incomplete=args.allow_incomplete)
    rate32, rate16 = gemm_rate(torch.float32), gemm_rate(torch.bfloat16, repeat=2)
    ceiling = rate32 / (2 * D_IN * N_LAT)
    log(f"GEMM fp32 {rate32 / 1e9:.0f} GFLOP/s, bf16 {rate16 / 1e9:.0f} GFLOP/s; ceiling {ceiling:,.0f} tok/s")
    base = {"benchmark": "sae_training", "point": args.point, "n_latents": N_LAT, "k": K, "batch": BATCH,
            "gemm_gflops_fp32": round(rate32 / 1e9, 1), "gemm_gflops_bf16": round(rate16 / 1e9, 1),
            "ceiling_tok_per_s": round(ceiling), "excluded": "position 0, special tokens, norm > 20x median",
            "machine": machine()}
    emit({**base, "profile_self_time_share": profile_step(train, args.point)})
    for variant in args.variants.split(","):
        for budget in (int(b) for b in args.budgets.split(",")):
            if variant == "plain-samelr" and budget > min(int(b) for b in args.budgets.split(",")):
                continue  # one budget is enough to separate the learning rate from the rest
            if variant == "llmri-bf16" and rate16 < 1.2 * rate32:
                # no native bf16 GEMM on this CPU: measure the rate on a short run only
                budget = args.bf16_steps * BATCH
            log(f"{variant}: {budget:,} tokens")
            if variant.startswith("plain"):
                # "plain": sparsify's width rule, what such loops usually use; "plain-samelr": llmri's rate
                lr = (TrainConfig().learning_rate(DictConfig(arch="topk", n_latents=N_LAT)) if variant == "plain-samelr"
                      else 2e-4 / (N_LAT / 2**14) ** 0.5)
                sae, wall_rate, step_rate = plain_loop(train, budget, args.point, lr)
                hist = None
            else:
                sae, wall_rate, step_rate, hist = run_llmri(train, budget, args.point,
                                                            "bfloat16" if variant.endswith("bf16") else "float32")
            # the machine's speed drifts: re-measure the GEMM after each run and hold the step to the higher
            # of the two ceilings (the conservative fraction)
            rate_now = gemm_rate(torch.float32)
            ceil_run = max(ceiling, rate_now / (2 * D_IN * N_LAT))
            rec = {**base, "variant": variant, "tokens": budget, "tok_per_s": round(wall_rate),
                   "gemm_gflops_fp32_after": round(rate_now / 1e9, 1),
                   "step_tok_per_s": round(step_rate), "step_fraction_of_ceiling": round(step_rate / ceil_run, 3),
                   **evaluate(sae, evals, args.point, args.eval_tokens)}
            if hist:
                rec["train_dead_pct_at_end"] = round(hist[-1]["dead_pct"], 2)
            emit(rec)
            if variant == "llmri-bf16" and rate16 < 1.2 * rate32:
                break


if __name__ == "__main__":
    main()
