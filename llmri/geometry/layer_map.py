"""Diffusion map of one layer's token states, with the metadata to colour it by: position in the window,
source document, and membership of a concept set.

States: ``per_document`` token states from each of ``documents`` documents of the corpus's eval split
(128-token windows of that document alone, ``per_window`` random kept positions per window), plus every kept
token of two concept sentence sets (bundled: sentences about the sea vs. other topics). Exact duplicate
states are dropped before the map is fitted (they would form components of their own).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.numpy import save_file

from .. import data
from ..atomic import atomic_path, write_figure, write_json
from ..errors import GeometryError
from ..validate import bounded, check, check_choice
from .diffusion import DiffusionConfig, DiffusionMap, fit
from .steer import read_lines


NORMALISE = ("zscore", "unit", "none")


@dataclass
class LayerMapConfig:
    """Settings of ``llmri geometry diffusion``."""

    layer: int | None = bounded(None, 0, none=True)
    """Layer mapped (None: the middle one); ≥ 0."""
    kind: str = "resid_post"
    """Hook-point kind."""
    documents: int = bounded(8, 1)
    """Eval-split documents sampled (evenly spaced by id); ≥ 1."""
    per_document: int = bounded(192, 1)
    """Token states per document; ≥ 1."""
    per_window: int = bounded(16, 1)
    """Random kept positions per 128-token window; ≥ 1."""
    concepts: tuple[str, str] = ("sea", "other")
    """Two concept sentence sets (bundled names or files, one sentence per line); () skips them."""
    normalise: str = "zscore"
    """Before the map: ``zscore`` (each coordinate to zero mean, unit variance: the few massive residual
    dimensions otherwise dominate every distance), ``unit`` (rows to unit norm: cosine geometry) or ``none``."""
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(n_components=6))
    """The diffusion map's settings."""
    seed: int = bounded(0, 0)
    """Seeds position sampling; ≥ 0."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens never sampled."""

    def __post_init__(self):
        check(self, GeometryError)
        check_choice("normalisation", self.normalise, NORMALISE, GeometryError)


class LayerStates(NamedTuple):
    X: np.ndarray
    """[n, d] states."""
    position: np.ndarray
    """[n] position in the window (concept sentences: in the sentence)."""
    document: np.ndarray
    """[n] document index (−1 for concept sentences)."""
    concept: np.ndarray
    """[n] 0 corpus, 1 first concept set, 2 second."""
    names: list[str]
    """Document ids."""


def layer_states(model, docs: list[data.Document], point: str, cfg: LayerMapConfig) -> LayerStates:
    gen = torch.Generator().manual_seed(cfg.seed)
    pool = sorted(data.split_documents(docs, "eval"), key=lambda d: d.id)
    if len(pool) < cfg.documents:
        pool = sorted(docs, key=lambda d: d.id)
    picks = [pool[round(i * (len(pool) - 1) / max(cfg.documents - 1, 1))] for i in range(min(cfg.documents, len(pool)))]
    X, pos, doc, con = [], [], [], []
    for j, d in enumerate(picks):
        got_n = 0  # a document shorter than one window gives no batch
        for kb in data.kept_activations(model, [d], [point], windows=data.WindowSpec(context=128, split="all"),
                                        batch_size=16, exclusion=cfg.exclusion):
            acts, kept = kb.acts[point], kb.keep.cpu()
            for w in range(len(kb.tokens)):
                p = kept[w].nonzero().flatten()
                p = p[torch.randperm(len(p), generator=gen)[: min(cfg.per_window, cfg.per_document - got_n)]]
                X.append(acts[w, p.to(acts.device)].float().cpu())
                pos.append(p), doc.append(torch.full_like(p, j)), con.append(torch.zeros_like(p))
                got_n += len(p)
            if got_n >= cfg.per_document:
                break
    for c, spec in enumerate(cfg.concepts, start=1):
        b = model.tokenize(read_lines(spec))
        acts = model.capture(b.input_ids.to(model.device), [point], attention_mask=b.attention_mask.to(model.device))[point]
        keep = data.token_mask(b.input_ids, model.special_ids, cfg.exclusion) & b.attention_mask.bool()
        rows, cols = keep.nonzero(as_tuple=True)
        X.append(acts[keep.to(acts.device)].float().cpu())
        pos.append(cols), doc.append(torch.full_like(cols, -1)), con.append(torch.full_like(cols, c))
    return LayerStates(torch.cat(X).numpy(), torch.cat(pos).numpy(), torch.cat(doc).numpy(), torch.cat(con).numpy(),
                       [d.id for d in picks])


