"""``llmri trace`` end to end: attribute, prune, score, validate, and write the graph files and viewer.

Output folder: ``attribution.safetensors`` (+ ``.json``: the full graph, reloadable with
:meth:`Graph.load`), ``<slug>.json`` (the pruned graph in the circuit-tracer / Neuronpedia schema),
``index.html`` (the offline viewer) and ``summary.json`` (scores, sizes, timings, validation).
Feature statistics for the viewer's feature panels are computed once per transcoder set and layer and
cached under ``<transcoders>/features/layer_<l>`` (``<transcoders>/features/clt`` for a CLT).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import data
from ..atomic import atomic_path, check_target, write_json
from ..errors import InterventionError, LlmriError
from ..features.stats import META_FILE, FeatureConfig, FeatureStats, Windows, collect, model_windows
from ..validate import bounded, check, check_choice
from . import export
from .attribution import AttributionConfig, Graph, attribute
from .intervene import FREEZE, validate
from .prune import PruneConfig, prune, scores
from .transcoders import Transcoders


@dataclass
class TraceConfig:
    """Everything ``llmri trace`` does besides the attribution itself."""

    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    """How much of the graph to compute."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """Pruning thresholds for the graph files."""
    validate_top: int = bounded(20, 0)
    """Validate the graph on this many of its most influential features; ≥ 0 (0: skip)."""
    validate_factor: float = bounded(0.0)
    """Intervention used for validation: activation × factor (0: ablation); any finite number."""
    validate_freeze: str = "attention"
    """What the validation's interventions hold fixed: attention patterns ("attention"), patterns and norm
    denominators ("all") or nothing ("none")."""
    feature_tokens: int = bounded(16_384, 0)
    """Corpus tokens for the feature panels' statistics; ≥ 0 (0: no feature panels)."""
    corpus: str = data.DEFAULT_CORPUS
    """Corpus for those statistics."""

    def __post_init__(self):
        check(self, LlmriError)
        check_choice("freeze mode", self.validate_freeze, FREEZE, InterventionError)


def slug_of(prompt: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48]
    return s or "graph"


def trace(model, tcs: Transcoders, prompt: str, out: str | Path, cfg: TraceConfig | None = None, *,
          transcoder_path: str | Path | None = None, slug: str | None = None) -> dict:
    """Trace ``prompt`` and write the output folder; returns the summary."""
    cfg = cfg or TraceConfig()
    out = Path(out)
    check_target(out, "trace")  # before the work: a trace replaces only an earlier trace
    slug = slug or slug_of(prompt)
    graph = attribute(model, tcs, prompt, cfg.attribution)
    return write_trace(model, tcs, graph, out, cfg, transcoder_path=transcoder_path, slug=slug)


def write_trace(model, tcs: Transcoders, graph: Graph, out: Path, cfg: TraceConfig, *,
                transcoder_path: str | Path | None, slug: str, feature_windows: Iterable[Windows] | None = None,
                supernodes: Sequence[Sequence[str]] = ()) -> dict:
    """Prune, score, validate, build the feature panels and write graph JSON, viewer and summary into ``out``.
    ``feature_windows``: batches holding every transcoder's input points for the panels' statistics (e.g. the
    scan's kept rows, :func:`~llmri.features.stats.row_windows`); None: a pass over ``cfg.corpus``.
    ``supernodes``: named groups (``[label, node ids…]``) offered in the viewer before the clustered
    suggestions, restricted to the nodes pruning keeps (a group with none left is dropped)."""
    from .viewer import write_viewer

    t0 = time.perf_counter()
    pruned = prune(graph, cfg.prune)
    sc = scores(graph)
    summary = summarise(graph, pruned, sc, model.tokenizer)
    if cfg.validate_top:
        v = validate(model, tcs, graph, top=cfg.validate_top, factor=cfg.validate_factor, freeze=cfg.validate_freeze,
                     influence=pruned.influence)
        summary["validation"] = {"features": len(v.nodes), "factor": v.factor, "freeze": v.freeze, "diverged": v.diverged,
                                 "pearson": _r(v.pearson), "spearman": _r(v.spearman),
                                 "predicted": [_r(x) for x in v.predicted],
                                 "measured": [_r(x) if math.isfinite(x) else None for x in v.measured],
                                 "nodes": [export.node_ids(graph)[i] for i in v.nodes]}
    graph.meta["scores"] = {"replacement": _r(sc.replacement), "completeness": _r(sc.completeness)}
    records, tokens = feature_records(model, tcs, graph, pruned, cfg, transcoder_path, feature_windows)
    labels = {nid: rec.get("label", "") for nid, rec in _by_node(graph, pruned, records).items()}
    gj = export.graph_json(graph, pruned, model.tokenizer, slug=slug, scan=getattr(model, "name", ""),
                           node_threshold=cfg.prune.node_threshold, labels=labels)
    kept = {n["node_id"] for n in gj["nodes"]}
    named = [[g[0], *kept_ids] for g in supernodes if (kept_ids := [i for i in g[1:] if i in kept])]
    suggested = named + export.suggest_supernodes(graph, pruned)
    summary["files"] = {"graph": f"{slug}.json", "viewer": "index.html", "attribution": "attribution.safetensors"}
    summary["seconds"] = {"attribution": graph.meta.get("seconds"), "rest": round(time.perf_counter() - t0, 2)}
    summary["config"] = asdict(cfg)
    with atomic_path(out, directory=True, kind="trace") as tmp:
        graph.save(tmp / "attribution.safetensors")
        write_json(tmp / f"{slug}.json", gj)
        write_viewer(tmp / "index.html", gj, features=records, tokens=tokens, suggested=suggested,
                     title=f"{getattr(model, 'name', '')} · {graph.prompt}")
        write_json(tmp / "summary.json", summary)
    return summary


