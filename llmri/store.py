"""Activation store: sharded on-disk activations of chosen hook points, written resumably, read by mmap.

Layout of a store folder::

    meta.json                 configuration, model/corpus/tokenizer fingerprints, dims, progress
    shards/000000.safetensors one shard = ``windows_per_shard`` consecutive windows:
        tokens    [w, context] int32   the token ids
        excluded  [w·context] bool      position 0 / special tokens (see data.Exclusion)
        outlier.P [w·context] bool      activation-norm outliers at point P
        P         [w·context, d] dtype  activations of point P (rows in window-major order)

Shards are written whole (temporary name, then rename), so after a crash or ``kill -9`` a rerun of the same
command skips the complete shards and continues; the windows are deterministic, so the result is identical
to an uninterrupted run. Readers memory-map the shards (safetensors is a JSON header + raw arrays), so
random access and shuffled streaming use bounded memory.

Integrity (store version 2). Every shard carries a checksum in its safetensors ``__metadata__``
(``sha256``: over each tensor's raw bytes, in sorted-name order). Everything else a shard must be follows
from ``meta.json``: its name, its tensors' names, dtypes and shapes, hence its data size. Opening a store
checks, for every shard, that it exists and that its header parses and matches ``meta.json`` and that the
file has exactly the size the header announces (cheap: headers only). The first time a shard is mapped it
is verified in full: checksum, token ids within ``[0, vocab_size)``, finite activations. Any failure is a
:class:`~llmri.errors.StoreError` naming the store, the shard, what is wrong (and the row: global token index
and window), and the fix. Rerunning ``llmri cache`` verifies every existing shard the same way, deletes the
damaged ones and recomputes exactly those windows, so a repaired store is byte-identical to an uninterrupted
run. Version-1 stores (no checksums) are still read, with every check but the checksum.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from torch import Tensor

from . import data
from .atomic import atomic_path, claim_folder, mark, remove_stale, write_json
from .errors import StoreError
from .progress import bar, say
from .validate import bounded, check, check_choice

STORE_VERSION = 2
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NP = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "I32": np.int32, "BOOL": np.bool_}
_ST = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}  # store dtype → safetensors dtype
_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "I32": 4, "BOOL": 1}
_SHARD = re.compile(r"\d{6}\.safetensors")
_MAX_HEADER = 100 * 2**20
REPAIR = "rerun the same `llmri cache` command to repair it"


@dataclass
class StoreConfig:
    """What to cache. Saved in ``meta.json``; a resumed run must use the same values."""

    points: list[str]
    """Hook points to store (any accepted spelling; saved canonical)."""
    tokens: int | None = bounded(1_000_000, 1, none=True, option="--tokens",
                                 fix="give a positive count such as 500k, or all (None) for the whole split")
    """Number of tokens to store, ≥ 1 (rounded up to whole windows); None = the whole split."""
    corpus: str = data.DEFAULT_CORPUS
    """Corpus spec (see :func:`llmri.data.load_corpus`)."""
    windows: data.WindowSpec = field(default_factory=data.WindowSpec)
    """How the corpus becomes windows (context, BOS, split, seed)."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Which tokens are flagged as excluded/outliers (they are stored, and skipped by readers by default)."""
    dtype: str = "float16"
    """Storage dtype: float16, bfloat16 or float32."""
    shard_tokens: int = bounded(65_536, 1, option="--shard-tokens")
    """Tokens per shard, ≥ 1 (rounded down to whole windows, at least one window)."""
    batch_size: int = bounded(16, 1, option="--batch-size")
    """Windows per forward pass, ≥ 1."""

    def __post_init__(self):
        check(self, StoreError)
        check_choice("store dtype (--store-dtype)", self.dtype, tuple(STORE_DTYPES), StoreError)


