"""How the scan's slowest dictionary step degrades when another process competes for the cores.

    python benchmarks/under_load.py [--steps 14]

The step: the quick transcoders of the scan's circuits section — 30 TopK transcoders (2×, k = 16, d = 576)
trained together, batch 1,024, on random rows (no model: only the dictionary work). Each setting runs in its
own process (OpenMP reads its environment once, at start-up), idle and then beside one competing busy process,
for each setting: 2 fixed torch threads with libgomp's default waiting (spin, then sleep), with
``OMP_WAIT_POLICY=PASSIVE`` (sleep at once), with a short spin (``GOMP_SPINCOUNT=10000``), 1 fixed thread,
and llmri's default, threads adapted to the cores other processes leave (``llmri/threads.py``).
One JSON line per run: tokens/s and its ratio to the idle fixed 2-thread run measured in the same invocation. One
competing process should cost at most ~2×; more than that means threads spin-wait for a core they do not get.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import emit, machine

STEP = r"""
import json, sys, tempfile, time, torch
from llmri.dictionaries import DictConfig, TensorSource, Trainer, TrainConfig, build
torch.set_num_threads(int(sys.argv[1]))
steps = int(sys.argv[2])
g = torch.Generator().manual_seed(0)
acts = {f"{k}.{l}": torch.randn(8192, 576, generator=g) for l in range(30) for k in ("mlp_in", "mlp_out")}
cfgs = [DictConfig(kind="transcoder", arch="topk", in_points=[f"mlp_in.{l}"], out_points=[f"mlp_out.{l}"],
                   d_in=576, n_latents=1152, k=16) for l in range(30)]
trainer = Trainer([build(c, seed=i) for i, c in enumerate(cfgs)],
                  TrainConfig(tokens=1024 * steps, batch_size=1024, checkpoint_every=0, log_every=1000),
                  TensorSource(acts, 1024), tempfile.mkdtemp(prefix="llmri-under-load-"))
t0 = time.perf_counter()
trainer.fit()
print(json.dumps({"tok_per_s": trainer.step * 1024 / (time.perf_counter() - t0)}))
"""

BUSY = "import time\nend = time.time() + 900\nwhile time.time() < end:\n    pass\n"


FIXED = {"LLMRI_ADAPT_THREADS": "0"}
SETTINGS = [("fixed threads, default wait", 2, FIXED),
            ("fixed threads, OMP_WAIT_POLICY=PASSIVE", 2, {**FIXED, "OMP_WAIT_POLICY": "PASSIVE"}),
            ("fixed threads, GOMP_SPINCOUNT=10000", 2, {**FIXED, "GOMP_SPINCOUNT": "10000"}),
            ("fixed threads, default wait", 1, FIXED),
            ("llmri default: adaptive threads (llmri/threads.py)", 2, {})]


def run(threads: int, steps: int, extra: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "LLMRI_ADAPT_THREADS")}
    env.update(LLMRI_PROGRESS="0", **extra)
    out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(steps)], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["tok_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    rows = [("idle", name, threads, run(threads, args.steps, extra)) for name, threads, extra in SETTINGS]
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        rows += [("one competing process", name, threads, run(threads, args.steps, extra))
                 for name, threads, extra in SETTINGS]
    finally:
        busy.kill()
        busy.wait()
    base = rows[0][3]
    for load, name, threads, tok_s in rows:
        emit({"benchmark": "under_load", "step": "30 quick transcoders, batch 1024", "load": load,
              "torch_threads": threads, "setting": name, "tok_per_s": round(tok_s),
              "ratio_to_idle_fixed_2": round(tok_s / base, 3), "machine": machine()})


if __name__ == "__main__":
    main()
