"""Corpora → documents → fixed-length token windows, a deterministic train/eval split, and exclusion masks.

Windows: documents (in a seeded shuffled order) are joined into one token stream, each preceded by the
model's document-start token (``Model.bos_id``), and cut into windows of ``context`` tokens; with
``prepend_bos`` every window starts with that token and holds ``context − 1`` stream tokens. Position 0
of every window is therefore an attention sink: see :class:`Exclusion`.

Split: a document is in the eval split when ``sha256(f"{seed}:{doc.id}")`` (as a fraction of 2⁶⁴) falls below
``eval_fraction``, so the split never changes when documents are added or reordered. A corpus too small to
put any document there holds out the one with the lowest hash.

Kept activations: :func:`kept_activations` is the one loop corpus → windows → capture → kept-token mask that
statistics, features, dictionary training and evaluation, and the geometry tools share.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .assets import asset_path
from .errors import CorpusError
from .validate import bounded, check, check_choice

SPLITS = ("train", "eval", "all")

BUNDLED_CORPORA = ("sotu", "shakespeare", "kjv")
DEFAULT_CORPUS = "sotu"


@dataclass(frozen=True)
class Document:
    """One document: a stable id, its text, and free-form metadata (year, author, book...)."""

    id: str
    text: str
    meta: dict = field(default_factory=dict, compare=False)


# ---------------------------------------------------------------- corpora


def load_corpus(spec: str = DEFAULT_CORPUS, *, source: str | None = None) -> list[Document]:
    """Documents of a corpus, sorted by id.

    ``spec``: ``sotu`` | ``shakespeare`` | ``kjv`` (bundled), a ``.txt`` file (one document), a folder of
    ``.txt`` files (one document each), a ``.jsonl`` file (a ``text`` field per line, optional ``id``), a
    ``.parquet`` file (``text`` column; needs pyarrow), or ``hf:NAME[:CONFIG][@SPLIT]`` (needs ``datasets``
    and network). Raises :class:`CorpusError` if it is unreadable or holds no text.
    """
    if spec in BUNDLED_CORPORA:
        docs = _bundled(spec, source)
    elif spec.startswith("hf:"):
        docs = _hf_dataset(spec[3:])
    else:
        docs = _local(Path(spec).expanduser())
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise CorpusError(f"corpus '{spec}' holds no text", "point at files containing text")
    return sorted(docs, key=lambda d: d.id)


def _bundled(name: str, source: str | None) -> list[Document]:
    path = asset_path(name, source=source)
    if name == "sotu":
        meta = {}
        with open(path / "metadata.csv", newline="") as f:
            for row in csv.DictReader(f):
                meta[row["fileid"]] = {"year": int(row["year"]), "president": row["president"], "party": row["party"]}
        return [Document(p.stem, p.read_text(), meta.get(p.stem, {})) for p in sorted(path.glob("*.txt"))]
    if name == "shakespeare":
        return [Document(p.stem.removesuffix("_gut"), p.read_text(errors="replace")) for p in sorted(path.glob("*.txt"))]
    # kjv: one document per chapter
    chapters: dict[tuple, list[str]] = {}
    order: list[tuple] = []
    for line in path.read_text().splitlines():
        v = json.loads(line)
        key = (v["book"], v["chapter"])
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(v["text"])
    return [
        Document(f"{i:04d}-{book} {chapter}", " ".join(chapters[(book, chapter)]), {"book": book, "chapter": chapter})
        for i, (book, chapter) in enumerate(order)
    ]


def _local(path: Path) -> list[Document]:
    if not path.exists():
        raise CorpusError(f"corpus path '{path}' does not exist", "give a bundled corpus name (sotu, shakespeare, kjv) or an existing file")
    try:
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
            return [Document(str(p.relative_to(path)), p.read_text(errors="replace")) for p in files]
        if path.suffix == ".txt":
            return [Document(path.stem, path.read_text(errors="replace"))]
        if path.suffix == ".jsonl":
            docs = []
            for i, line in enumerate(path.read_text().splitlines()):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise CorpusError(f"line {i + 1} of corpus '{path}' is not a JSON object with a 'text' string",
                                          'write one object per line, e.g. {"id": "doc1", "text": "..."}')
                    docs.append(Document(str(row.get("id", f"{i:08d}")), str(row["text"]), {k: v for k, v in row.items() if k not in ("id", "text")}))
            return docs
        if path.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise CorpusError("reading .parquet needs pyarrow", "pip install pyarrow") from None
            table = pq.read_table(path)
            ids = table.column("id").to_pylist() if "id" in table.column_names else range(table.num_rows)
            return [Document(str(i), str(t)) for i, t in zip(ids, table.column("text").to_pylist())]
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorpusError(f"cannot read corpus '{path}': {type(err).__name__}: {err}", "each record needs a 'text' field") from None
    raise CorpusError(f"unsupported corpus file '{path}'", "use .txt, a folder of .txt, .jsonl or .parquet")


def _hf_dataset(spec: str) -> list[Document]:
    try:
        import datasets
    except ImportError:
        raise CorpusError("hf: corpora need the `datasets` package", "pip install datasets") from None
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; report the first line
        raise CorpusError(f"could not load dataset '{name}': {str(err).splitlines()[0][:200]}",
                          "check the name and your network, or save it as .jsonl and pass the file") from None
    return [Document(str(row.get("id", i)), str(row["text"])) for i, row in enumerate(ds)]


def split_documents(docs: Sequence[Document], split: str = "train", *, eval_fraction: float = 0.1,
                    seed: int = 0) -> list[Document]:
    """The ``train``/``eval`` part of ``docs`` (``all`` keeps everything). Deterministic by document id."""
    if split == "all":
        return list(docs)
    if split not in ("train", "eval"):
        raise CorpusError(f"unknown split '{split}'", "use train, eval or all")

    def score(doc: Document) -> float:
        h = hashlib.sha256(f"{seed}:{doc.id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    scores = {d.id: score(d) for d in docs}
    eval_ids = {i for i, s in scores.items() if s < eval_fraction}
    if not eval_ids and len(docs) >= 2 and eval_fraction > 0:
        eval_ids = {min(scores, key=scores.get)}  # small corpora: hold out at least one document
    part = [d for d in docs if (d.id in eval_ids) == (split == "eval")]
    if not part:
        raise CorpusError(f"the {split} split of this corpus is empty ({len(docs)} document(s))",
                          "use a corpus with more documents, or --split all")
    return part


def fingerprint(docs: Sequence[Document]) -> str:
    """sha256 of the documents' ids and texts (identifies a corpus and split)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.id.encode() + b"\0" + d.text.encode() + b"\0")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's serialised vocabulary and rules."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------- windows