def create_store(model, path: str | Path, config: StoreConfig, *, max_shards: int | None = None) -> Path:
    """Write, resume or repair an activation store at ``path``. ``max_shards`` stops early (tests/benchmarks).

    On a rerun every shard already on disk is verified (header, size, checksum, token ids, finite values);
    damaged ones are deleted and recomputed with the others, one ``repairing`` line each."""
    path = Path(path)
    config.__post_init__()  # fields may have been changed after construction
    points = [model.resolve(p) for p in config.points]
    if not points:
        raise StoreError("no hook points given", "pass --points, e.g. resid_post.5")
    docs = data.load_corpus(config.corpus)
    part = data.split_documents(docs, config.windows.split, eval_fraction=config.windows.eval_fraction, seed=config.windows.seed)
    model.check_context(config.windows.context)
    ctx = config.windows.context
    per_shard = max(1, config.shard_tokens // ctx)
    wanted = math.ceil(config.tokens / ctx) if config.tokens is not None else None
    available = sum(1 for _ in itertools.islice(data.token_windows(model, docs, config.windows), wanted))
    if (wanted is not None and available < wanted) or available == 0:  # checked before any forward pass
        raise StoreError(
            f"the {config.windows.split} split of '{config.corpus}' holds only {available * ctx:,} tokens "
            f"({available:,} windows of {ctx})" + (f", fewer than the {config.tokens:,} requested" if wanted else ""),
            f"ask for at most {available * ctx:,} tokens, or --tokens all" if available else
            "use a larger corpus, another --split or a shorter --context",
        )
    n_windows = available
    n_shards = math.ceil(n_windows / per_shard)
    meta = {
        "version": STORE_VERSION,
        "model": model.name,
        "model_card": {k: model.card()[k] for k in ("architecture", "n_layers", "d_model", "vocab_size")},
        "points": points,
        "d": {p: model.d_model if not p == "logits" else model.vocab_size for p in points},
        "dtype": config.dtype,
        "context": ctx,
        "windows_per_shard": per_shard,
        "n_windows": n_windows,
        "n_shards": n_shards,
        "n_tokens": n_windows * ctx,
        "corpus": config.corpus,
        "corpus_fingerprint": data.fingerprint(part),
        "tokenizer_fingerprint": data.tokenizer_fingerprint(model.tokenizer),
        "bos_id": model.bos_id,
        "config": _jsonable(config),
    }
    claim_folder(path, "store", legacy="meta.json")  # refuses a file or a folder of someone else's files
    mark(path, "store", "meta.json", "shards")
    shard_dir = path / "shards"
    good = _start(path, meta)
    todo = [s for s in range(n_shards) if s not in good]
    if max_shards is not None:
        todo = todo[:max_shards]
    dtype = STORE_DTYPES[config.dtype]
    if todo:
        windows = data.token_windows(model, docs, config.windows)
        position = 0  # windows taken from the iterator so far
        writer = ThreadPoolExecutor(max_workers=1)
        pending: Future | None = None
        try:
            with bar(f"caching {len(points)} point(s)", total=len(todo) * per_shard * ctx, unit="tokens") as b:
                for shard in todo:
                    first = shard * per_shard
                    for _ in itertools.islice(windows, first - position):  # windows of shards already on disk
                        pass
                    count = min(per_shard, n_windows - first)
                    tensors = _collect(model, windows, count, config, points, dtype, b)
                    position = first + count
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(_write_shard, shard_dir / _name(shard), tensors, points, first * ctx, ctx)
                if pending is not None:
                    pending.result()
        finally:
            writer.shutdown(wait=True)
    if len(good) + len(todo) == n_shards:
        write_json(path / "meta.json", {**meta, "complete": True})
    return path


def _jsonable(config: StoreConfig) -> dict:
    return json.loads(json.dumps(asdict(config), default=str))


def _name(shard: int) -> str:
    return f"{shard:06d}.safetensors"


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, OSError) as err:
        raise StoreError(f"the activation store at {path} has an unreadable meta.json ({type(err).__name__})",
                         f"delete {path} and run `llmri cache` again") from None
    version = meta.get("version", 1)
    if not isinstance(version, int) or version > STORE_VERSION:
        raise StoreError(f"the activation store at {path} has version {version}, newer than this llmri reads ({STORE_VERSION})",
                         "upgrade llmri, or cache the activations again")
    need = ("points", "d", "dtype", "context", "windows_per_shard", "n_windows", "n_shards", "model_card")
    missing = [k for k in need if k not in meta]
    if missing or meta["dtype"] not in _ST or "vocab_size" not in meta["model_card"]:
        raise StoreError(f"the activation store at {path} has a meta.json without {', '.join(missing) or 'a valid dtype'}",
                         f"delete {path} and run `llmri cache` again")
    ints = [meta[k] for k in ("context", "windows_per_shard", "n_windows", "n_shards")]
    if not all(isinstance(v, int) and v >= 0 for v in ints) or min(ints[:2]) < 1 or \
            meta["n_shards"] != math.ceil(meta["n_windows"] / meta["windows_per_shard"]):
        raise StoreError(f"the activation store at {path} has an inconsistent meta.json (context, windows_per_shard, "
                         "n_windows and n_shards do not agree)", f"delete {path} and run `llmri cache` again")
    return meta


