"""Artefacts appear whole or not at all: write to a hidden temporary sibling, then rename.

A full disk is turned into :class:`~llmri.errors.DiskFullError` after the temporary is removed, so no
command ever leaves a half-written file or folder behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DiskFullError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def disk_full(path: Path, err: OSError) -> DiskFullError:
    return DiskFullError(
        f"no space left on the device while writing {path} ({err.strerror})",
        "free some disk space or choose another output location, then run again",
    )


@contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` when the block succeeds.

    With ``directory=True`` the temporary is created as an empty folder and an existing ``final`` folder
    is replaced as a whole. On any exception the temporary is deleted and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if directory:
            tmp.mkdir()
        yield tmp
        if directory and final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except OSError as err:
        _remove(tmp)
        if err.errno == errno.ENOSPC:
            raise disk_full(final, err) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_figure(path: str | os.PathLike, fig) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def remove_stale(folder: str | os.PathLike) -> int:
    """Delete temporaries in ``folder`` left by writers that no longer run (e.g. a ``kill -9`` mid-write);
    a temporary whose process is alive is left alone. Returns how many were removed."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # a live writer
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, PermissionError):
            continue
        _remove(tmp)
        removed += 1
    return removed