@dataclass
class WindowSpec:
    """How a corpus becomes token windows."""

    context: int = bounded(128, 2)
    """Tokens per window, including the leading document-start token when ``prepend_bos``; ≥ 2."""
    prepend_bos: bool = True
    """Start every window with the model's document-start token (SAELens ``prepend_bos``)."""
    split: str = "train"
    """Which documents: ``train``, ``eval`` or ``all`` (see :func:`split_documents`)."""
    eval_fraction: float = bounded(0.1, 0, 1, lo_open=True, hi_open=True)
    """Fraction of documents (by id hash) held out as the eval split, in (0, 1)."""
    seed: int = bounded(0, 0)
    """Seeds both the split and the document order."""

    def __post_init__(self):
        check(self, CorpusError)
        check_choice("split", self.split, SPLITS, CorpusError)


def token_windows(model, docs: Sequence[Document], spec: WindowSpec | None = None) -> Iterator[Tensor]:
    """Yield windows ([context] long tensors) of the chosen split, lazily tokenising document by document."""
    spec = spec or WindowSpec()
    model.check_context(spec.context)
    if spec.context < 2:
        raise CorpusError(f"context {spec.context} is too short", "use a context of at least 2 tokens")
    part = split_documents(docs, spec.split, eval_fraction=spec.eval_fraction, seed=spec.seed)
    part = sorted(part, key=lambda d: d.id)
    random.Random(spec.seed).shuffle(part)
    body = spec.context - 1 if spec.prepend_bos else spec.context
    head = [model.bos_id] if spec.prepend_bos else []
    buffer: list[int] = []
    for doc in part:
        buffer += [model.bos_id, *model.tokenizer(doc.text, add_special_tokens=False)["input_ids"]]
        while len(buffer) >= body:
            yield torch.tensor(head + buffer[:body], dtype=torch.long)
            buffer = buffer[body:]


