"""Shared helpers for benchmarks: machine description, peak-memory probe, JSON lines."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import torch


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory in MiB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` runs (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gemm_rate(dtype=torch.float32, repeat: int = 7, rows: int = 4096, d_in: int = 576, n: int = 4608,
              device: str = "cpu") -> float:
    """FLOP/s of an encoder-shaped GEMM [rows × d_in] @ [d_in × n] into a reused output (best of ``repeat``;
    on CUDA each timing covers 5 products between synchronisations)."""
    a = torch.randn(rows, d_in, dtype=dtype, device=device)
    w = torch.randn(n, d_in, dtype=dtype, device=device)
    out = torch.empty(rows, n, dtype=dtype, device=device)
    inner = 5 if device == "cuda" else 1
    torch.mm(a, w.t(), out=out)
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, w.t(), out=out)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * rows * d_in * n / best


class AnonPeak:
    """Peak anonymous resident memory (RssAnon: heap and tensors, not memory-mapped files) over a block,
    sampled every ``interval`` seconds in a thread: ``with AnonPeak() as p: ...; p.peak_mb``."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak_mb, self.start_mb = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb("RssAnon"))
            time.sleep(self.interval)

    def __enter__(self):
        self.start_mb = self.peak_mb = rss_mb("RssAnon")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb("RssAnon"))
