"""The default scan idle and beside one competing busy process: each stage's seconds and its ratio to the pass.

    python benchmarks/scan_under_load.py [--load idle,busy] [--env NAME=VALUE ...] [-- SCAN OPTIONS]

Each run is a fresh ``llmri scan`` process (OpenMP reads its environment at start-up) writing to a temporary
folder; the per-stage seconds come from its ``scan.json`` (``pass`` is the one model pass over the corpus —
the statistics pass). "busy" starts one pure-Python busy loop first (one core's worth of competition on a
2-core machine). One JSON line per run: wall seconds, each stage's seconds and ratio to the pass, and, for a
busy run after an idle one, each stage's slowdown (busy / idle). One competing process should cost ~2× at
most; a stage far above that collapses under load (threads spinning for a core they do not get).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, machine

BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def scan(extra_env: dict, scan_args: list[str], keep: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="llmri-scan-bench-") as tmp:
        out = keep or Path(tmp) / "report"
        env = {**os.environ, "LLMRI_PROGRESS": "0", **extra_env}
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f"{tmp}/rss", sys.executable, "-m", "llmri.cli", "scan",
                        "--out", str(out), *scan_args], env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        summary = json.loads((out / "scan.json").read_text())
        rss = int(Path(f"{tmp}/rss").read_text().split()[-1]) / 2**20  # KB → GB
    return {"wall_seconds": round(wall, 1), "scan_seconds": summary["wall_seconds"], "peak_rss_gb": round(rss, 2),
            "stages": summary["timings"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", default="idle,busy", help="comma-separated runs: idle, busy")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the scan process (repeatable)")
    ap.add_argument("--keep", type=Path, help="write the idle run's report here (kept, for its numbers)")
    ap.add_argument("scan_args", nargs="*", help="options passed to llmri scan (after --)")
    args = ap.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    idle = None
    for load in args.load.split(","):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
        try:
            got = scan(extra_env, args.scan_args, args.keep if load == "idle" else None)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        stages = got["stages"]
        record = {"benchmark": "scan_under_load", "load": load, "env": extra_env, "scan_args": args.scan_args, **got,
                  "ratio_to_pass": {k: round(v / stages["pass"], 2) for k, v in stages.items()}}
        if load == "idle":
            idle = stages
        elif idle is not None:
            record["slowdown_vs_idle"] = {k: round(v / idle[k], 2) for k, v in stages.items() if idle.get(k)}
        record["machine"] = machine()
        emit(record)


if __name__ == "__main__":
    main()