def batched(windows: Iterator[Tensor], batch_size: int, limit: int | None = None) -> Iterator[Tensor]:
    """Group windows into [batch, context] tensors; stop after ``limit`` windows (last batch may be short)."""
    rows: list[Tensor] = []
    for w in itertools.islice(windows, limit):
        rows.append(w)
        if len(rows) == batch_size:
            yield torch.stack(rows)
            rows = []
    if rows:
        yield torch.stack(rows)


# ---------------------------------------------------------------- exclusion


@dataclass
class Exclusion:
    """Tokens left out of statistics, dictionary training and metrics (by default).

    Position 0 and separator/special tokens are attention sinks whose residual norm is ~100× the bulk
    (SmolLM2 layer 15: ≈20,000 vs ≈170); left in, they dominate every squared-error metric.
    """

    first_position: bool = True
    """Drop position 0 of every window."""
    special_tokens: bool = True
    """Drop special tokens (BOS/EOS/``<|endoftext|>``/chat markers)."""
    outlier_factor: float | None = bounded(20.0, 1, lo_open=True, none=True)
    """Drop tokens whose activation norm exceeds this multiple of the batch median norm (> 1; None: keep)."""

    def __post_init__(self):
        check(self, CorpusError)

    def describe(self) -> str:
        parts = []
        if self.first_position:
            parts.append("position 0")
        if self.special_tokens:
            parts.append("special tokens")
        if self.outlier_factor:
            parts.append(f"tokens with norm > {self.outlier_factor:g}× the median")
        return "excluded: " + (", ".join(parts) if parts else "nothing")