@dataclass
class LayerMap:
    model: str
    point: str
    config: LayerMapConfig
    states: LayerStates
    """Metadata rows aligned with the map (duplicates removed)."""
    dmap: DiffusionMap
    duplicates: int

    def summary(self) -> dict:
        cfg = asdict(self.config)
        return {"model": self.model, "point": self.point, "config": cfg, "points": len(self.states.X),
                "duplicates_dropped": self.duplicates, "documents": self.states.names,
                "eigenvalues": self.dmap.evals.tolist(),
                "spearman_position": _spearman_best(self.dmap.coordinates(), self.states.position),
                "concept_separation_auc": _concept_auc(self.dmap.coordinates(), self.states.concept)}

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        s = self.states
        with atomic_path(out, directory=True, kind="diffusion map") as tmp:
            save_file({"coordinates": self.dmap.coordinates().astype(np.float32), "position": s.position.astype(np.int64),
                       "document": s.document.astype(np.int64), "concept": s.concept.astype(np.int64)},
                      str(tmp / "coordinates.safetensors"))
            write_json(tmp / "layer_map.json", self.summary())
            write_figure(tmp / "layer_map.png", plot(self))
        return out


def _spearman_best(coords: np.ndarray, values: np.ndarray) -> dict:
    """|Spearman| of each of the first diffusion coordinates with a metadata value (corpus rows)."""
    from scipy.stats import spearmanr

    return {f"psi{j + 1}": round(abs(float(spearmanr(coords[:, j], values).statistic)), 3) for j in range(min(3, coords.shape[1]))}


def _concept_auc(coords: np.ndarray, concept: np.ndarray) -> dict:
    """How well each of the first coordinates separates the two concept sets (ROC AUC, symmetric)."""
    from sklearn.metrics import roc_auc_score

    sel = concept > 0
    if len(set(concept[sel])) < 2:
        return {}
    y = concept[sel] == 1
    return {f"psi{j + 1}": round(max(a := roc_auc_score(y, coords[sel, j]), 1 - a), 3) for j in range(min(3, coords.shape[1]))}


def layer_map(model, docs: list[data.Document], cfg: LayerMapConfig | None = None) -> LayerMap:
    cfg = cfg or LayerMapConfig()
    layer = model.n_layers // 2 if cfg.layer is None else cfg.layer
    if not 0 <= layer < model.n_layers:
        raise GeometryError(f"layer {layer} does not exist in {model.name}", f"choose 0..{model.n_layers - 1}")
    point = model.resolve(f"{cfg.kind}.{layer}")
    with torch.no_grad():
        states = layer_states(model, docs, point, cfg)
    _, first = np.unique(states.X, axis=0, return_index=True)
    first = np.sort(first)
    kept = LayerStates(*(a[first] for a in states[:4]), states.names)
    return LayerMap(model.name, point, cfg, kept, fit(normalised(kept.X, cfg.normalise), cfg.diffusion),
                    len(states.X) - len(first))


def normalised(X: np.ndarray, how: str) -> np.ndarray:
    if how == "zscore":
        return (X - X.mean(0)) / np.maximum(X.std(0), 1e-8)
    if how == "unit":
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if how == "none":
        return X
    raise GeometryError(f"unknown normalisation '{how}'", "use zscore, unit or none")


def plot(m: LayerMap):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = m.dmap.coordinates()
    s = m.states
    corpus = s.concept == 0
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    sc = axes[0].scatter(c[corpus, 0], c[corpus, 1], c=s.position[corpus], s=5, cmap="viridis")
    fig.colorbar(sc, ax=axes[0], label="position in window")
    axes[0].set_title("coloured by position")
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(s.names):
        sel = s.document == j
        axes[1].scatter(c[sel, 0], c[sel, 1], s=5, color=cmap(j % 10), label=name[:28])
    axes[1].legend(fontsize=6, markerscale=2), axes[1].set_title("coloured by document")
    axes[2].scatter(c[corpus, 0], c[corpus, 1], s=4, color="lightgrey", label="corpus")
    for k, (name, colour) in enumerate(zip(m.config.concepts, ("tab:blue", "tab:orange")), start=1):
        sel = s.concept == k
        axes[2].scatter(c[sel, 0], c[sel, 1], s=6, color=colour, label=f"concept set '{Path(name).stem}'")
    axes[2].legend(fontsize=7, markerscale=2), axes[2].set_title("concept sets")
    for ax in axes:
        ax.set_xlabel("ψ₁ (diffusion coordinate 1)"), ax.set_ylabel("ψ₂")
    d = m.config.diffusion
    fig.suptitle(f"diffusion map of {m.point} ({len(s.X):,} states, {m.config.normalise}-normalised; {d.bandwidth} bandwidth, k={d.n_neighbors}, "
                 f"α={d.alpha:g}, t={d.t:g}; λ = {', '.join(f'{x:.3f}' for x in m.dmap.evals[:4])})", fontsize=9)
    fig.tight_layout()
    return fig