def _start(path: Path, meta: dict) -> set[int]:
    """Check/initialise ``meta.json``; verify the shards on disk, delete damaged ones; return the good ones."""
    meta_path = path / "meta.json"
    if meta_path.exists():
        old = _read_meta(path)
        keys = ("model", "points", "dtype", "context", "windows_per_shard", "n_windows", "corpus_fingerprint", "tokenizer_fingerprint")
        changed = [k for k in keys if old.get(k) != meta.get(k)]
        if changed:
            raise StoreError(
                f"{path} holds a store made with a different {', '.join(changed)}",
                "choose another --out folder, or delete this one to start over",
            )
        meta["version"] = old.get("version", 1)  # a resumed version-1 store stays one: its old shards have no checksums
    shard_dir = path / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(shard_dir)  # a shard half-written when an earlier run was killed
    n_shards = meta["n_shards"]
    good: set[int] = set()
    for f in sorted(shard_dir.glob("*.safetensors")):
        if not _SHARD.fullmatch(f.name) or int(f.name[:6]) >= n_shards:
            f.unlink()
            say(f"llmri: removed {f}, which is not a shard of this store")
    for s in range(n_shards):
        f = shard_dir / _name(s)
        if not f.exists():
            continue
        try:
            _verify_shard(f, meta, s, _read_header(f, _expected(meta, s)))
        except _Damage as err:
            f.unlink()
            say(f"llmri: repairing {f}: it {err.describe(meta, s)}; recomputing its windows")
        else:
            good.add(s)
    if len(good) < n_shards or not meta_path.exists():
        write_json(meta_path, {**meta, "complete": False})
    return good


def _collect(model, windows: Iterator[Tensor], count: int, config: StoreConfig, points: list[str], dtype, b) -> dict:
    toks, excluded = [], []
    acts: dict[str, list[Tensor]] = {p: [] for p in points}
    outliers: dict[str, list[Tensor]] = {p: [] for p in points}
    # every token is stored: the token rule and each point's outliers are kept as masks, not applied
    for kb in data.kept_activations(model, windows, points, batch_size=config.batch_size, exclusion=config.exclusion,
                                    outlier_points=[], limit_windows=count, progress=b):
        toks.append(kb.tokens.to(torch.int32))
        excluded.append((~kb.base).flatten().cpu())
        for p in points:
            x = kb.acts[p]
            outliers[p].append(kb.outliers(p).flatten().cpu())
            acts[p].append(x.reshape(-1, x.shape[-1]).to("cpu", dtype))
    if not toks:
        raise StoreError("the corpus ran out of text before the requested token count",
                         "ask for fewer --tokens or use a larger corpus / split")
    tensors = {"tokens": torch.cat(toks), "excluded": torch.cat(excluded)}
    for p in points:
        tensors[p] = torch.cat(acts[p]).contiguous()
        tensors[f"outlier.{p}"] = torch.cat(outliers[p])
    return tensors


