"""CLI options that take their default and help from a config dataclass field: one source of truth.

    batch_size: int = option("llmri.dictionaries.config:TrainConfig", "batch_size")

gives ``--batch-size`` the default of ``TrainConfig.batch_size`` and, as help, the first sentence of the
docstring under the field (dataclasses keep no attribute docstrings at run time, so the class source is read
with :mod:`ast`). ``"windows.context"`` follows a nested config (through its ``default_factory``).

A class may also be named as ``"module:Class"`` (imported when the CLI is built; config modules keep their
heavy imports — scipy, scikit-learn — inside functions so that ``--help`` stays fast).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import re
import textwrap
from typing import Any, Callable

import typer

_UNSET = object()


def count(n: int) -> str:
    """A token count as the CLI writes it, so that ``parse_count`` gives ``n`` back exactly: 2_000_000 →
    "2M", 5_000 → "5k", 65_536 → "65536" ("64k" would read as 64,000)."""
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def joined(values) -> str:
    """A tuple as a comma-separated option value: (0.0, 0.5) → "0,0.5"; ("a", "b") → "a,b"."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def option(config: type | str, field: str, *flags: str, help: str | None = None, default: Any = _UNSET,
           convert: Callable[[Any], Any] | None = None, **kw) -> Any:
    """A ``typer.Option`` for ``config.field`` (``field`` may be dotted: ``"diffusion.n_components"``).

    Its default is the field's default (``default_factory`` called; no default: a required option) passed
    through ``convert`` (e.g. :func:`count` for options written like ``2M``); its help is the first
    sentence of the field's docstring. ``help``/``default`` override them where the CLI spells a value its own
    way; other keywords go to ``typer.Option``."""
    cls, doc, value = resolve(config, field)
    if default is _UNSET:
        default = ... if value is dataclasses.MISSING else convert(value) if convert else value
    info = typer.Option(default, *flags, help=help if help is not None else first_sentence(doc), **kw)
    info.config_field = (config, field)  # lets tests find every option made here
    return info


def first_sentence(doc: str) -> str:
    """The docstring's first sentence on one line, reST markup (``x``, :meth:`x`) reduced to its text."""
    text = " ".join(doc.split())
    text = re.sub(r"(?::\w+:)?`+([^`]+)`+", r"\1", text)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]


def resolve(config: type | str, path: str) -> tuple[type, str, Any]:
    """(the dataclass owning the last field, its docstring, its default or ``dataclasses.MISSING``)."""
    if isinstance(config, str):
        module, _, name = config.partition(":")
        config = getattr(importlib.import_module(module), name)
    cls, value = config, dataclasses.MISSING
    for i, name in enumerate(path.split(".")):
        if i:  # inside a nested config: read the (default-built) instance
            cls = type(value)
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        if i:
            value = getattr(value, name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
    return cls, field_docs(cls)[name], value


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field: its docstring} of a dataclass (the string literal under each annotated field)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    out = {}
    for stmt, after in zip(node.body, node.body[1:] + [None]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            doc = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                        and isinstance(after.value.value, str)) else ""
            out[stmt.target.id] = inspect.cleandoc(doc)
    return out
