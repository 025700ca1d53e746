"""``llmri scan``: the MRI report of a model on a corpus.

The scan is a pipeline of :class:`~llmri.stages.Stage` s (:data:`STAGES`): each declares what it needs from
the one model pass over the corpus, :func:`~llmri.stages.capture` runs that pass once for all of them, and
each section then receives its data (and what the sections it ``uses`` handed on) and returns its part of
the report. A capability adds a view by appending a stage; its settings are one nested config here.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from markupsafe import Markup

from . import data, report
from .atomic import check_target
from .circuits.scan_section import STAGE as CIRCUITS
from .circuits.scan_section import CircuitSectionConfig
from .dictionaries.scan_section import STAGE as DICTIONARIES
from .dictionaries.scan_section import SaeSectionConfig
from .errors import LlmriError
from .features.scan_section import STAGE as FEATURES
from .geometry.scan_section import STAGE as GEOMETRY
from .geometry.scan_section import GeometrySectionConfig
from .model import DEFAULT_MODEL, Model, load_model
from .progress import say
from .report import Section
from .safety.scan_section import INSIDE as SAFETY_INSIDE
from .safety.scan_section import STAGE as SAFETY
from .safety.scan_section import SafetySectionConfig
from .unlearning.scan_section import UNLEARNING
from .stages import Inputs, Need, Output, PassConfig, Stage, capture
from .validate import bounded, check


@dataclass
class HeatmapConfig:
    """The layer × token section."""

    passages: int = bounded(4, 1)
    """Corpus passages shown as layer × token heatmaps; ≥ 1."""
    passage_tokens: int = bounded(40, 1)
    """Tokens per heatmap passage (after the document-start token); ≥ 1."""
    chat_prompt: str = "Explain in two sentences why the sky is blue."
    """A user turn shown through the chat template (plain text for base models)."""

    def __post_init__(self):
        check(self, LlmriError)


@dataclass
class ScanConfig:
    """Settings of ``llmri scan`` (defaults: the bundled model and corpus, < 5 min on 2 CPU cores)."""

    model: str = DEFAULT_MODEL
    """Model spec: bundled name, HF folder, .gguf file or hub id."""
    corpus: str = data.DEFAULT_CORPUS
    """Corpus spec (bundled name or path); statistics and training rows come from its train split, passages and
    held-out metrics from its eval split."""
    out: str = "llmri-report"
    """Output folder; ``index.html`` and ``scan.json`` are written there (replacing an older report)."""
    dtype: str = "float32"
    """Model dtype."""
    device: str = "cpu"
    """Model device (cpu, cuda, auto)."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens left out of the statistics, training rows and samples (position 0, special tokens, norm outliers)."""
    stats: PassConfig = field(default_factory=PassConfig)
    """The one model pass: per-layer statistics and the rows the quick SAEs and transcoders train on."""
    heatmaps: HeatmapConfig = field(default_factory=HeatmapConfig)
    """The layer × token heatmaps."""
    saes: SaeSectionConfig = field(default_factory=SaeSectionConfig)
    """The quick SAEs (and the features section that reads them)."""
    circuits: CircuitSectionConfig = field(default_factory=CircuitSectionConfig)
    """The traced prompt and its transcoders."""
    geometry: GeometrySectionConfig = field(default_factory=GeometrySectionConfig)
    """Intrinsic dimension, diffusion map and steering."""
    safety: SafetySectionConfig = field(default_factory=SafetySectionConfig)
    """A model organism's card and the ASR of a few attacks on it and on the scanned model (skipped without one)."""
    unlearning: tuple[str, ...] = ()
    """Folders of ``llmri unlearn`` runs whose table and Pareto plot the report shows (skipped without any)."""