def checksum(tensors: dict[str, Tensor]) -> str:
    """sha256 over each tensor's raw (little-endian) bytes, in sorted-name order: what a shard's header records."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        if t.numel():
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def _write_shard(target: Path, tensors: dict[str, Tensor], points: Sequence[str], first_row: int, ctx: int) -> None:
    for p in points:  # a non-finite value would make the store unreadable (and a rerun would write it again)
        finite = torch.isfinite(tensors[p]).all(dim=-1)
        if not finite.all():
            row = first_row + int((~finite).nonzero()[0, 0])
            raise StoreError(f"the model produced a non-finite activation (nan/inf) at {p}, token {row:,} "
                             f"(window {row // ctx:,}, position {row % ctx}) once stored as {tensors[p].dtype}; "
                             f"{target.name} was not written",
                             "use --store-dtype float32 (float16 overflows above 65504) or a float32 model (--dtype float32)")
    # serialised here and written through our own temporary: safetensors' save_file writes through a
    # `.tmpXXXXXX` of its own that a killed run would leave behind under a name we cannot attribute
    data = save(tensors, metadata={"sha256": checksum(tensors)})
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------- verification


class _Damage(Exception):
    """What is wrong with one shard (``row``: the shard-local row where a bad value sits)."""

    def __init__(self, what: str, row: int | None = None):
        super().__init__(what)
        self.what, self.row = what, row

    def describe(self, meta: dict, shard: int) -> str:
        if self.row is None:
            return self.what
        ctx = meta["context"]
        g = shard * meta["windows_per_shard"] * ctx + self.row
        return f"{self.what} at token {g:,} (window {g // ctx:,}, position {g % ctx})"


@dataclass
class _Header:
    base: int  # where the data section starts (8 + header length)
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]  # name → (dtype, shape, start, end)
    checksum: str | None


def _expected(meta: dict, shard: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names, safetensors dtypes and shapes of the tensors of ``shard`` (all follow from meta.json)."""
    ctx, per = meta["context"], meta["windows_per_shard"]
    count = min(per, meta["n_windows"] - shard * per)
    rows = count * ctx
    out = {"tokens": ("I32", (count, ctx)), "excluded": ("BOOL", (rows,))}
    for p in meta["points"]:
        out[p] = (_ST[meta["dtype"]], (rows, meta["d"][p]))
        out[f"outlier.{p}"] = ("BOOL", (rows,))
    return out


