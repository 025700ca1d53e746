"""Compute threads that make room for other processes.

With one busy process beside a 2-thread run on 2 cores, OpenMP threads spin-wait at every parallel region for
a core they do not get, and the run falls to ~0.3× of its idle speed; one thread fewer keeps ~0.55×, about
what sharing the machine costs (``benchmarks/under_load.py``). ``OMP_WAIT_POLICY=PASSIVE`` avoids the spin
too but costs ~15% when the machine is idle, so llmri instead adapts the thread count while it runs.

:func:`adapt` — called by every progress bar's ``advance`` (the heartbeat of llmri's long loops, always on
the main thread, where OpenMP's thread count is set) at most every :data:`EVERY` seconds — measures how
many cores other processes used since its last measurement (system-wide busy time in ``/proc/stat`` minus
this process's own in ``/proc/self/stat``) and sets the threads of torch and of the OpenMP/BLAS libraries
numpy and scikit-learn load (through threadpoolctl) to the cores left over: never fewer than 1, never more
than torch had when llmri first looked (the user's ``torch.set_num_threads`` or ``OMP_NUM_THREADS`` is the
ceiling). ``LLMRI_ADAPT_THREADS=0`` turns it off (a different thread count can change float results in the
last bits: set it for bit-reproducible runs); where ``/proc`` is missing it does nothing.
"""

from __future__ import annotations

import os
import time

import torch

EVERY = 2.0
"""Seconds between measurements (a shorter window mistakes scheduling noise for load)."""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(n_cores: int, others: float, ceiling: int) -> int:
    """Threads to use when other processes keep ``others`` cores busy: the cores left (rounded half up),
    between 1 and ``ceiling``."""
    return max(1, min(ceiling, int(n_cores - others + 0.5)))


def _ticks() -> tuple[int, int, int] | None:
    """(system busy, system total, this process's busy) in clock ticks, or None without /proc."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)  # idle + iowait
    return sum(cpu[:8]) - idle, sum(cpu[:8]), int(own[11]) + int(own[12])  # utime + stime


class _State:
    ceiling: int | None = None
    last: tuple[float, tuple[int, int, int]] | None = None
    threads: int | None = None


_state = _State()


def adapt(now: float | None = None) -> int | None:
    """Re-measure (at most every :data:`EVERY` s) and set the thread count; returns it when it changed."""
    if os.environ.get("LLMRI_ADAPT_THREADS", "1") == "0":
        return None
    now = time.monotonic() if now is None else now
    if _state.last is not None and now - _state.last[0] < EVERY:
        return None
    ticks = _ticks()
    if ticks is None:
        return None
    if _state.ceiling is None:
        _state.ceiling = _state.threads = torch.get_num_threads()
    last, _state.last = _state.last, (now, ticks)
    if last is None:
        return None
    busy, total, own = (a - b for a, b in zip(ticks, last[1]))
    n = cores()
    if total <= 0:
        return None
    others = max(0.0, (busy - own) / (total / n))
    want = threads_for(n, others, _state.ceiling)
    if want == _state.threads:
        if want < _state.ceiling:
            set_threads(want)  # again: a library loaded since (scikit-learn's OpenMP) starts with every core
        return None
    set_threads(want)
    return want


def set_threads(n: int) -> None:
    """Torch's intra-op threads and those of every OpenMP/BLAS library loaded (numpy, scikit-learn)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    _state.threads = n
