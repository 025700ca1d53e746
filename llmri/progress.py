"""One progress bar style for every long loop (rich, on stderr).

Every ``advance`` also lets :func:`llmri.threads.adapt` fit the thread count to the cores other processes
leave free. Set ``LLMRI_PROGRESS=0`` to silence bars (they are also hidden when stderr is not a terminal, apart from a
final line), e.g. in notebooks that prefer their own display.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .threads import adapt

console = Console(stderr=True, highlight=False)


def enabled() -> bool:
    return os.environ.get("LLMRI_PROGRESS", "1") != "0"


def say(message: str) -> None:
    """A status line on stderr (kept out of stdout so command output stays machine-readable)."""
    if enabled():
        console.print(message, markup=False)


class Bar:
    """Handle of a running bar: ``advance(n)`` and ``note(text)`` (a short live status, e.g. loss).

    When stderr is not a terminal (logs, CI, nohup) the live bar is replaced by a plain line at most every
    ``LLMRI_LOG_SECONDS`` (default 30) seconds and one at the end."""

    def __init__(self, progress: Progress | None, task: int | None, description: str = "", total: float | None = None,
                 unit: str = "", plain: bool = False):
        self._progress, self._task = progress, task
        self._plain, self._description, self._total, self._unit = plain, description, total, unit
        self._done, self._note, self._last = 0.0, "", time.monotonic()
        self._every = float(os.environ.get("LLMRI_LOG_SECONDS", "30"))

    def advance(self, n: float = 1) -> None:
        self._done += n
        adapt()  # make room for other processes (threads.py)
        if self._progress is not None:
            self._progress.advance(self._task, n)
        elif self._plain and time.monotonic() - self._last >= self._every:
            self.line()

    def note(self, text: str) -> None:
        self._note = text
        if self._progress is not None:
            self._progress.update(self._task, note=text)

    def line(self) -> None:
        self._last = time.monotonic()
        of = f"/{self._total:,.0f}" if self._total else ""
        console.print(f"{self._description}: {self._done:,.0f}{of} {self._unit} {self._note}".rstrip(), markup=False,
                      highlight=False, soft_wrap=True)


@contextmanager
def bar(description: str, total: float | None, unit: str = "") -> Iterator[Bar]:
    """Context manager yielding a :class:`Bar`; ``total`` in ``unit`` (e.g. tokens)."""
    if not enabled():
        yield Bar(None, None)
        return
    if not sys.stderr.isatty():
        b = Bar(None, None, description, total, unit, plain=True)
        yield b
        b.line()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, note="")
        yield Bar(progress, task)