def _read_header(path: Path, expected: dict[str, tuple[str, tuple[int, ...]]]) -> _Header:
    """Parse and check a shard's header against what meta.json says it holds, and the file size against it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, _MAX_HEADER):
                raise _Damage(f"is truncated or has a corrupted header ({size:,} bytes, header length field {n:,})")
            raw = f.read(n)
    except OSError as err:
        raise _Damage(f"cannot be read ({err.strerror})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError
    except ValueError:
        raise _Damage("has a corrupted header (not valid JSON)") from None
    metadata = header.pop("__metadata__", None) or {}
    if set(header) != set(expected):
        raise _Damage(f"has a corrupted header (tensors {', '.join(sorted(map(str, header)))}; "
                      f"meta.json says {', '.join(sorted(expected))})")
    tensors, spans = {}, []
    for name, (dtype, shape) in expected.items():
        info = header[name]
        try:
            got = (info["dtype"], tuple(info["shape"]), int(info["data_offsets"][0]), int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise _Damage(f"has a corrupted header (entry of '{name}')") from None
        if got[:2] != (dtype, shape) or got[3] - got[2] != math.prod(shape) * _ITEMSIZE[dtype]:
            raise _Damage(f"has a corrupted header ('{name}' is {got[0]} {list(got[1])} in {got[3] - got[2]:,} bytes; "
                          f"meta.json says {dtype} {list(shape)})")
        tensors[name] = got
        spans.append(got[2:])
    end = 0
    for a, b in sorted(spans):
        if a != end:
            raise _Damage("has a corrupted header (tensor data offsets overlap or leave gaps)")
        end = b
    if size != 8 + n + end:
        what = "is truncated" if size < 8 + n + end else "has trailing bytes"
        raise _Damage(f"{what}: {size:,} bytes where its header announces {8 + n + end:,}")
    digest = metadata.get("sha256") if isinstance(metadata, dict) else None
    return _Header(8 + n, tensors, digest if isinstance(digest, str) else None)


def _file_checksum(path: Path, header: _Header) -> str:
    h = hashlib.sha256()
    buf = bytearray(8 * 2**20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        for name in sorted(header.tensors):
            _, _, start, end = header.tensors[name]
            f.seek(header.base + start)
            left = end - start
            while left:
                got = f.readinto(view[: min(left, len(buf))])
                if not got:
                    raise _Damage("is truncated (changed while being read)")
                h.update(view[:got])
                left -= got
    return h.hexdigest()


def _mmap_shard(path: Path, header: _Header) -> dict[str, np.ndarray]:
    out = {}
    for name, (dtype, shape, start, end) in header.tensors.items():
        if end == start:
            out[name] = np.zeros(shape, dtype=_NP[dtype])
            continue
        out[name] = np.memmap(path, dtype=_NP[dtype], mode="r", offset=header.base + start, shape=shape)
    return out


def _first_nonfinite(arr: np.ndarray) -> int | None:
    """Index of the first row of ``arr`` ([rows, d]) holding a nan/inf (BF16 arrives as uint16), or None."""
    step = max(1, 2**22 // max(1, arr.shape[1]))
    for s in range(0, arr.shape[0], step):
        chunk = np.asarray(arr[s : s + step])
        bad = ((chunk & 0x7F80) == 0x7F80) if chunk.dtype == np.uint16 else ~np.isfinite(chunk)
        rows = np.flatnonzero(bad.any(axis=1))
        if len(rows):
            return s + int(rows[0])
    return None


def _verify_shard(path: Path, meta: dict, shard: int, header: _Header) -> dict[str, np.ndarray]:
    """Full check of one shard (after :func:`_read_header`): checksum, token ids, finite values; its arrays."""
    if header.checksum is not None:
        if _file_checksum(path, header) != header.checksum:
            raise _Damage("does not match its checksum (flipped or overwritten bytes)")
    elif meta.get("version", 1) >= 2:
        raise _Damage("has no checksum in its header (a version-2 store records one in every shard)")
    maps = _mmap_shard(path, header)
    vocab = meta["model_card"]["vocab_size"]
    tokens = np.asarray(maps["tokens"]).reshape(-1)
    bad = np.flatnonzero((tokens < 0) | (tokens >= vocab))
    if len(bad):
        raise _Damage(f"holds token id {int(tokens[bad[0]]):,}, outside the vocabulary [0, {vocab:,})", int(bad[0]))
    for p in meta["points"]:
        row = _first_nonfinite(maps[p])
        if row is not None:
            raise _Damage(f"holds a non-finite activation (nan/inf) of {p}", row)
    return maps


# ---------------------------------------------------------------- reading

_WARNED_V1: set[str] = set()


def _torch(arr: np.ndarray) -> Tensor:
    """A tensor copy of (part of) a mapped array; BF16 is mapped as uint16 and viewed back."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.view(torch.bfloat16) if arr.dtype == np.uint16 else t


