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
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from torch import Tensor

from . import data
from .atomic import atomic_path, remove_stale, write_json
from .errors import StoreError
from .progress import bar

STORE_VERSION = 1
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NP = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "I32": np.int32, "BOOL": np.bool_}


@dataclass
class StoreConfig:
    """What to cache. Saved in ``meta.json``; a resumed run must use the same values."""

    points: list[str]
    """Hook points to store (any accepted spelling; saved canonical)."""
    tokens: int = 1_000_000
    """Number of tokens to store (rounded up to whole windows); 0 = the whole split."""
    corpus: str = data.DEFAULT_CORPUS
    """Corpus spec (see :func:`llmri.data.load_corpus`)."""
    windows: data.WindowSpec = field(default_factory=data.WindowSpec)
    """How the corpus becomes windows (context, BOS, split, seed)."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Which tokens are flagged as excluded/outliers (they are stored, and skipped by readers by default)."""
    dtype: str = "float16"
    """Storage dtype: float16, bfloat16 or float32."""
    shard_tokens: int = 65_536
    """Tokens per shard (rounded down to whole windows)."""
    batch_size: int = 16
    """Windows per forward pass."""


def create_store(model, path: str | Path, config: StoreConfig, *, max_shards: int | None = None) -> Path:
    """Write (or resume) an activation store at ``path``. ``max_shards`` stops early (for tests/benchmarks)."""
    path = Path(path)
    if config.dtype not in STORE_DTYPES:
        raise StoreError(f"unknown store dtype '{config.dtype}'", f"use one of {', '.join(STORE_DTYPES)}")
    points = [model.resolve(p) for p in config.points]
    if not points:
        raise StoreError("no hook points given", "pass --points, e.g. resid_post.5")
    docs = data.load_corpus(config.corpus)
    part = data.split_documents(docs, config.windows.split, eval_fraction=config.windows.eval_fraction, seed=config.windows.seed)
    model.check_context(config.windows.context)
    ctx = config.windows.context
    per_shard = max(1, config.shard_tokens // ctx)
    wanted = math.ceil(config.tokens / ctx) if config.tokens else None
    available = sum(1 for _ in itertools.islice(data.token_windows(model, docs, config.windows), wanted))
    if wanted is not None and available < wanted:  # checked before any forward pass: tokenising is cheap
        raise StoreError(
            f"the {config.windows.split} split of '{config.corpus}' holds only {available * ctx:,} tokens "
            f"({available:,} windows of {ctx}), fewer than the {config.tokens:,} requested",
            f"ask for at most {available * ctx:,} tokens, or --tokens all",
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
    shard_dir = path / "shards"
    done = _start(path, meta)
    if done >= n_shards:
        write_json(path / "meta.json", {**meta, "complete": True})  # e.g. killed after the last shard
        return path
    windows = data.token_windows(model, docs, config.windows)
    for _ in range(done * per_shard):
        next(windows)
    writer = ThreadPoolExecutor(max_workers=1)
    pending: Future | None = None
    dtype = STORE_DTYPES[config.dtype]
    todo = n_shards if max_shards is None else min(n_shards, done + max_shards)
    try:
        with bar(f"caching {len(points)} point(s)", total=(todo - done) * per_shard * ctx, unit="tokens") as b:
            for shard in range(done, todo):
                count = min(per_shard, n_windows - shard * per_shard)
                tensors = _collect(model, windows, count, config, points, dtype, b)
                if pending is not None:
                    pending.result()
                pending = writer.submit(_write_shard, shard_dir / f"{shard:06d}.safetensors", tensors)
            if pending is not None:
                pending.result()
    finally:
        writer.shutdown(wait=True)
    if todo == n_shards:
        write_json(path / "meta.json", {**meta, "complete": True})
    return path


def _jsonable(config: StoreConfig) -> dict:
    return json.loads(json.dumps(asdict(config), default=str))


def _start(path: Path, meta: dict) -> int:
    """Check/initialise ``meta.json``; return the number of complete shards already on disk."""
    meta_path = path / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        keys = ("model", "points", "dtype", "context", "windows_per_shard", "n_windows", "corpus_fingerprint", "tokenizer_fingerprint")
        changed = [k for k in keys if old.get(k) != meta.get(k)]
        if changed:
            raise StoreError(
                f"{path} holds a store made with a different {', '.join(changed)}",
                "choose another --out folder, or delete this one to start over",
            )
    else:
        (path / "shards").mkdir(parents=True, exist_ok=True)
        write_json(meta_path, {**meta, "complete": False})
    (path / "shards").mkdir(parents=True, exist_ok=True)
    remove_stale(path / "shards")  # a shard half-written when an earlier run was killed
    done = 0
    while (path / "shards" / f"{done:06d}.safetensors").exists():
        done += 1
    return done


def _collect(model, windows: Iterator[Tensor], count: int, config: StoreConfig, points: list[str], dtype, b) -> dict:
    toks, excluded = [], []
    acts: dict[str, list[Tensor]] = {p: [] for p in points}
    outliers: dict[str, list[Tensor]] = {p: [] for p in points}
    special = model.special_ids
    for batch in data.batched(windows, config.batch_size, limit=count):
        got = model.capture(batch, points)
        keep = data.token_mask(batch, special, config.exclusion)
        toks.append(batch.to(torch.int32))
        excluded.append((~keep).flatten())
        for p in points:
            x = got[p]
            outliers[p].append(data.outlier_mask(x, keep, config.exclusion).flatten().cpu())
            acts[p].append(x.reshape(-1, x.shape[-1]).to("cpu", dtype))
        b.advance(batch.numel())
    if not toks:
        raise StoreError("the corpus ran out of text before the requested token count",
                         "ask for fewer --tokens or use a larger corpus / split")
    tensors = {"tokens": torch.cat(toks), "excluded": torch.cat(excluded)}
    for p in points:
        tensors[p] = torch.cat(acts[p]).contiguous()
        tensors[f"outlier.{p}"] = torch.cat(outliers[p])
    return tensors


def _write_shard(target: Path, tensors: dict[str, Tensor]) -> None:
    # serialised here and written through our own temporary: safetensors' save_file writes through a
    # `.tmpXXXXXX` of its own that a killed run would leave behind under a name we cannot attribute
    data = save(tensors)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------- reading


def _mmap_shard(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (8-byte header length, JSON header, raw data)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:
            out[name] = np.zeros(shape, dtype=_NP[info["dtype"]])
            continue
        out[name] = np.memmap(path, dtype=_NP[info["dtype"]], mode="r", offset=base + start, shape=shape)
    return out


def _torch(arr: np.ndarray) -> Tensor:
    """A tensor copy of (part of) a mapped array; BF16 is mapped as uint16 and viewed back."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.view(torch.bfloat16) if arr.dtype == np.uint16 else t


class ActivationStore:
    """Read a store: random access by token index and shuffled streaming batches with bounded memory."""

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise StoreError(f"no activation store at {self.path} (meta.json missing)", "create one with `llmri cache`")
        self.meta = json.loads(meta_path.read_text())
        self.points: list[str] = self.meta["points"]
        self.d: dict[str, int] = self.meta["d"]
        self.context: int = self.meta["context"]
        self.per_shard: int = self.meta["windows_per_shard"]
        self.shards = sorted((self.path / "shards").glob("*.safetensors"))
        if not self.meta.get("complete") and not allow_incomplete:
            raise StoreError(
                f"store {self.path} is incomplete ({len(self.shards)}/{self.meta['n_shards']} shards)",
                "rerun the same `llmri cache` command to finish it",
            )
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._rows = [self._map(i)["tokens"].shape[0] * self.context for i in range(len(self.shards))]
        self._offsets = np.concatenate([[0], np.cumsum(self._rows)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _map(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._maps:
            self._maps[i] = _mmap_shard(self.shards[i])
        return self._maps[i]

    def _point(self, point: str) -> str:
        if point not in self.points:
            raise StoreError(f"point '{point}' is not in this store", f"stored points: {', '.join(self.points)}")
        return point

    def tokens(self) -> Tensor:
        """All token ids, [n_windows, context]."""
        return torch.cat([torch.from_numpy(np.array(self._map(i)["tokens"])) for i in range(len(self.shards))]).long()

    def kept(self, points: Sequence[str] | None = None, exclude: bool = True) -> Tensor:
        """Global row indices that are kept (not excluded and not an outlier at any of ``points``)."""
        points = [self._point(p) for p in (points or self.points)]
        out = [np.nonzero(self._keep_local(self._map(i), points, exclude))[0] + self._offsets[i] for i in range(len(self.shards))]
        return torch.from_numpy(np.concatenate(out)).long()

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
        rng = np.random.default_rng(seed)
        carry: dict[str, Tensor] | None = None
        for _ in range(epochs):
            order = rng.permutation(len(self.shards)) if shuffle else np.arange(len(self.shards))
            for g in range(0, len(order), buffer_shards):
                group = order[g : g + buffer_shards]
                maps = [self._map(int(i)) for i in group]
                keeps = [self._keep_local(m, points, exclude) for m in maps]
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