def scan(config: ScanConfig | None = None, *, model: Model | None = None) -> Path:
    """Build the report; returns the path of ``index.html``."""
    config = config or ScanConfig()
    start = time.perf_counter()
    model = model or load_model(config.model, dtype=config.dtype, device=config.device)
    docs = data.load_corpus(config.corpus)
    out = Path(config.out)
    check_target(out, "report")  # before the work: the report replaces only an earlier report
    out.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    needs = {s.name: n for s in STAGES if (n := s.needs(config, model)) is not None}
    t0 = time.perf_counter()
    captured = capture(model, docs, needs, config.stats, config.exclusion)
    timings["pass"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.artefacts-", dir=out.parent) as staging:
        sections, products = [], {}
        for stage in STAGES:
            t0 = time.perf_counter()
            inp = Inputs(model, docs, config, Path(staging), captured.get(stage.name),
                         {u: products[u] for u in stage.uses if u in products})
            result = stage.run(inp)
            section, products[stage.name] = result if isinstance(result, Output) else (result, None)
            if section is not None:
                sections.append(section)
            timings[stage.name] = round(time.perf_counter() - t0, 2)
        wall = time.perf_counter() - start
        footer = (f"llmri scan · model {model.name} · corpus {config.corpus} · {wall:.0f} s on "
                  f"{torch.get_num_threads()} thread(s), {model.device}")
        path = report.render(f"llmri MRI — {model.name}", sections, config.out, footer=footer, artefacts=Path(staging),
                             extra={"config": asdict(config), "wall_seconds": round(wall, 1), "timings": timings})
    say(f"llmri: report written to {path} ({wall:.0f} s)")
    return path


# ---------------------------------------------------------------- model card


def model_card_section(inp: Inputs) -> Section:
    card = inp.model.card()
    rows = [(k.replace("_", " "), card[k]) for k in card if k not in ("hook_points", "hook_points_per_layer")]
    per_layer = ", ".join(f"{k}.{{0..{inp.model.n_layers - 1}}}" for k in card["hook_points_per_layer"])
    html = report.table(rows) + Markup(
        "<h3>Hook points</h3><p><code>embed</code>, <code>{}</code>, <code>final_norm</code>, <code>logits</code> "
        "— {} in all. TransformerLens names (<code>blocks.5.hook_resid_post</code>) and HF module paths "
        "(<code>layers.5.mlp</code>) are accepted as aliases.</p>"
    ).format(per_layer, len(card["hook_points"]))
    return report.Section("card", "Model card", html, card)


# ---------------------------------------------------------------- layer × token


def _passages(inp: Inputs) -> list[tuple[str, list[int]]]:
    """Evenly spaced eval documents; each passage starts at a paragraph a third of the way in."""
    cfg, model = inp.config.heatmaps, inp.model
    docs = data.split_documents(inp.docs, "eval")
    picks = [docs[round(i * (len(docs) - 1) / max(cfg.passages - 1, 1))] for i in range(min(cfg.passages, len(docs)))]
    out = []
    for doc in picks:
        cut = doc.text.find("\n\n", len(doc.text) // 3)
        text = doc.text[cut + 2 if cut >= 0 else 0 :]
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][: cfg.passage_tokens]
        out.append((doc.id, [model.bos_id, *ids]))
    return out


def layer_token_section(inp: Inputs) -> Section:
    model, chat = inp.model, inp.config.heatmaps.chat_prompt
    L = model.n_layers
    inputs = _passages(inp) + [("chat: " + chat, model.chat_ids(chat))]
    points = [f"{k}.{l}" for l in range(L) for k in ("resid_post", "attn_out", "mlp_out")] + ["embed"]
    parts, summary = [], {}
    layers_desc = [f"L{l}" for l in reversed(range(L))]
    for name, ids in inputs:
        got = model.capture(torch.tensor([ids]), points)
        norms = {p: got[p][0].float().norm(dim=-1).cpu() for p in points}
        toks = model.token_strings(ids)
        special = [j for j, t in enumerate(ids) if j == 0 or t in model.special_ids]
        resid = torch.stack([norms[f"resid_post.{l}"] for l in reversed(range(L))] + [norms["embed"]])
        attn = torch.stack([norms[f"attn_out.{l}"] for l in reversed(range(L))])
        mlp = torch.stack([norms[f"mlp_out.{l}"] for l in reversed(range(L))])
        summary[name] = {"tokens": toks, "resid_norm": resid.tolist()}
        parts.append(Markup("<h3>{}</h3>").format(name))
        parts.append(report.heatmap(resid.numpy(), layers_desc + ["embed"], toks, caption="residual-stream norm ‖resid_post‖ per layer (top = last layer)", dim_cols=special))
        parts.append(Markup("<details><summary>attention and MLP write norms</summary>{}{}</details>").format(
            report.heatmap(attn.numpy(), layers_desc, toks, caption="‖attn_out‖ (what attention adds to the stream)", dim_cols=special),
            report.heatmap(mlp.numpy(), layers_desc, toks, caption="‖mlp_out‖ (what the MLP adds to the stream)", dim_cols=special),
        ))
    intro = report.paragraph(
        f"Norms at every layer for {len(inputs) - 1} passages from the eval split of '{inp.config.corpus}' and one chat prompt. "
        "Struck-through tokens (position 0 and special tokens) are attention sinks: their norms are orders of "
        "magnitude above the rest, which is why they are excluded from statistics and dictionary training. "
        "Hover a cell for its value."
    )
    return report.Section("layers", "Layer × token", intro + Markup("").join(parts), summary)


# ---------------------------------------------------------------- statistics across depth


KINDS = ("resid_post", "attn_out", "mlp_out")


def depth_needs(config: ScanConfig, model: Model) -> Need:
    return Need(stats=tuple(f"{k}.{l}" for l in range(model.n_layers) for k in KINDS))


def depth_section(inp: Inputs) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, model, stats = inp.config, inp.model, inp.captured.stats
    L = model.n_layers
    kinds = KINDS
    layers = list(range(L))

    def series(kind: str, attr: str) -> list[float]:
        return [getattr(stats[f"{kind}.{l}"], attr) for l in layers]

    fig, axes = plt.subplots(1, 4, figsize=(19, 3.8))
    ax = axes[0]
    mean, std = series("resid_post", "mean_norm"), series("resid_post", "std_norm")
    ax.plot(layers, mean, "o-", ms=3, label="kept tokens (mean)")
    ax.fill_between(layers, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.plot(layers, series("resid_post", "excluded_mean_norm"), "s--", ms=3, color="tab:red", label="excluded (sinks)")
    ax.set_yscale("log"), ax.set_xlabel("layer"), ax.set_ylabel("‖resid_post‖"), ax.set_title("residual norm"), ax.legend(fontsize=8)
    ax = axes[1]
    for kind in ("attn_out", "mlp_out"):
        ax.plot(layers, series(kind, "mean_norm"), "o-", ms=3, label=kind)
    ax.set_yscale("log"), ax.set_xlabel("layer"), ax.set_ylabel("mean norm"), ax.set_title("what each block writes"), ax.legend(fontsize=8)
    ax = axes[2]
    for kind in kinds:
        ax.plot(layers, series(kind, "kurtosis"), "o-", ms=3, label=kind)
    ax.set_yscale("symlog"), ax.set_xlabel("layer"), ax.set_ylabel("excess kurtosis"), ax.set_title("outlier features (kurtosis)"), ax.legend(fontsize=8)
    ax = axes[3]
    resid = [stats[f"resid_post.{l}"] for l in layers]
    dims = sorted({d for r in resid for d, _ in r.top_dims[:2]})
    for d in dims:
        ax.plot(layers, [r.mean_abs[d] / sorted(r.mean_abs)[len(r.mean_abs) // 2] for r in resid], "o-", ms=3, label=f"dim {d}")
    ax.set_xlabel("layer"), ax.set_ylabel("mean |x_i| / median dim"), ax.set_title("outlier dimensions of resid_post")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()

    s0 = stats[f"resid_post.{L // 2}"]
    rows = []
    for l in layers:
        r = stats[f"resid_post.{l}"]
        rows.append((l, r.mean_norm, r.excluded_mean_norm, r.kurtosis, stats[f"attn_out.{l}"].mean_norm,
                     stats[f"mlp_out.{l}"].mean_norm, ", ".join(f"{d} ({x:.0f}×)" for d, x in r.top_dims[:3])))
    note = report.paragraph(
        f"Statistics over {s0.n_tokens:,} kept tokens of the {cfg.stats.split} split of '{cfg.corpus}' ({cfg.exclusion.describe()}; "
        f"{s0.n_excluded:,} excluded at layer {L // 2}). Kurtosis is the excess kurtosis of a token's {model.d_model} "
        "coordinates averaged over tokens; outlier dimensions are those with the largest mean |x_i| relative to the "
        "median dimension."
    )
    html = note + report.figure(fig, "per-layer statistics") + report.table(
        rows, ["layer", "mean ‖resid‖", "sink ‖resid‖", "kurtosis", "‖attn_out‖", "‖mlp_out‖", "top outlier dims (× median)"], cls="data"
    )
    summary = {p: {k: v for k, v in asdict(s).items() if k != "mean_abs"} for p, s in stats.items()}
    summary["exclusion"] = cfg.exclusion.describe()
    return report.Section("depth", "Across depth", html, summary)


STAGES: list[Stage] = [
    Stage("card", model_card_section), Stage("layers", layer_token_section), Stage("depth", depth_section, depth_needs),
    DICTIONARIES, FEATURES, CIRCUITS, GEOMETRY, SAFETY, SAFETY_INSIDE, UNLEARNING,
]
"""The report's sections in page order; each declares its needs from the one pass (:mod:`llmri.stages`)."""