def _r(x: float, digits: int = 4) -> float:
    return round(float(x), digits) if x == x else None  # NaN → null


def summarise(graph: Graph, pruned, sc, tokenizer) -> dict:
    nz = int((graph.adjacency != 0).sum())
    return {
        "prompt": graph.prompt, "tokens": graph.n_pos,
        "top_logits": [[tokenizer.decode([t]), _r(p)] for t, p in zip(graph.logit_tokens.tolist(), graph.logit_probs.tolist())],
        "replacement_score": _r(sc.replacement), "completeness_score": _r(sc.completeness),
        "active_features": graph.n_active, "feature_nodes": graph.n_features,
        "nodes": int(graph.adjacency.shape[0]), "edges": nz,
        "pruned_nodes": int(pruned.node_mask.sum()), "pruned_features": int(pruned.node_mask[: graph.n_features].sum()),
        "pruned_edges": int(pruned.edge_mask.sum()),
    }


def _by_node(graph: Graph, pruned, records: dict) -> dict:
    out = {}
    for i in pruned.node_mask[: graph.n_features].nonzero().flatten().tolist():
        l, p, f = graph.features[i].tolist()
        if f"{l}_{f}" in records:
            out[f"{l}_{f}_{p}"] = records[f"{l}_{f}"]
    return out


def feature_records(model, tcs: Transcoders, graph: Graph, pruned, cfg: TraceConfig,
                    transcoder_path: str | Path | None, windows: Iterable[Windows] | None = None) -> tuple[dict, dict]:
    """Dashboard records ``{"layer_feature": record}`` of the kept feature nodes, and the token texts they use."""
    from ..features.autointerp import cheap_labels
    from ..features.dashboard import _record_tokens, feature_record, token_strings

    if not cfg.feature_tokens or graph.n_features == 0:
        return {}, {}
    kept = pruned.node_mask[: graph.n_features].nonzero().flatten()
    by_layer: dict[int, set[int]] = {}
    for l, _, f in graph.features[kept].tolist():
        by_layer.setdefault(l, set()).add(f)
    stats = layer_stats(model, tcs, by_layer, cfg, transcoder_path, windows)
    records, ids, label_cache = {}, set(), {}
    for l, feats in by_layer.items():
        s, offset = stats[l]
        labels = label_cache.setdefault(id(s), cheap_labels(s, model.tokenizer))
        for f in feats:
            rec = feature_record(s, offset + f, labels, top=6, groups=2, per_group=2)
            records[f"{l}_{f}"] = rec
            ids |= _record_tokens(rec)
    return records, token_strings(model.tokenizer, ids)


def layer_stats(model, tcs: Transcoders, by_layer: dict[int, set[int]], cfg: TraceConfig,
                transcoder_path: str | Path | None, windows: Iterable[Windows] | None = None
                ) -> dict[int, tuple[FeatureStats, int]]:
    """Feature statistics for the layers of ``by_layer`` ({layer: features the panels show}) and the offset of
    each layer's features in them: one statistics pass per dictionary over ``windows`` (None: the model over
    ``cfg.corpus``). With a ``transcoder_path`` they are complete and cached on disk (``features/clt`` for a CLT,
    ``features/layer_{l}`` for layer l's transcoder); without, one-off, with logit effects of the shown features only."""
    fc = FeatureConfig(tokens=cfg.feature_tokens, top_k=10, samples=12, cooc_tokens=min(cfg.feature_tokens, 16_384))
    root = Path(transcoder_path) / "features" if transcoder_path else None
    groups: dict[str, tuple] = {}  # cache folder → (dictionary, the layers asked for)
    for l in sorted(by_layer):
        d, _ = tcs.blocks[l]
        groups.setdefault("clt" if d.n_blocks > 1 else f"layer_{l}", (d, []))[1].append(l)
    offset = {l: tcs.blocks[l][1] * tcs.n_features for l in by_layer}
    stats = {name: _cached(root / name if root else None) for name in groups}
    todo = [name for name, s in stats.items() if s is None]
    if todo:  # one model pass for all of them
        if windows is None:
            windows = model_windows(model, data.load_corpus(cfg.corpus),
                                    [p for n in todo for p in groups[n][0].cfg.in_points], fc)
        windows = list(windows) if len(todo) > 1 else windows
        for name in todo:
            d, ls = groups[name]
            shown = None if root else torch.tensor(sorted({offset[l] + f for l in ls for f in by_layer[l]}))
            stats[name] = _compute(model, d, fc, cfg, root / name if root else None, windows, shown)
    return {l: (stats[name], offset[l]) for name, (_, ls) in groups.items() for l in ls}


def _cached(folder: Path | None) -> FeatureStats | None:
    return FeatureStats.load(folder) if folder is not None and (folder / META_FILE).exists() else None


def _compute(model, d, fc: FeatureConfig, cfg: TraceConfig, folder: Path | None, windows, shown) -> FeatureStats:
    with torch.no_grad():
        s = collect(d, iter(windows), fc, model=model, meta={"corpus": cfg.corpus, "model": model.name},
                    logit_features=shown)
    if folder is not None:
        s.save(folder)
    return s
