"""Intrinsic dimension across depth: the ID of a layer's token states at every layer, on a corpus and on a
control made of the same windows with their tokens shuffled (Valeriani et al. 2023, Cheng et al. 2025 report
that on natural text the ID rises, peaks in the middle layers and falls, and that the peak shrinks on
shuffled text).

Sampling: windows of the corpus split, each starting with the document-start token; in every window
``per_window`` positions are drawn at random among the kept tokens (position 0, special tokens and tokens whose
norm is an outlier at any layer are excluded, as everywhere in llmri), and the states at those positions are
taken at ``embed`` and every ``resid_post.{l}``. The control shuffles positions 1… of each window (the
document-start token stays first) and samples the same way, so both profiles see the same token multiset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import data
from ..atomic import atomic_path, write_figure, write_json
from ..errors import GeometryError
from ..progress import bar
from ..validate import bounded, check, check_choice, check_number
from .intrinsic import Estimate, gride, twonn


@dataclass
class ProfileConfig:
    """Settings of an ID profile (``llmri geometry id``)."""

    points: int = bounded(4096, 1)
    """Token states per layer (per corpus and per control); ≥ 1 (:func:`id_profile` needs ≥ 100)."""
    per_window: int = bounded(8, 1)
    """Positions sampled per window (fewer = less correlated states, more forward passes); ≥ 1."""
    position: str = "random"
    """``random``: ``per_window`` random kept positions per window (token-level states); ``last``: the last
    kept position of each window only (sequence-level states, as in Cheng et al. 2025; ``per_window`` ignored)."""
    context: int = bounded(128, 2)
    """Window length, including the document-start token; ≥ 2."""
    split: str = "eval"
    """Corpus split the windows come from (train, eval, all)."""
    batch_size: int = bounded(16, 1)
    """Windows per forward pass; ≥ 1."""
    kind: str = "resid_post"
    """Hook-point kind profiled at every layer (``embed`` is added in front)."""
    ranks: tuple[int, ...] = (1, 4, 16)
    """GRIDE neighbourhood ranks reported next to TwoNN (ID as a function of scale); at least one, each ≥ 1."""
    n_boot: int = bounded(200, 1)
    """Bootstrap resamples for TwoNN's interval (GRIDE uses a quarter of them, at least 10); ≥ 1."""
    control: bool = True
    """Also profile the shuffled-within-window control."""
    seed: int = bounded(0, 0)
    """Seeds position sampling and shuffling; ≥ 0."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens never sampled."""

    def __post_init__(self):
        check(self, GeometryError)
        check_choice("position rule", self.position, ("random", "last"), GeometryError)
        check_choice("split", self.split, data.SPLITS, GeometryError)
        if not self.ranks:
            raise GeometryError("ProfileConfig.ranks is empty", "give at least one GRIDE rank, e.g. (1, 4, 16)")
        for r in self.ranks:
            check_number("ProfileConfig.ranks entry", r, 1, integer=True, error=GeometryError)


class LayerID(NamedTuple):
    point: str
    twonn: Estimate
    gride: dict[int, Estimate]


@dataclass
class IDProfile:
    """The result: per-point estimates on the corpus and (optionally) the control."""

    model: str
    corpus: str
    config: ProfileConfig
    corpus_ids: list[LayerID]
    control_ids: list[LayerID]
    windows: int
    """Windows the samples came from (per corpus/control)."""

    def summary(self) -> dict:
        def rows(ids):
            return [{"point": r.point, "twonn": r.twonn._asdict(), "gride": {str(n): e._asdict() for n, e in r.gride.items()}}
                    for r in ids]

        cfg = asdict(self.config)
        cfg["exclusion"] = self.config.exclusion.describe()
        return {"model": self.model, "corpus": self.corpus, "config": cfg, "windows": self.windows,
                "sampling": describe(self.config, self.windows), "corpus_profile": rows(self.corpus_ids),
                "control_profile": rows(self.control_ids)}

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        with atomic_path(out, directory=True, kind="id profile") as tmp:
            write_json(tmp / "id_profile.json", self.summary())
            write_figure(tmp / "id_profile.png", plot(self))
        return out


def describe(cfg: ProfileConfig, windows: int) -> str:
    where = "the last kept position" if cfg.position == "last" else f"{cfg.per_window} random kept positions"
    return (f"{cfg.points:,} token states per layer: {where} in each of {windows:,} "
            f"{cfg.context}-token windows of the {cfg.split} split ({cfg.exclusion.describe()} at any layer)")


