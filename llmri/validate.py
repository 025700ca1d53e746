"""One validation layer for every config dataclass: each numeric field states its range where it is declared.

    @dataclass
    class TrainConfig:
        batch_size: int = bounded(4096, 1)
        \"\"\"Tokens per optimiser step.\"\"\"

        def __post_init__(self):
            check(self, DictionaryError)

:func:`check` refuses a value of the wrong type (``"8"`` for an int, ``True`` for a number, a float for an
int), a non-finite number and a value outside its range, with one line naming the field, the range and
the value — so a config read from a file or built in a notebook fails where it is made, not deep in a run.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from typing import Any

from .errors import LlmriError


def bounded(default: Any = MISSING, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False, none: bool = False, default_factory: Any = MISSING, option: str | None = None,
            fix: str | None = None):
    """A dataclass field whose value must lie in [lo, hi] (open ends with ``lo_open``/``hi_open``;
    ``none=True`` also allows None). ``option`` names the CLI option that sets it and ``fix`` replaces the
    default advice in the error."""
    meta = {"range": (lo, hi, lo_open, hi_open, none), "option": option, "fix": fix}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def describe_range(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '≥'} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '≤'} {hi:g}"
    return "a finite number"


def check_number(name: str, value: Any, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
                 integer: bool = False, none: bool = False, error: type[LlmriError] = LlmriError,
                 fix: str | None = None) -> None:
    """Raise ``error`` unless ``value`` is a finite number (an int if ``integer``) within the range."""
    if value is None and none:
        return
    kind = "an integer" if integer else "a number"
    what = describe_range(lo, hi, lo_open, hi_open)
    fix = fix or f"use {kind} {what}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise error(f"{name} must be {kind} {what}, got {value!r}", fix)
    if not math.isfinite(value):
        raise error(f"{name} must be {kind} {what}, got {value!r}", fix)
    low = lo is not None and (value <= lo if lo_open else value < lo)
    high = hi is not None and (value >= hi if hi_open else value > hi)
    if low or high:
        raise error(f"{name} must be {what}, got {value!r}", fix)


def check_choice(name: str, value: Any, choices, error: type[LlmriError] = LlmriError) -> None:
    if value not in choices:
        raise error(f"unknown {name} {value!r}", f"use one of {', '.join(map(str, choices))}")


def check(obj: Any, error: type[LlmriError] = LlmriError) -> None:
    """Validate every ``bounded`` field of the dataclass instance ``obj`` (types from the annotations)."""
    owner = type(obj).__name__
    for f in fields(obj):
        rng = f.metadata.get("range")
        if rng is None:
            continue
        lo, hi, lo_open, hi_open, none = rng
        integer = str(f.type).replace(" | None", "").strip() == "int"
        name = f"{owner}.{f.name}" + (f" ({f.metadata['option']})" if f.metadata.get("option") else "")
        check_number(name, getattr(obj, f.name), lo, hi, lo_open=lo_open, hi_open=hi_open,
                     integer=integer, none=none, error=error, fix=f.metadata.get("fix"))
