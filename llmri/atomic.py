"""Artefacts appear whole or not at all, and never at the cost of what llmri did not write.

Writes go to a hidden temporary sibling that is renamed over the target when complete; a full disk is turned
into :class:`~llmri.errors.DiskFullError` after the temporary is removed, so no command leaves a half-written
file or folder behind.

Every folder artefact a user names (``--out``) carries a marker, ``.llmri-artefact.json``: its kind
(``report``, ``dictionary``, ``dashboard``, ``store``, ``run``, …) and the entries llmri wrote into it. Before
a folder is replaced or written into, :func:`check_target` refuses (:class:`~llmri.errors.OutputError`) when
the target is an existing file, a folder of another kind, or a folder holding entries llmri did not write
(anything not in its marker's list and not an llmri artefact itself). An empty folder is fine. A replaced
artefact stays in place until its successor is complete.
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

from .errors import DiskFullError, OutputError

MARKER = ".llmri-artefact.json"


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


USER_ERRNOS = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way of a folder",
               errno.EEXIST: "a file is in the way", errno.EISDIR: "a folder is in the way of a file",
               errno.ENAMETOOLONG: "the name is too long", errno.EDQUOT: "the disk quota is exceeded"}


def user_os_error(path: str | os.PathLike, err: OSError) -> Exception:
    """The one-line llmri error for an OSError the user can fix (no space, read-only, permissions, a file in
    the way); ``err`` itself when it is none of those."""
    if err.errno == errno.ENOSPC:
        return disk_full(Path(path), err)
    if err.errno in USER_ERRNOS:
        where = err.filename or path
        return OutputError(f"cannot write {where}: {USER_ERRNOS[err.errno]}", "choose another output location")
    return err


def _marker(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("kind"), str) else None


def _ours(entry: Path, listed: set[str]) -> bool:
    """An entry llmri wrote: listed in the marker, a temporary of ours, or an artefact with its own marker."""
    ours_tmp = entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name)  # atomic_path's names
    return entry.name in listed or entry.name == MARKER or ours_tmp or (
        entry.is_dir() and not entry.is_symlink() and _marker(entry) is not None)


def check_target(final: str | os.PathLike, kind: str) -> None:
    """Raise :class:`OutputError` unless an artefact of ``kind`` may be written at ``final``: it does not
    exist, is an empty folder, or is an llmri ``kind`` folder holding nothing llmri did not write."""
    final = Path(final)
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        raise OutputError(f"{final} is an existing file, not a {kind} folder",
                          "choose another output path (llmri never replaces a file it did not write)")
    entries = list(final.iterdir())
    if not entries:
        return
    marker = _marker(final)
    if marker is None:
        names = ", ".join(sorted(e.name for e in entries)[:3]) + (", …" if len(entries) > 3 else "")
        raise OutputError(f"{final} already holds files that are not an llmri {kind} ({names})",
                          "choose a new or empty output folder, or move those files away")
    if marker["kind"] != kind:
        raise OutputError(f"{final} holds an llmri {marker['kind']}, not a {kind}", "choose another output folder")
    foreign = sorted(e.name for e in entries if not _ours(e, set(marker.get("files", []))))
    if foreign:
        raise OutputError(f"{final} holds files llmri did not write ({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''})",
                          "move them away or choose another output folder")


def mark(folder: str | os.PathLike, kind: str, *added: str) -> None:
    """Write (or extend) ``folder``'s marker: it is an llmri ``kind`` holding ``added`` (default: all it holds now)."""
    folder = Path(folder)
    old = _marker(folder) or {}
    files = set(old.get("files", [])) | set(added or (e.name for e in folder.iterdir() if e.name != MARKER))
    write_json(folder / MARKER, {"kind": kind, "files": sorted(files)})


def claim_folder(folder: str | os.PathLike, kind: str, *, legacy: str | tuple[str, ...] = ()) -> Path:
    """Make ``folder`` an llmri ``kind`` that commands write into piece by piece (a store, a training run):
    refused like :func:`check_target`, created and marked if new. A folder without a marker that holds one
    of the files ``legacy`` is taken as this kind written before markers existed. Returns the path."""
    folder = Path(folder)
    legacy = (legacy,) if isinstance(legacy, str) else legacy
    if not (_marker(folder) is None and any((folder / name).is_file() for name in legacy)):
        check_target(folder, kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise user_os_error(folder, err) from None
    if _marker(folder) is None:
        write_json(folder / MARKER, {"kind": kind, "files": []})
    return folder


@contextmanager
def claimed(folder: str | os.PathLike, kind: str, *, legacy: str | tuple[str, ...] = ()) -> Iterator[Path]:
    """:func:`claim_folder` for the length of a job: a folder this job created is removed again if the job
    fails before anything but the marker was written into it (no empty run folder after a refused input)."""
    folder = Path(folder)
    new = not folder.exists()
    claim_folder(folder, kind, legacy=legacy)
    try:
        yield folder
    except BaseException:
        if new and folder.is_dir() and all(e.name == MARKER for e in folder.iterdir()):
            _remove(folder)
        raise


@contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` when the block succeeds.

    With ``directory=True`` the temporary is created as an empty folder and an existing ``final`` folder
    is replaced as a whole. On any exception the temporary is deleted and ``final`` is untouched. With
    ``kind`` (every folder a user names) the target is checked first (:func:`check_target`) and the new
    folder is marked as that kind of artefact; without it (llmri's own cache) the folder is replaced as is.
    """
    final = Path(final)
    if kind is not None:
        check_target(final, kind)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise user_os_error(final, err) from None
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if directory:
            tmp.mkdir()
        yield tmp
        if directory and kind is not None:
            mark(tmp, kind)
        if directory and final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except OSError as err:
        _remove(tmp)
        mapped = user_os_error(final, err)
        if mapped is err:
            raise
        raise mapped from None
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return path


def same_run(folder: str | os.PathLike, settings: dict, what: str, error: type[Exception]) -> None:
    """A resumable job's settings in ``folder/run.json``: written on the first run; a later run on the same
    folder must carry the same ones (compared as JSON reads them back), else ``error`` names what differs."""
    path = Path(folder) / "run.json"
    settings = json.loads(json.dumps(settings))  # tuples read back as lists
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise error(f"{path.parent} holds {what} with other settings ({', '.join(differ)})",
                        "rerun with the settings in its run.json to resume, or choose a new --out folder")
        return
    write_json(path, settings)


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
