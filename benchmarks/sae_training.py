"""TopK SAE training: speed against the encoder-GEMM ceiling, the step's time split, and held-out quality,
for llmri and its peers on the same batches, on CPU or CUDA.

    llmri cache --points resid_post.15 --tokens 4.3M --out stores/rp15-train
    llmri cache --points resid_post.15 --tokens 256k --split eval --out stores/rp15-eval
    pip install --no-deps --target .peers/sparsify eai-sparsify==1.3.3 schedulefree==1.4.1 \\
        simple-parsing==0.1.9 docstring-parser natsort==8.4.0 einops                       # the sparsify peer (see peers.py)
    python benchmarks/sae_training.py --train-store stores/rp15-train --eval-store stores/rp15-eval \\
        --sparsify .peers/sparsify
    python benchmarks/sae_training.py ... --device cuda --latents 16384,65536 --batch 8192   # on a GPU

Default: SmolLM2 ``resid_post.15``, 8× = 4,608 latents, k = 32, batch 4,096 tokens, position 0 / special
tokens / norm outliers excluded (the store's flags). A TopK step needs one dense matmul, the encoder forward
(2·d_in·n_latents FLOPs per token): the ceiling is the GEMM rate measured here, in this run, at that shape,
divided by that. Every variant is fed the same batches (same seed).

Variants: ``llmri`` (the Trainer, fp32 and ``--dtypes bfloat16``), ``sparsify`` (its own step and defaults,
peers.py; on CUDA its default bf16 autocast), ``plain`` (the dense 40-line loop most people write: dense
encode/decode, autograd, Adam at sparsify's width rule, no aux-k).

Prints one JSON line per run: tokens/s of the training loop (wall clock, device synchronised, data
included) and of the step alone (``step_tok_per_s``: on CPU the batch fetch from the store is not counted;
on CUDA the data sits in device memory and the two are the same), the step's fraction of the ceiling, peak
memory, NMSE / L0 / dead % on held-out eval tokens (dead = never active over ``--eval-tokens`` tokens), and
the step's time split from torch.profiler over ``--profile-steps`` steps (self time per op on the device
that runs them, grouped: encoder GEMM, selection, decode, sparse products of the backward, optimiser with
the decoder constraint, everything else).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from common import emit, gemm_rate, log, machine, rss_mb

from llmri.dictionaries import DictConfig, StoreSource, TrainConfig, Trainer, build
from llmri.dictionaries.evaluate import reconstruction_metrics
from llmri.dictionaries.sources import TensorSource
from llmri.store import ActivationStore


# ---------------------------------------------------------------- machine


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cpu_flags() -> list[str]:
    """The CPU's matrix/vector extensions that decide the bf16 GEMM rate (from /proc/cpuinfo)."""
    want = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in want if f in have]
    except OSError:
        pass
    return []


# ---------------------------------------------------------------- data


def make_source(args, store: ActivationStore, device: str, seed: int = 0):
    """The batches every variant sees: streamed from the store on CPU, from a copy in device memory on CUDA
    (so that the host-to-device copy is not timed). Same seed → same batches."""
    if device == "cpu":
        return StoreSource(store, [args.point], args.batch, seed=seed)
    return TensorSource({args.point: args.resident}, args.batch, seed=seed)


def resident_rows(store: ActivationStore, point: str, device: str) -> Tensor:
    """All kept rows of the store at ``point`` (fp16, in device memory)."""
    parts = [b[point].to(device, torch.float16) for b in store.batches(65536, points=[point], shuffle=False)]
    return torch.cat(parts)


def batches(source, device: str) -> Iterator[Tensor]:
    for b in source:
        yield next(iter(b.values())).to(device, non_blocking=True).float()


# ---------------------------------------------------------------- the variants


class Run:
    """A variant ready to train: ``step(x)`` one batch, ``sae()`` an llmri SAE for evaluation."""

    step: Callable[[Tensor], None]
    sae: Callable[[], torch.nn.Module]


