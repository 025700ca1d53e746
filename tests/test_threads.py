"""Threads make room for other processes: the rule, and the measurement beside a real busy process."""

import subprocess
import sys
import time

import pytest
import torch

from llmri import threads


@pytest.mark.parametrize("cores,others,ceiling,want", [
    (2, 0.0, 2, 2), (2, 0.3, 2, 2), (2, 0.6, 2, 1), (2, 1.0, 2, 1), (2, 3.0, 2, 1),  # never below 1
    (8, 2.2, 8, 6), (8, 0.0, 4, 4),  # never above the user's ceiling
])
def test_threads_are_the_cores_other_processes_leave(cores, others, ceiling, want):
    assert threads.threads_for(cores, others, ceiling) == want


def _others_busy(seconds: float = 0.5) -> float:
    """Cores other processes keep busy now (measured over ``seconds``)."""
    a = threads._ticks()
    time.sleep(seconds)
    b = threads._ticks()
    busy, total, own = (x - y for x, y in zip(b, a))
    return max(0.0, (busy - own) / (total / threads.cores()))


def test_a_busy_process_beside_us_takes_one_thread_and_leaving_gives_it_back(monkeypatch):
    monkeypatch.setenv("LLMRI_ADAPT_THREADS", "1")  # the suite runs with fixed threads
    if threads.cores() < 2 or threads._ticks() is None or _others_busy() > 0.3:
        pytest.skip("needs 2 cores that other processes leave idle (this test adds its own busy process)")
    monkeypatch.setattr(threads, "_state", threads._State())
    before = torch.get_num_threads()
    threads.set_threads(2)
    threads._state.ceiling = None
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        t = 0.0
        threads.adapt(now=t)  # first look: the baseline
        time.sleep(1.0)
        assert threads.adapt(now=t + threads.EVERY) == 1 and torch.get_num_threads() == 1
    finally:
        busy.kill()
        busy.wait()
    try:
        threads.adapt(now=t + 2 * threads.EVERY)  # a window that still saw the busy process end
        time.sleep(1.0)
        threads.adapt(now=t + 3 * threads.EVERY)
        assert torch.get_num_threads() == 2
    finally:
        threads.set_threads(before)


def test_switched_off_it_never_touches_the_threads(monkeypatch):
    monkeypatch.setenv("LLMRI_ADAPT_THREADS", "0")
    monkeypatch.setattr(threads, "_state", threads._State())
    assert threads.adapt(now=0.0) is None and threads.adapt(now=100.0) is None
    assert threads._state.last is None