def token_mask(tokens: Tensor, special_ids: set[int], exclusion: Exclusion) -> Tensor:
    """Boolean [batch, seq]: True where the token is kept (before the activation-norm outlier rule)."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    if exclusion.first_position:
        keep[:, 0] = False
    if exclusion.special_tokens and special_ids:
        keep &= ~torch.isin(tokens, torch.tensor(sorted(special_ids), device=tokens.device))
    return keep


def kept_mask(tokens: Tensor, acts: Sequence[Tensor], special_ids: set[int], exclusion: Exclusion) -> Tensor:
    """Boolean [batch, seq]: tokens kept by :func:`token_mask` that are a norm outlier at none of ``acts``
    (each point's median taken over the token-kept set — the rule the activation store applies)."""
    return without_outliers(token_mask(tokens, special_ids, exclusion), acts, exclusion)


def without_outliers(base: Tensor, acts: Sequence[Tensor], exclusion: Exclusion) -> Tensor:
    """``base`` (a :func:`token_mask`) less the tokens that are a norm outlier at any of ``acts`` (each point's
    median taken over ``base``)."""
    keep = base.clone()
    for a in acts:
        keep &= ~outlier_mask(a, base, exclusion).to(keep.device)
    return keep


def outlier_mask(acts: Tensor, keep: Tensor, exclusion: Exclusion) -> Tensor:
    """Boolean like ``keep``: True where the activation norm exceeds ``outlier_factor`` × median kept norm."""
    if not exclusion.outlier_factor or not keep.any():
        return torch.zeros_like(keep)
    norms = acts.float().norm(dim=-1)
    keep = keep.to(norms.device)
    return (norms > exclusion.outlier_factor * norms[keep].median()).to(keep.device)


# ---------------------------------------------------------------- kept activations


class KeptBatch(NamedTuple):
    """One batch of :func:`kept_activations`: whole windows, what was captured on them, and which tokens are kept."""

    tokens: Tensor
    """[B, T] token ids, as the windows came (usually on the CPU)."""
    acts: dict[str, Tensor]
    """{point: [B, T, d]} as captured (model dtype and device)."""
    keep: Tensor
    """[B, T] bool on the model's device: kept by the token rule and a norm outlier at none of ``outlier_points``."""
    base: Tensor
    """[B, T] bool on the model's device: the token rule alone (:func:`token_mask`)."""
    exclusion: Exclusion
    first: int
    """Index of this batch's first window among the windows yielded so far."""

    def kept_at(self, points: Sequence[str]) -> Tensor:
        """[B, T] bool: the token rule and a norm outlier at none of ``points`` (``[p]``: ``p``'s own outliers only)."""
        return without_outliers(self.base, [self.acts[p] for p in points], self.exclusion)

    def outliers(self, point: str) -> Tensor:
        """[B, T] bool: norm outliers at ``point`` (median over the token-kept set)."""
        return outlier_mask(self.acts[point], self.base, self.exclusion)

    def rows(self, point: str, keep: Tensor | None = None) -> Tensor:
        """[n_kept, d]: the activations at ``point`` of the kept tokens (``keep``, default :attr:`keep`), row-major."""
        return self.acts[point][self.keep if keep is None else keep]

    def positions(self, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(window index counted over the whole iteration, position in the window) of each row of :meth:`rows`."""
        w, t = (self.keep if keep is None else keep).nonzero(as_tuple=True)
        return w + self.first, t


def _is_documents(source) -> bool:
    return (isinstance(source, Sequence) and not isinstance(source, Tensor)
            and (not source or isinstance(source[0], Document)))


def kept_activations(model, source: Sequence[Document] | Iterable[Tensor],
                     points: Sequence[str] | Callable[[], Sequence[str]], *,
                     windows: WindowSpec | None = None, batch_size: int = 16, exclusion: Exclusion | None = None,
                     outlier_points: Sequence[str] | None = None, limit_windows: int | None = None,
                     limit_tokens: int | None = None, stop_early: bool = True, progress=None) -> Iterator[KeptBatch]:
    """Run windows through ``model``, capturing ``points``, and yield each batch with its kept-token masks.

    ``points`` may be a function called before each batch (a caller that stops needing a point stops
    capturing it, and the iteration ends when it returns none; ``outlier_points`` then defaults to each
    batch's points).

    ``source``: documents (cut into windows by :func:`token_windows` with ``windows``), an iterable of windows
    ([T] tensors, grouped ``batch_size`` at a time) or of ready batches ([B, T] tensors, used as they come).
    An iterator is consumed no further than the windows yielded. ``exclusion`` (default :class:`Exclusion`)
    gives the token rule; :attr:`KeptBatch.keep` also drops the norm outliers at any of ``outlier_points``
    (default: all ``points``; ``[]``: none), :meth:`KeptBatch.kept_at` those at any other set of points.
    Stops after ``limit_windows`` windows and after the windows holding ``limit_tokens`` tokens
    (``max(1, limit_tokens // T)`` windows), whichever comes first. ``stop_early`` goes to ``model.capture``;
    ``progress`` (a bar) advances by each batch's tokens once the caller is done with it."""
    exclusion = exclusion or Exclusion()
    points_now = points if callable(points) else (lambda: points)
    if _is_documents(source):
        source = token_windows(model, source, windows)
    items = iter(source)
    head = next(items, None) if limit_windows is None or limit_windows > 0 else None
    if head is None:
        return
    items = itertools.chain([head], items)
    if limit_tokens is not None:
        n = max(1, limit_tokens // head.shape[-1])
        limit_windows = n if limit_windows is None else min(limit_windows, n)
    batches = batched(items, batch_size, limit=limit_windows) if head.dim() == 1 else _cut(items, limit_windows)
    first = 0
    for batch in batches:
        wanted = list(points_now())
        if not wanted:  # a points function with nothing left to capture ends the iteration
            return
        acts = model.capture(batch, wanted, **({} if stop_early else {"stop_early": False}))
        base = token_mask(batch, model.special_ids, exclusion).to(model.device)
        keep = without_outliers(base, [acts[p] for p in (wanted if outlier_points is None else outlier_points)], exclusion)
        yield KeptBatch(batch, acts, keep, base, exclusion, first)
        first += len(batch)
        if progress is not None:
            progress.advance(batch.numel())


def _cut(batches: Iterator[Tensor], limit: int | None) -> Iterator[Tensor]:
    """Ready batches, the last one cut so that at most ``limit`` windows come out."""
    left = limit
    for b in batches:
        if left is not None:
            b = b[:left]
            left -= len(b)
        yield b
        if left == 0:
            return