class ActivationStore:
    """Read a store: random access by token index and shuffled streaming batches with bounded memory.

    Opening checks every shard's presence, header and size against ``meta.json``; each shard is verified in
    full (checksum, token ids, finite values) the first time it is mapped. Problems raise :class:`StoreError`.
    """

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise StoreError(f"no activation store at {self.path} (meta.json missing)", "create one with `llmri cache`")
        self.meta = _read_meta(self.path)
        self.points: list[str] = self.meta["points"]
        self.d: dict[str, int] = self.meta["d"]
        self.context: int = self.meta["context"]
        self.per_shard: int = self.meta["windows_per_shard"]
        n_shards = self.meta["n_shards"]
        shard_dir = self.path / "shards"
        present = [s for s in range(n_shards) if (shard_dir / _name(s)).is_file()]
        if not self.meta.get("complete") and not allow_incomplete:
            raise StoreError(
                f"store {self.path} is incomplete ({len(present)}/{n_shards} shards)",
                "rerun the same `llmri cache` command to finish it",
            )
        if self.meta.get("complete"):
            missing = [s for s in range(n_shards) if s not in present]
            if missing:
                raise StoreError(f"activation store {self.path}: shard shards/{_name(missing[0])} is missing "
                                 f"({len(missing)} of the {n_shards} shards meta.json lists)", REPAIR)
            extra = sorted(f.name for f in shard_dir.glob("*.safetensors") if f.name not in {_name(s) for s in present})
            if extra:
                raise StoreError(f"activation store {self.path}: shards/{extra[0]} is not one of its {n_shards} shards", REPAIR)
            if n_shards == 0 or self.meta["n_windows"] == 0:
                raise StoreError(f"activation store {self.path} holds no windows", "cache a corpus with text in it")
        self._index = present  # position → shard number
        self.shards = [shard_dir / _name(s) for s in present]
        self._headers = [self._check(i, lambda: _read_header(self.shards[i], _expected(self.meta, present[i])))
                         for i in range(len(present))]
        if self._headers and any(h.checksum is None for h in self._headers) and self.meta.get("version", 1) < 2:
            key = str(self.path.resolve())
            if key not in _WARNED_V1:
                _WARNED_V1.add(key)
                say(f"llmri: warning: {self.path} is a version-1 activation store without checksums: sizes, headers, "
                    "token ids and finite values are checked, flipped bytes elsewhere would go unnoticed — cache it "
                    "again into a new folder for a verified store")
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._rows = [h.tensors["tokens"][1][0] * self.context for h in self._headers]
        self._offsets = np.concatenate([[0], np.cumsum(self._rows)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _check(self, i: int, fn):
        try:
            return fn()
        except _Damage as err:
            raise StoreError(f"activation store {self.path}: shard shards/{self.shards[i].name} "
                             f"{err.describe(self.meta, self._index[i])}", REPAIR) from None

    def _map(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._maps:
            self._maps[i] = self._check(i, lambda: _verify_shard(self.shards[i], self.meta, self._index[i], self._headers[i]))
        return self._maps[i]

    def verify(self) -> None:
        """Verify every shard in full now (checksum, token ids, finite values) instead of on first use."""
        for i in range(len(self.shards)):
            self._map(i)

    def _point(self, point: str) -> str:
        if point not in self.points:
            raise StoreError(f"point '{point}' is not in this store", f"stored points: {', '.join(self.points)}")
        return point

    def tokens(self) -> Tensor:
        """All token ids, [n_windows, context]."""
        parts = [torch.from_numpy(np.array(self._map(i)["tokens"])) for i in range(len(self.shards))]
        return torch.cat(parts).long() if parts else torch.empty(0, self.context, dtype=torch.long)

    def kept(self, points: Sequence[str] | None = None, exclude: bool = True) -> Tensor:
        """Global row indices that are kept (not excluded and not an outlier at any of ``points``)."""
        points = [self._point(p) for p in (points or self.points)]
        out = [np.nonzero(self._keep_local(self._map(i), points, exclude))[0] + self._offsets[i] for i in range(len(self.shards))]
        return torch.from_numpy(np.concatenate(out)).long() if out else torch.empty(0, dtype=torch.long)

    def get(self, point: str, index: Tensor | Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Activations of ``point`` at global row indices ``index`` ([len(index), d])."""
        point = self._point(point)
        index = torch.as_tensor(index, dtype=torch.long)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise StoreError(f"row index out of range 0..{len(self) - 1}", "use indices from ActivationStore.kept()")
        out = torch.empty(len(index), self.d[point], dtype=dtype)
        shard = np.searchsorted(self._offsets, index.numpy(), side="right") - 1
        for i in np.unique(shard):
            sel = np.nonzero(shard == i)[0]
            local = index.numpy()[sel] - self._offsets[i]
            order = np.argsort(local)
            rows = np.asarray(self._map(int(i))[point][local[order]])
            vals = _torch(rows).to(dtype)
            out[torch.from_numpy(sel[order])] = vals
        return out

    def batches(self, batch_size: int, *, points: Sequence[str] | None = None, shuffle: bool = True, seed: int = 0,
                exclude: bool = True, buffer_shards: int = 4, dtype: torch.dtype = torch.float32,
                epochs: int = 1) -> Iterator[dict[str, Tensor]]:
        """Yield ``{point: [batch_size, d]}`` (aligned rows) for ``epochs`` passes.

        Shuffled streaming reads ``buffer_shards`` shards at a time (in a seeded random order), permutes
        their kept rows and carries the remainder forward, so memory stays at a few shards. The last
        batch of the final epoch may be smaller.
        """
        points = [self._point(p) for p in (points or self.points)]
        if batch_size < 1 or buffer_shards < 1:
            raise StoreError(f"batch_size ({batch_size}) and buffer_shards ({buffer_shards}) must be ≥ 1", "pass positive values")
        if not self.shards:
            raise StoreError(f"activation store {self.path} holds no shards", "run (or rerun) `llmri cache` to fill it")
        rng = np.random.default_rng(seed)
        carry: dict[str, Tensor] | None = None
        for _ in range(epochs):
            order = rng.permutation(len(self.shards)) if shuffle else np.arange(len(self.shards))
            seen = 0
            for g in range(0, len(order), buffer_shards):
                group = order[g : g + buffer_shards]
                maps = [self._map(int(i)) for i in group]
                keeps = [self._keep_local(m, points, exclude) for m in maps]
                seen += sum(int(k.sum()) for k in keeps)
                perm = None
                buf: dict[str, Tensor] = {}
                for p in points:  # one point at a time, kept in the stored dtype: memory ≈ the shards' kept rows
                    parts = [_torch(np.asarray(m[p])[k]) for m, k in zip(maps, keeps)]
                    if carry is not None:
                        parts.insert(0, carry.pop(p))
                    v = torch.cat(parts)
                    del parts
                    if shuffle:
                        if perm is None:
                            perm = torch.from_numpy(rng.permutation(len(v)))
                        v = v[perm]
                    buf[p] = v
                n = len(buf[points[0]])
                full = n - n % batch_size
                for s in range(0, full, batch_size):
                    yield {p: v[s : s + batch_size].to(dtype) for p, v in buf.items()}
                carry = {p: v[full:] for p, v in buf.items()}
                del buf
            if seen == 0:  # every further epoch would be empty too: an endless loop yielding nothing
                raise StoreError(f"activation store {self.path} holds no kept rows for {', '.join(points)} "
                                 f"({len(self):,} rows, all excluded or outliers)",
                                 "cache more tokens, or read with exclude=False")
        if carry is not None and len(carry[points[0]]):
            yield {p: v.to(dtype) for p, v in carry.items()}

    def windows(self, batch_windows: int, *, points: Sequence[str] | None = None, exclude: bool = True,
                dtype: torch.dtype = torch.float32) -> Iterator[tuple[Tensor, dict[str, Tensor], Tensor]]:
        """Whole windows in stored order: (tokens [B, T], {point: [B, T, d]}, kept mask [B, T])."""
        points = [self._point(p) for p in (points or self.points)]
        for i in range(len(self.shards)):
            m = self._map(i)
            tokens = torch.from_numpy(np.array(m["tokens"])).long()
            keep = torch.from_numpy(self._keep_local(m, points, exclude)).view(tokens.shape)
            for s in range(0, len(tokens), batch_windows):
                rows = slice(s * self.context, (s + len(tokens[s : s + batch_windows])) * self.context)
                acts = {p: _torch(np.asarray(m[p][rows])).to(dtype).view(-1, self.context, self.d[p]) for p in points}
                yield tokens[s : s + batch_windows], acts, keep[s : s + batch_windows]

    def _keep_local(self, m: dict[str, np.ndarray], points: Sequence[str], exclude: bool) -> np.ndarray:
        if not exclude:
            return np.ones(m["excluded"].shape[0], dtype=bool)
        drop = np.asarray(m["excluded"]).copy()
        for p in points:
            drop |= np.asarray(m[f"outlier.{p}"])
        return ~drop