def shuffle_windows(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The same windows with positions 1… permuted independently per window (position 0 stays)."""
    out = batch.clone()
    for w in range(batch.shape[0]):
        perm = torch.randperm(batch.shape[1] - 1, generator=generator) + 1
        out[w, 1:] = batch[w, perm]
    return out


def sample_states(model, batches, points: list[str], cfg: ProfileConfig, generator: torch.Generator,
                  shuffle: bool, progress=None, limit: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """``{point: [cfg.points, d] float32}`` sampled as the module docstring says, and the windows used.
    ``batches``: [B, T] batches, or [T] windows (grouped ``cfg.batch_size`` at a time); at most ``limit`` windows."""
    rows: dict[str, list[torch.Tensor]] = {p: [] for p in points}
    got_n, windows = 0, 0
    if shuffle:  # lazily, so that shuffling and sampling draw from ``generator`` in the same order as batch by batch
        batches = (shuffle_windows(b, generator) if b.dim() == 2 else shuffle_windows(b[None], generator)[0]
                   for b in batches)
    for kb in data.kept_activations(model, batches, points, batch_size=cfg.batch_size, exclusion=cfg.exclusion,
                                    limit_windows=limit):
        got, kept = kb.acts, kb.keep.cpu()
        pick = torch.zeros_like(kept)
        for w in range(kept.shape[0]):
            pos = kept[w].nonzero().flatten()
            if cfg.position == "last":
                pos = pos[-1:]
            else:
                pos = pos[torch.randperm(len(pos), generator=generator)[: cfg.per_window]]
            pick[w, pos] = True
        pick_dev = pick.to(model.device)
        for p in points:
            rows[p].append(got[p][pick_dev].float().cpu())
        new = int(pick.sum())
        if progress is not None:
            progress.advance(min(new, cfg.points - got_n))
        got_n += new
        windows += kb.tokens.shape[0]
        if got_n >= cfg.points:
            break
    if got_n < cfg.points:
        raise GeometryError(f"the corpus gave {got_n} token states, fewer than the {cfg.points} asked for",
                            "lower --points or use a larger corpus")
    return {p: torch.cat(v)[: cfg.points].numpy() for p, v in rows.items()}, windows


def estimate(states: dict[str, np.ndarray], cfg: ProfileConfig, progress=None) -> list[LayerID]:
    out = []
    for p, X in states.items():
        out.append(LayerID(p, twonn(X, n_boot=cfg.n_boot, seed=cfg.seed),
                           gride(X, ranks=cfg.ranks, n_boot=max(cfg.n_boot // 4, 10), seed=cfg.seed)))
        if progress is not None:
            progress.advance(1)
    return out


def id_profile(model, docs: list[data.Document], cfg: ProfileConfig | None = None, *, corpus: str = "",
               sample: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None) -> IDProfile:
    """ID of ``embed`` and every ``{kind}.{l}`` on the corpus and its shuffled control.

    ``sample``: corpus states already drawn as :func:`sample_states` would ({point: [≥ cfg.points, d]}, e.g. by
    the scan's one pass, from ``cfg.split``) and the [W, T] windows they came from; then only the control runs
    the model, on shuffled copies of those windows."""
    cfg = cfg or ProfileConfig()
    if cfg.points < 100:
        raise GeometryError(f"points={cfg.points} cannot give an ID estimate", "use at least 100 points")
    points = profile_points(model, cfg)
    per_window = 1 if cfg.position == "last" else cfg.per_window
    n_windows = -(-cfg.points // per_window) * 2  # headroom for windows with few kept tokens
    results, windows_used = [], []
    for shuffle in (False, True)[: 1 + cfg.control]:
        generator = torch.Generator().manual_seed(cfg.seed + shuffle)
        spec = data.WindowSpec(context=cfg.context, split=cfg.split, seed=cfg.seed)
        windows = data.token_windows(model, docs, spec) if sample is None else iter(sample[1])
        name = "shuffled control" if shuffle else "corpus"
        if sample is not None and not shuffle:
            states, used = _given(sample[0], cfg), len(sample[1])
        else:
            with bar(f"ID profile: {name} states", total=cfg.points, unit="states") as b:
                states, used = sample_states(model, windows, points, cfg, generator, shuffle, b, limit=n_windows)
        windows_used.append(used)
        with bar(f"ID profile: {name} estimates", total=len(points), unit="layers") as b:
            results.append(estimate(states, cfg, b))
    return IDProfile(model.name, corpus, cfg, results[0], results[1] if cfg.control else [], windows_used[0])


def profile_points(model, cfg: ProfileConfig) -> list[str]:
    """``embed`` and ``{cfg.kind}.{l}`` for every layer (each checked against the model)."""
    points = ["embed"] + [f"{cfg.kind}.{l}" for l in range(model.n_layers)]
    for p in points:
        model.resolve(p)
    return points


def _given(states: dict[str, torch.Tensor], cfg: ProfileConfig) -> dict[str, np.ndarray]:
    got = len(next(iter(states.values())))
    if got < cfg.points:
        raise GeometryError(f"the corpus gave {got} token states, fewer than the {cfg.points} asked for",
                            "lower --points or use a larger corpus")
    return {p: v[: cfg.points].float().numpy() for p, v in states.items()}


def plot(profile: IDProfile):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(-1, len(profile.corpus_ids) - 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    ax = axes[0]
    for ids, label, style in ((profile.corpus_ids, "corpus", "o-"), (profile.control_ids, "shuffled within window", "s--")):
        if not ids:
            continue
        d = np.array([r.twonn.d for r in ids])
        lo, hi = np.array([r.twonn.lo for r in ids]), np.array([r.twonn.hi for r in ids])
        ax.plot(x, d, style, ms=3, label=label)
        ax.fill_between(x, lo, hi, alpha=0.25)
    ax.set_xlabel("layer (−1 = embed)"), ax.set_ylabel("TwoNN ID"), ax.legend(fontsize=8)
    ax.set_title(f"intrinsic dimension of {profile.config.kind} (95% bootstrap CI)")
    ax = axes[1]
    for n in profile.config.ranks:
        ax.plot(x, [r.gride[n].d for r in profile.corpus_ids], "o-", ms=3, label=f"GRIDE n={n} (corpus)")
        if profile.control_ids:
            ax.plot(x, [r.gride[n].d for r in profile.control_ids], ":", color=ax.lines[-1].get_color(), label=f"n={n} shuffled")
    ax.set_xlabel("layer (−1 = embed)"), ax.set_ylabel("ID"), ax.set_title("ID across neighbourhood scale (GRIDE rank n)")
    ax.legend(fontsize=7, ncol=2)
    fig.text(0.5, -0.02, describe(profile.config, profile.windows), ha="center", fontsize=8)
    fig.tight_layout()
    return fig