def llmri_run(args, n_latents: int, dtype: str, total_steps: int) -> Run:
    cfg = DictConfig(kind="sae", arch="topk", in_points=[args.point], d_in=args.d_in, n_latents=n_latents, k=args.k)
    sae = build(cfg, device=args.device, seed=0)
    tc = TrainConfig(tokens=total_steps * args.batch, batch_size=args.batch, seed=0, dtype=dtype, checkpoint_every=0,
                     log_every=10**9, norm_batches=1)
    tr = Trainer([sae], tc, None, tempfile.mkdtemp())
    r = Run()
    r.started = False

    def step(x: Tensor) -> None:
        if not r.started:
            tr._initialise([{args.point: x}])
            r.started = True
        tr._train_step({args.point: x})
        tr.step += 1

    r.step, r.sae = step, lambda: sae
    return r


def sparsify_run(args, n_latents: int, sp) -> Run:
    from peers import SparsifyRun

    peer = SparsifyRun(sp, args.d_in, n_latents, args.k, args.device)
    r = Run()
    r.step = peer.step
    r.sae = lambda: as_llmri(args, n_latents, peer.weights(), scale=1.0)
    return r


def plain_run(args, n_latents: int) -> Run:
    """The dense baseline: same init idea, autograd through dense encode/decode, Adam at sparsify's width rule."""
    torch.manual_seed(0)
    d, dev = args.d_in, args.device
    W_dec = torch.nn.Parameter(F.normalize(torch.randn(n_latents, d, device=dev), dim=1))
    W_enc = torch.nn.Parameter(W_dec.detach().clone())
    b_enc = torch.nn.Parameter(torch.zeros(n_latents, device=dev))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=dev))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=2e-4 / (n_latents / 2**14) ** 0.5)
    state = {"scale": None}

    def step(x: Tensor) -> None:
        if state["scale"] is None:
            state["scale"] = d**0.5 / x.norm(dim=1).mean()
            with torch.no_grad():
                b_dec.copy_((x * state["scale"]).mean(0))
        x = x * state["scale"]
        pre = F.linear(x - b_dec, W_enc, b_enc)
        vals, idx = pre.topk(args.k, dim=1)
        acts = torch.zeros_like(pre).scatter(1, idx, vals.relu())
        loss = (acts @ W_dec + b_dec - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        with torch.profiler.record_function("optimizer"):
            opt.step()
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    r = Run()
    r.step = step
    r.sae = lambda: as_llmri(args, n_latents, {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
                             scale=float(state["scale"]))
    return r


def as_llmri(args, n_latents: int, w: dict[str, Tensor], scale: float) -> torch.nn.Module:
    """An llmri TopK SAE holding a peer's weights (its input scale ``scale``), for identical evaluation."""
    sae = build(DictConfig(kind="sae", arch="topk", in_points=[args.point], d_in=args.d_in, n_latents=n_latents,
                           k=args.k), device=args.device)
    with torch.no_grad():
        for name, v in w.items():
            getattr(sae, name).copy_(v)
        sae.in_scale.fill_(scale)
        sae.out_scale.fill_(scale)
    return sae.eval()


# ---------------------------------------------------------------- time split


def _ancestors(e):
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


def category(e, batch: int, d_in: int, n: int) -> str:
    """The part of a TopK step that profiler op event ``e`` belongs to (named ranges first, then op names)."""
    names = [e.name] + [a.name for a in _ancestors(e)]
    if "optimizer" in names:
        return "optimiser and decoder constraint"
    backward = any(a.startswith("autograd::engine::evaluate_function") for a in names)
    if "sparse products" in names or (backward and any(w in a for a in names for w in ("Encode", "Decode", "Embedding"))):
        return "sparse products (backward)"  # llmri's Sᵀ·X, and the backward of the coders' own autograd functions
    key = e.name
    shapes = [list(s) for s in (e.input_shapes or [])]
    if key in ("aten::addmm", "aten::mm", "aten::bmm") and any(n in s for s in shapes):  # a dense GEMM
        if backward:
            return "dense GEMM (backward)"
        return "encoder GEMM" if [batch, d_in] in shapes else "decode"
    if key in ("aten::topk", "aten::amax", "aten::max", "aten::gather", "aten::index_select", "aten::where",
               "aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_"):
        return "selection (with the ReLU)"
    if "embedding" in key.lower() or key in ("aten::index_add_", "aten::index_add", "aten::scatter", "aten::scatter_add_"):
        return "sparse products (backward)" if backward else "decode"
    return "everything else"


def time_split(run: Run, xs: Iterator[Tensor], args, n_latents: int, steps: int):
    """Share of the step's self time per category (device time on CUDA) over ``steps`` profiled steps, and
    the largest ops of "everything else" with their shares."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        run.step(next(xs))
    sync(args.device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(steps):
            run.step(next(xs))
        sync(args.device)
    cuda = args.device == "cuda"
    totals: dict[str, float] = {}
    other: dict[str, float] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        if t > 0:
            c = category(e, args.batch, args.d_in, n_latents)
            totals[c] = totals.get(c, 0.0) + t
            if c == "everything else":
                other[e.name] = other.get(e.name, 0.0) + t
    whole = sum(totals.values()) or 1.0
    split = {c: round(v / whole, 3) for c, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    top = sorted(other.items(), key=lambda kv: -kv[1])[:5]
    return split, {name: round(v / whole, 3) for name, v in top}


# ---------------------------------------------------------------- one measured run


def evaluate(sae, eval_store: ActivationStore, point: str, tokens: int, device: str) -> dict:
    batches = ({p: v.to(device) for p, v in b.items()} for b in eval_store.batches(4096, points=[point], shuffle=False))
    m = reconstruction_metrics(sae, batches, tokens)
    return {"nmse": round(m["nmse"], 4), "l0": round(m["l0"], 2), "dead_pct": round(100 * m["dead_fraction"], 2),
            "eval_tokens": m["tokens"]}


def measure(args, variant: str, dtype: str, n_latents: int, steps: int, sp) -> dict:
    def fresh() -> Run:
        if variant == "llmri":
            return llmri_run(args, n_latents, dtype, steps)
        if variant == "sparsify":
            return sparsify_run(args, n_latents, sp)
        return plain_run(args, n_latents)

    split, other = time_split(fresh(), batches(make_source(args, args.train, args.device, seed=1), args.device), args,
                       n_latents, args.profile_steps)
    run = fresh()
    xs = batches(make_source(args, args.train, args.device), args.device)
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run.step(next(xs))  # first step: initialisation, allocations (not timed)
    sync(args.device)
    t = time.perf_counter()
    step_seconds = 0.0
    for _ in range(steps - 1):
        x = next(xs)
        t_step = time.perf_counter()
        run.step(x)
        step_seconds += time.perf_counter() - t_step  # on CUDA the data is resident: steps ≈ the loop
    sync(args.device)
    seconds = time.perf_counter() - t
    memory = (torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else rss_mb("VmHWM"))
    step_rate = (steps - 1) * args.batch / (step_seconds if args.device == "cpu" else seconds)
    return {"tok_per_s": round((steps - 1) * args.batch / seconds), "step_tok_per_s": round(step_rate),
            "seconds": round(seconds, 2),
            "peak_memory_mb": round(memory), "time_split": split,
            "everything_else_top": other,
            **evaluate(run.sae(), args.evals, args.point, args.eval_tokens, args.device)}


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-store", required=True)
    ap.add_argument("--eval-store", required=True)
    ap.add_argument("--point", default="resid_post.15")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--latents", default="4608", help="dictionary widths, comma-separated")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--tokens", default="1000000", help="training tokens per run, comma-separated budgets")
    ap.add_argument("--variants", default="llmri,sparsify,plain")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="llmri's compute dtypes")
    ap.add_argument("--sparsify", default=".peers/sparsify", help="folder of the sparsify install (peers.py)")
    ap.add_argument("--eval-tokens", type=int, default=131072)
    ap.add_argument("--profile-steps", type=int, default=4)
    ap.add_argument("--slow-bf16-steps", type=int, default=30,
                    help="steps of the bf16 run when this CPU's bf16 GEMM is slower than fp32 (speed probe only)")
    ap.add_argument("--allow-incomplete", action="store_true", help="read stores still being written (smoke tests)")
    args = ap.parse_args()
    os.environ["LLMRI_PROGRESS"] = "0"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    args.train = ActivationStore(args.train_store, allow_incomplete=args.allow_incomplete)
    args.evals = ActivationStore(args.eval_store, allow_incomplete=args.allow_incomplete)
    args.d_in = args.train.d[args.point]
    if args.device == "cuda":
        args.resident = resident_rows(args.train, args.point, args.device)
    variants = args.variants.split(",")
    sp = None
    if "sparsify" in variants:
        from peers import import_sparsify

        sp = import_sparsify(args.sparsify)
    base = {"benchmark": "sae_training", "point": args.point, "device": args.device, "k": args.k, "batch": args.batch,
            "excluded": "position 0, special tokens, norm > 20x median", "machine": machine(), "cpu_flags": cpu_flags(),
            "sparsify": sp.version if sp else None}
    for n in (int(v) for v in args.latents.split(",")):
        r32 = gemm_rate(torch.float32, rows=args.batch, d_in=args.d_in, n=n, device=args.device)
        r16 = gemm_rate(torch.bfloat16, rows=args.batch, d_in=args.d_in, n=n, device=args.device)
        log(f"{n} latents: GEMM fp32 {r32 / 1e9:,.0f} GFLOP/s, bf16 {r16 / 1e9:,.0f} GFLOP/s")
        runs = [(v, dt) for v in variants for dt in (args.dtypes.split(",") if v == "llmri" else ["default"])]
        for variant, dtype in runs:
            for budget in (int(float(b)) for b in args.tokens.split(",")):
                steps = max(args.profile_steps + 3, budget // args.batch)
                slow = dtype == "bfloat16" and args.device == "cpu" and r16 < r32
                if slow:  # no bf16 matrix units: a short speed probe only
                    steps = min(steps, args.slow_bf16_steps)
                log(f"{variant} {dtype}, {n} latents: {steps} steps of {args.batch}")
                try:
                    rec = measure(args, variant, dtype, n, steps, sp)
                except Exception as e:  # one failing variant must not lose the others' lines (GPU time is scarce)
                    emit({**base, "variant": variant, "dtype": dtype, "n_latents": n, "error": repr(e)[:500]})
                    continue
                bf16_gemm = dtype == "bfloat16" or (variant == "sparsify" and args.device == "cuda")
                rate = r16 if bf16_gemm else r32
                rate_after = gemm_rate(torch.bfloat16 if bf16_gemm else torch.float32, rows=args.batch,
                                       d_in=args.d_in, n=n, device=args.device)
                ceiling = max(rate, rate_after) / (2 * args.d_in * n)  # the machine drifts: the higher ceiling
                emit({**base, "variant": variant, "dtype": dtype, "n_latents": n, "tokens": steps * args.batch,
                      "gemm_gflops_fp32": round(r32 / 1e9, 1), "gemm_gflops_bf16": round(r16 / 1e9, 1),
                      "ceiling_dtype": "bfloat16" if bf16_gemm else "float32",
                      "ceiling_tok_per_s": round(ceiling), **rec,
                      "fraction_of_ceiling": round(rec["step_tok_per_s"] / ceiling, 3),
                      "note": "speed probe: this CPU has no bf16 matrix units" if slow else None})
                if slow:
                    break


if __name__ == "__main__":
    main()
