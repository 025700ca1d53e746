"""Training data for dictionaries: fixed-size batches of aligned activations ``{point: [tokens, d]}``.

Two sources, both deterministic and resumable from a small state:

* :class:`ModelSource` runs the live model: every requested point of every layer comes from ONE forward
  pass per LM batch (the pass stops after the deepest point). Kept tokens (see ``data.Exclusion``) go into
  a pool that is shuffled with a seeded generator and cut into batches.
* :class:`StoreSource` streams an activation store (``llmri cache``) in seeded shuffled order.
* :class:`TensorSource` cycles over activations already in memory (e.g. those ``llmri scan`` captured for
  its statistics), one seeded permutation per epoch.

With ``world > 1`` (torchrun data-parallel), each rank receives its own share of every global batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor

from .. import data
from ..errors import StoreError
from ..store import ActivationStore
from .config import DictionaryError


class StoreSource:
    """Batches from an activation store; rank ``r`` of ``world`` gets rows r, r+world, … of each global batch."""

    def __init__(self, store: ActivationStore, points: list[str], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world: int = 1, exclude: bool = True):
        missing = [p for p in points if p not in store.points]
        if missing:
            raise DictionaryError(f"the store at {store.path} has no {', '.join(missing)}",
                                  f"it holds {', '.join(store.points)}; cache those points or choose others")
        self.store, self.points, self.batch_size = store, points, batch_size
        self.seed, self.rank, self.world, self.exclude = seed, rank, world, exclude
        self.consumed = 0

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch_batches = self.store.batches(self.batch_size, points=self.points, seed=self.seed, exclude=self.exclude,
                                           epochs=10**9)
        # the store raises StoreError rather than stream empty epochs (no kept rows, damaged shards)
        for i, batch in enumerate(epoch_batches):
            if len(batch[self.points[0]]) < self.batch_size:
                continue
            if i < self.consumed:
                continue
            self.consumed = i + 1
            yield {p: v[self.rank :: self.world] for p, v in batch.items()}
        raise StoreError(f"the activation store at {self.store.path} ran out of batches of {self.batch_size:,} rows",
                         "cache more tokens or use a smaller --batch-size")

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        return {"kind": "store", "consumed": self.consumed}, {}

    def restore(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        self.consumed = meta["consumed"]


class TensorSource:
    """Batches from in-memory activations ``{point: [N, d]}`` (aligned rows, any float dtype; batches come as
    float32), reshuffled every epoch."""

    def __init__(self, acts: dict[str, Tensor], batch_size: int, *, seed: int = 0, rank: int = 0, world: int = 1):
        n = {len(v) for v in acts.values()}
        if len(n) != 1 or min(n) < batch_size:
            raise DictionaryError(f"in-memory activations hold {min(n):,} rows, fewer than one batch of {batch_size:,}"
                                  if len(n) == 1 else "in-memory activations of different points have different lengths",
                                  "capture more tokens or use a smaller batch")
        self.acts, self.points, self.batch_size = acts, list(acts), batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.consumed = 0

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        n = len(self.acts[self.points[0]])
        per_epoch = n // self.batch_size
        i = self.consumed
        while True:
            epoch, b = divmod(i, per_epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            rows = perm[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world]
            i += 1
            self.consumed = i
            yield {p: v[rows.to(v.device)].float() for p, v in self.acts.items()}  # fp16 rows kept compact

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        return {"kind": "tensors", "consumed": self.consumed}, {}

    def restore(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        self.consumed = meta["consumed"]


class ModelSource:
    """Batches captured from the live model over a corpus (one forward pass per LM batch for all points)."""

    def __init__(self, model, docs: list[data.Document], points: list[str], batch_size: int, *,
                 windows: data.WindowSpec | None = None, lm_batch: int = 16, pool_batches: int = 4,
                 exclusion: data.Exclusion | None = None, seed: int = 0, rank: int = 0, world: int = 1):
        self.model, self.docs, self.points, self.batch_size = model, docs, points, batch_size
        self.windows = windows or data.WindowSpec()
        self.lm_batch, self.pool_batches = lm_batch, pool_batches
        self.exclusion = exclusion or data.Exclusion()
        self.seed, self.rank, self.world = seed, rank, world
        # resumable state: where the current pool started, what was carried into it, how much of it is used
        self.pool_start_windows = 0
        self.carry: dict[str, Tensor] = {}
        self.gen_state = torch.Generator().manual_seed(seed).get_state()
        self.taken = 0
        self.lm_tokens = 0
        self.lm_seconds = 0.0

    def _windows(self, start: int) -> Iterator[Tensor]:
        """This rank's windows from global window index ``start`` on."""
        it = data.token_windows(self.model, self.docs, self.windows)
        for i, w in enumerate(it):
            if i >= start and i % self.world == self.rank:
                yield w

    def _capture(self, windows: Iterator[Tensor], n_windows: int) -> tuple[dict[str, Tensor], int]:
        got_rows: dict[str, list[Tensor]] = {p: [] for p in self.points}
        used = 0
        batches = data.kept_activations(self.model, windows, self.points, batch_size=self.lm_batch,
                                        exclusion=self.exclusion, limit_windows=n_windows)
        while True:
            t0 = time.perf_counter()
            kb = next(batches, None)  # windows, forward pass and masks
            if kb is None:
                break
            for p in self.points:
                got_rows[p].append(kb.rows(p).float())
            self.lm_seconds += time.perf_counter() - t0
            self.lm_tokens += kb.tokens.numel()
            used += len(kb.tokens)
        if used == 0:
            raise DictionaryError("the corpus ran out of text before the requested number of training tokens",
                                  "ask for fewer --tokens or use a larger corpus")
        return {p: torch.cat(v) for p, v in got_rows.items()}, used

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        ctx = self.windows.context
        per_pool = max(self.lm_batch, -(-self.pool_batches * self.batch_size // ctx))  # windows per pool (this rank)
        start = self.pool_start_windows
        windows = self._windows(start)
        skip_taken = self.taken
        while True:
            gen = torch.Generator().manual_seed(0)
            gen.set_state(self.gen_state)
            fresh, used = self._capture(windows, per_pool)
            pool = {p: torch.cat([self.carry[p], fresh[p]]) if self.carry else fresh[p] for p in self.points}
            n = len(pool[self.points[0]])
            perm = torch.randperm(n, generator=gen).to(pool[self.points[0]].device)
            pool = {p: v[perm] for p, v in pool.items()}
            full = n // self.batch_size
            for b in range(skip_taken, full):
                self.taken = b + 1
                yield {p: v[b * self.batch_size : (b + 1) * self.batch_size] for p, v in pool.items()}
            skip_taken = 0
            # next pool: remember where it starts so a checkpoint can rebuild it
            self.carry = {p: v[full * self.batch_size :] for p, v in pool.items()}
            self.gen_state = gen.get_state()
            self.pool_start_windows += used * self.world
            self.taken = 0

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        meta = {"kind": "model", "pool_start_windows": self.pool_start_windows, "taken": self.taken}
        tensors = {f"carry.{p}": v.cpu() for p, v in self.carry.items()}
        tensors["gen_state"] = self.gen_state
        return meta, tensors

    def restore(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        self.pool_start_windows = meta["pool_start_windows"]
        self.taken = meta["taken"]
        self.gen_state = tensors["gen_state"]
        self.carry = {p: tensors[f"carry.{p}"].to(self.model.device) for p in self.points if f"carry.{p}" in tensors}
