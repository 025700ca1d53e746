"""Folder conventions behind ``llmri dashboard`` / ``llmri interp``: a dictionary folder ``D`` gets
``D/features/`` (statistics and ``explanations.json``), ``D/dashboard/`` (the site) and ``D/neuronpedia/``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .. import data
from ..atomic import mark, write_json
from ..dictionaries.config import DictionaryError
from .stats import META_FILE, FeatureConfig, FeatureStats, feature_stats

EXPLANATIONS = "explanations.json"


def load_dictionary(path: str | Path, device="cpu"):
    """One dictionary from a folder (a per-layer circuit-tracer set must be opened layer by layer)."""
    from ..dictionaries import load

    d = load(path, device=device)
    if isinstance(d, list):
        raise DictionaryError(f"{path} holds {len(d)} dictionaries (a transcoder set)",
                              "point at one of them (llmri train writes one folder per dictionary)")
    return d.eval()


def model_spec(d, given: str | None) -> str:
    """The model to run: the one asked for, else the one the dictionary was trained on, else the default."""
    from ..model import DEFAULT_MODEL

    return given or d.cfg.model_name or DEFAULT_MODEL


def stats_folder(path: str | Path) -> Path:
    return Path(path) / "features"


def _same(meta: dict, cfg: FeatureConfig, corpus: str, model_name: str) -> bool:
    want = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k != "exclusion"}))
    return (meta.get("config") == want and meta.get("corpus") == corpus and meta.get("model") == model_name
            and meta.get("exclusion") == cfg.exclusion.describe())


def ensure_stats(model, d, path: str | Path, cfg: FeatureConfig, corpus: str = data.DEFAULT_CORPUS,
                 recompute: bool = False, any_settings: bool = False) -> FeatureStats:
    """Statistics saved next to the dictionary, recomputed when missing or computed with other settings
    (``any_settings``: reuse whatever is saved)."""
    folder = stats_folder(path)
    if not recompute and (folder / META_FILE).exists():
        stats = FeatureStats.load(folder)
        if any_settings or _same(stats.meta, cfg, corpus, model.name):
            return stats
    stats = feature_stats(model, d, data.load_corpus(corpus), cfg, meta={"corpus": corpus})
    explanations = load_explanations(path)
    stats.save(folder)
    if explanations:  # the saved statistics replaced the folder; keep explanations of the same dictionary
        write_json(folder / EXPLANATIONS, explanations)
        mark(folder, "features", EXPLANATIONS)
    return stats


def load_explanations(path: str | Path) -> dict | None:
    f = stats_folder(path) / EXPLANATIONS
    return json.loads(f.read_text()) if f.exists() else None


def save_explanations(path: str | Path, explanations: dict) -> Path:
    merged = {**(load_explanations(path) or {}), **explanations}
    out = write_json(stats_folder(path) / EXPLANATIONS, merged)
    mark(stats_folder(path), "features", EXPLANATIONS)
    return out
