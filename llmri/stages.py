"""What a scan section declares, receives and returns, and the one capture step that feeds them.

``llmri scan`` runs the model over the corpus once. Before that pass each section declares a :class:`Need`
(running statistics at some points, kept rows at others, how many, in which dtype); :func:`capture` runs
one :func:`data.kept_activations` loop that serves every need and captures a point only while some need
still wants it. Each section then gets its own :class:`Captured` in an immutable :class:`Inputs` (plus
what the earlier sections it ``uses`` handed on) and returns a report section — or an :class:`Output`
when it also hands something on (the quick SAEs, for the features section). Sections never share mutable
state, so the only order that matters is the one their ``uses`` declare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import data
from .errors import LlmriError
from .progress import bar
from .report import Section
from .stats import PointStats, RunningStats
from .validate import bounded, check, check_choice


@dataclass(frozen=True)
class Need:
    """What one section wants from the capture step."""

    stats: tuple[str, ...] = ()
    """Points whose running statistics are wanted (each point's own norm outliers counted as excluded)."""
    rows: tuple[str, ...] = ()
    """Points whose kept rows are wanted, aligned: a token is kept only if it is a norm outlier at none of them."""
    limit: int | None = None
    """Keep at most this many rows (the first kept tokens); None: all kept tokens of the pass."""
    dtype: torch.dtype = torch.float32
    """Dtype the rows are kept in (on the CPU)."""
    windows: bool = False
    """Also keep the token ids and kept mask of the windows the rows come from (rows map back to their tokens)."""
    sample: int | None = None
    """At most this many kept tokens per window become rows, chosen at random (seeded by ``seed``); None: all."""
    seed: int = 0
    """Seed of that choice."""


class Captured(NamedTuple):
    """What the capture step produced for one :class:`Need`."""

    stats: dict[str, PointStats]
    rows: dict[str, Tensor]
    """{point: [rows, d]} in ``Need.dtype`` on the CPU, rows aligned across points."""
    tokens: Tensor | None
    """[W, T] token ids of the pass's windows (``Need.windows``), else None."""
    kept: Tensor | None
    """[W, T] bool: the kept tokens, rows in ``kept.nonzero()`` order (``Need.windows``), else None."""


@dataclass
class PassConfig:
    """The scan's one model pass over the corpus (statistics and every section's rows)."""

    tokens: int = bounded(32_768, 1, option="--stats-tokens")
    """Train-split tokens run through the model for the per-layer statistics and every section's rows; ≥ 1."""
    context: int = bounded(128, 2)
    """Window length; ≥ 2."""
    batch_size: int = bounded(16, 1)
    """Windows per forward pass; ≥ 1."""
    split: str = "train"
    """Corpus split the windows come from (train or eval)."""

    def __post_init__(self):
        check(self, LlmriError)
        check_choice("split", self.split, ("train", "eval"))


def capture(model, docs: list[data.Document], needs: Mapping[str, Need], config: PassConfig,
            exclusion: data.Exclusion) -> dict[str, Captured]:
    """Run ``config.tokens`` tokens of ``docs`` through ``model`` once and serve every need ({name: Need} →
    {name: Captured}); nothing runs when no need asks for anything."""
    needs = {n: need for n, need in needs.items() if need.stats or need.rows}
    if not needs:
        return {}
    stat_points = list(dict.fromkeys(p for need in needs.values() for p in need.stats))
    acc = {p: RunningStats(model.d_model) for p in stat_points}
    rows = {n: {p: [] for p in need.rows} for n, need in needs.items()}
    filled = dict.fromkeys(needs, 0)
    seen: dict[str, list[Tensor]] = {n: [] for n, need in needs.items() if need.windows}
    masks: dict[str, list[Tensor]] = {n: [] for n in seen}
    generators = {n: torch.Generator().manual_seed(need.seed) for n, need in needs.items() if need.sample}

    def open_needs() -> list[str]:
        return [n for n, need in needs.items() if need.rows and (need.limit is None or filled[n] < need.limit)]

    def points() -> list[str]:  # stop capturing a point once every need of it is served
        return list(dict.fromkeys(stat_points + [p for n in open_needs() for p in needs[n].rows]))

    spec = data.WindowSpec(context=config.context, split=config.split)
    n_windows = max(1, config.tokens // config.context)
    with bar("scan pass", total=n_windows * config.context, unit="tokens") as b:
        for kb in data.kept_activations(model, docs, points, windows=spec, batch_size=config.batch_size,
                                        exclusion=exclusion, outlier_points=[], limit_tokens=config.tokens, progress=b):
            for p in stat_points:
                acc[p].update(kb.acts[p], kb.kept_at([p]))
            for n in open_needs():
                need = needs[n]
                keep = _chosen(kb.kept_at(need.rows).cpu(), need, generators.get(n), filled[n])
                for p in need.rows:
                    rows[n][p].append(kb.rows(p, keep.to(kb.keep.device)).to("cpu", need.dtype))
                filled[n] += int(keep.sum())
                if need.windows:
                    seen[n].append(kb.tokens.cpu())
                    masks[n].append(keep)
    stats = {p: a.result() for p, a in acc.items()}
    out = {}
    for n, need in needs.items():
        tokens = kept = None
        if need.windows:
            empty = (torch.zeros(0, config.context, dtype=torch.long), torch.zeros(0, config.context, dtype=torch.bool))
            tokens, kept = (torch.cat(seen[n]), torch.cat(masks[n])) if seen[n] else empty
        got = {p: torch.cat(v) if v else torch.zeros(0, model.d_model, dtype=need.dtype) for p, v in rows[n].items()}
        out[n] = Captured({p: stats[p] for p in need.stats}, got, tokens, kept)
    return out


def _chosen(keep: Tensor, need: Need, generator: torch.Generator | None, filled: int) -> Tensor:
    """The [W, T] CPU mask of the tokens that become rows: ``need.sample`` random kept tokens per window (all
    when None), the first ones in row-major order up to ``need.limit``."""
    if need.sample is not None:
        pick = torch.zeros_like(keep)
        for w in range(keep.shape[0]):
            pos = keep[w].nonzero().flatten()
            pick[w, pos[torch.randperm(len(pos), generator=generator)[: need.sample]]] = True
        keep = pick
    if need.limit is not None and int(keep.sum()) > need.limit - filled:
        flat = keep.flatten().clone()
        flat[flat.nonzero().flatten()[need.limit - filled :]] = False
        keep = flat.view_as(keep)
    return keep


class Inputs(NamedTuple):
    """What a section receives (read-only)."""

    model: Any
    docs: list[data.Document]
    config: Any
    """The whole :class:`~llmri.scan.ScanConfig` (a section reads its own part and the shared fields)."""
    artefacts: Path
    """Staging folder: files a section writes here end up in the report folder."""
    captured: Captured | None
    """What the capture step kept for this section's need (None: it declared none)."""
    upstream: Mapping[str, Any]
    """{section name: what it handed on} for the sections this one ``uses``."""


class Output(NamedTuple):
    """A report section plus what it hands on to later sections."""

    section: Section | None
    product: Any = None


def _none(config, model) -> None:
    return None


class Stage(NamedTuple):
    """One section of the scan: what it needs from the pass, which earlier sections it uses, how it runs."""

    name: str
    run: Callable[[Inputs], Section | Output | None]
    needs: Callable[[Any, Any], Need | None] = _none
    """(ScanConfig, Model) → the section's :class:`Need` (None: nothing from the pass; also when switched off)."""
    uses: tuple[str, ...] = ()
