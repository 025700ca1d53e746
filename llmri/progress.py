"""One progress bar style for every long loop (rich, on stderr).

Set ``LLMRI_PROGRESS=0`` to silence bars (they are also hidden when stderr is not a terminal, apart from a
final line), e.g. in notebooks that prefer their own display.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False)


def enabled() -> bool:
    return os.environ.get("LLMRI_PROGRESS", "1") != "0"


def say(message: str) -> None:
    """A status line on stderr (kept out of stdout so command output stays machine-readable)."""
    if enabled():
        console.print(message, markup=False)


class Bar:
    """Handle of a running bar: ``advance(n)`` and ``note(text)`` (a short live status, e.g. loss)."""

    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, note=text)


@contextmanager
def bar(description: str, total: float | None, unit: str = "") -> Iterator[Bar]:
    """Context manager yielding a :class:`Bar`; ``total`` in ``unit`` (e.g. tokens)."""
    if not enabled():
        yield Bar(None, None)
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
    with Progress(*columns, console=console, transient=False, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(description, total=total, note="")
        yield Bar(progress, task)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total) as b:
        for item in items:
            yield item
            b.advance()
