"""``llmri scan``: the MRI report of a model on a corpus.

The report is a list of section builders run in order over one :class:`ScanContext`; a capability adds
its view by appending a builder to :data:`SECTIONS` (each gets the loaded model, the corpus and the config,
and returns a :class:`~llmri.report.Section`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from markupsafe import Markup

from . import data, report
from .atomic import check_target
from .errors import LlmriError
from .model import DEFAULT_MODEL, Model, load_model
from .progress import bar, say
from .report import Section
from .stats import PointStats, RunningStats
from .validate import bounded, check, check_number


@dataclass
class ScanConfig:
    """Settings of ``llmri scan`` (defaults: the bundled model and corpus, < 5 min on 2 CPU cores)."""

    model: str = DEFAULT_MODEL
    """Model spec: bundled name, HF folder, .gguf file or hub id."""
    corpus: str = data.DEFAULT_CORPUS
    """Corpus spec (bundled name or path); passages and statistics come from its eval split."""
    out: str = "llmri-report"
    """Output folder; ``index.html`` and ``scan.json`` are written there (replacing an older report)."""
    passages: int = bounded(4, 1)
    """Corpus passages shown as layer × token heatmaps; ≥ 1."""
    passage_tokens: int = bounded(40, 1)
    """Tokens per heatmap passage (after the document-start token); ≥ 1."""
    chat_prompt: str = "Explain in two sentences why the sky is blue."
    """A user turn shown through the chat template (plain text for base models)."""
    stats_tokens: int = bounded(32_768, 1)
    """Tokens of the train split over which per-layer statistics are computed (the same pass captures the
    activations the quick SAEs train on); ≥ 1."""
    context: int = bounded(128, 2)
    """Window length for the statistics; ≥ 2."""
    batch_size: int = bounded(16, 1)
    """Windows per forward pass; ≥ 1."""
    dtype: str = "float32"
    """Model dtype."""
    device: str = "cpu"
    """Model device (cpu, cuda, auto)."""
    exclusion: data.Exclusion = field(default_factory=data.Exclusion)
    """Tokens left out of the statistics (position 0, special tokens, norm outliers)."""
    sae_layers: str = "auto"
    """Layers that get a quick TopK SAE on resid_post ("auto": five spread over depth; "" skips)."""
    sae_tokens: int = bounded(65_536, 0)
    """Training tokens of those SAEs: they cycle over the activations of the statistics pass (65,536 over
    the default 32,768 = two epochs), so the scan runs the model over the corpus once; ≥ 0 (0 skips them)."""
    sae_expansion: float = bounded(4.0, 0, lo_open=True)
    """Their width as a multiple of d_model; > 0."""
    sae_k: int = bounded(32, 1)
    """Their k; ≥ 1."""
    sae_eval_tokens: int = bounded(8_192, 0)
    """Held-out tokens for their NMSE / L0 / dead %; ≥ 0 (0: skip)."""
    sae_ce_tokens: int = bounded(2_048, 0)
    """Held-out tokens for their CE loss recovered; ≥ 0 (0: skip)."""
    circuit_prompt: str = "The capital of France is"
    """Prompt traced in the circuits section ("" skips the section)."""
    transcoders: str = ""
    """Transcoders for every layer (run folder, CLT or circuit-tracer export) for the circuits section; ""
    trains quick ones on the statistics pass's first ``circuit_tokens`` kept tokens."""
    circuit_tokens: int = bounded(16_384, 0)
    """Kept tokens of the statistics pass (fp16 mlp_in/mlp_out of every layer) the quick transcoders train on;
    ≥ 0 (0: no quick transcoders, so no circuits section unless ``transcoders`` is given)."""
    circuit_expansion: float = bounded(2.0, 0, lo_open=True)
    """Quick transcoders' width as a multiple of d_model; > 0."""
    circuit_k: int = bounded(16, 1)
    """Quick transcoders' k; ≥ 1."""
    circuit_features: int = bounded(1024, 1)
    """Feature nodes with computed inputs in the traced graph; ≥ 1."""
    geometry_points: int = bounded(2048, 0)
    """Token states per layer for the intrinsic-dimension profile (and as many for its shuffled control); 0 skips
    the geometry section, otherwise ≥ 100."""
    geometry_per_window: int = bounded(16, 1)
    """Random kept positions sampled per window for that profile; ≥ 1."""
    steer_scales: tuple[float, ...] = (0.0, 0.2, 0.5)
    """Step sizes of the steering comparison (× median state norm); each finite and ≥ 0."""
    steer_prompts: int = bounded(12, 1)
    """Bundled prompts steered per setting; ≥ 1."""
    steer_tokens: int = bounded(16, 1)
    """Greedy tokens per prompt; ≥ 1."""
    steer_reference_tokens: int = bounded(4096, 1)
    """Corpus tokens whose states form the reference manifold; ≥ 1."""

    def __post_init__(self):
        check(self, LlmriError)
        if 0 < self.geometry_points < 100:
            raise LlmriError(f"ScanConfig.geometry_points must be 0 or ≥ 100, got {self.geometry_points}",
                             "use at least 100 token states per layer, or 0 to skip the geometry section")
        for s in self.steer_scales:
            check_number("ScanConfig.steer_scales entry", s, 0, error=LlmriError)


@dataclass
class ScanContext:
    """What every section builder gets."""

    config: ScanConfig
    model: Model
    docs: list[data.Document]
    artefacts: Path
    """Staging folder: files a section puts here end up in the report folder."""
    timings: dict[str, float] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    """Kept activations captured by the statistics pass for the dictionaries section ({point: [rows, d]})."""
    windows: tuple[torch.Tensor, torch.Tensor] | None = None
    """The windows those rows come from: (token ids [W, T], kept mask [W, T])."""
    dictionaries: list = field(default_factory=list)
    """Dictionaries trained by the dictionaries section (in memory, for the features section)."""
    extra_rows: dict[str, torch.Tensor] = field(default_factory=dict)
    """fp16 kept rows of further points the statistics pass keeps for later sections (the quick transcoders')."""


def scan(config: ScanConfig | None = None, *, model: Model | None = None) -> Path:
    """Build the report; returns the path of ``index.html``."""
    config = config or ScanConfig()
    start = time.perf_counter()
    model = model or load_model(config.model, dtype=config.dtype, device=config.device)
    docs = data.load_corpus(config.corpus)
    out = Path(config.out)
    check_target(out, "report")  # before the work: the report replaces only an earlier report
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.artefacts-", dir=out.parent) as staging:
        ctx = ScanContext(config, model, docs, Path(staging))
        sections = []
        for builder in SECTIONS:
            t0 = time.perf_counter()
            section = builder(ctx)
            if section is not None:
                sections.append(section)
            ctx.timings[builder.__name__] = round(time.perf_counter() - t0, 2)
        wall = time.perf_counter() - start
        footer = (f"llmri scan · model {model.name} · corpus {config.corpus} · {wall:.0f} s on "
                  f"{torch.get_num_threads()} thread(s), {model.device}")
        path = report.render(f"llmri MRI — {model.name}", sections, config.out, footer=footer, artefacts=Path(staging),
                             extra={"config": asdict(config), "wall_seconds": round(wall, 1), "timings": ctx.timings})
    say(f"llmri: report written to {path} ({wall:.0f} s)")
    return path


# ---------------------------------------------------------------- model card


def model_card_section(ctx: ScanContext) -> Section:
    card = ctx.model.card()
    rows = [(k.replace("_", " "), card[k]) for k in card if k not in ("hook_points", "hook_points_per_layer")]
    per_layer = ", ".join(f"{k}.{{0..{ctx.model.n_layers - 1}}}" for k in card["hook_points_per_layer"])
    html = report.table(rows) + Markup(
        "<h3>Hook points</h3><p><code>embed</code>, <code>{}</code>, <code>final_norm</code>, <code>logits</code> "
        "— {} in all. TransformerLens names (<code>blocks.5.hook_resid_post</code>) and HF module paths "
        "(<code>layers.5.mlp</code>) are accepted as aliases.</p>"
    ).format(per_layer, len(card["hook_points"]))
    return report.Section("card", "Model card", html, card)


# ---------------------------------------------------------------- layer × token


def _passages(ctx: ScanContext) -> list[tuple[str, list[int]]]:
    """Evenly spaced eval documents; each passage starts at a paragraph a third of the way in."""
    cfg, model = ctx.config, ctx.model
    docs = data.split_documents(ctx.docs, "eval")
    picks = [docs[round(i * (len(docs) - 1) / max(cfg.passages - 1, 1))] for i in range(min(cfg.passages, len(docs)))]
    out = []
    for doc in picks:
        cut = doc.text.find("\n\n", len(doc.text) // 3)
        text = doc.text[cut + 2 if cut >= 0 else 0 :]
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][: cfg.passage_tokens]
        out.append((doc.id, [model.bos_id, *ids]))
    return out


def layer_token_section(ctx: ScanContext) -> Section:
    model = ctx.model
    L = model.n_layers
    inputs = _passages(ctx) + [("chat: " + ctx.config.chat_prompt, model.chat_ids(ctx.config.chat_prompt))]
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
        f"Norms at every layer for {len(inputs) - 1} passages from the eval split of '{ctx.config.corpus}' and one chat prompt. "
        "Struck-through tokens (position 0 and special tokens) are attention sinks: their norms are orders of "
        "magnitude above the rest, which is why they are excluded from statistics and dictionary training. "
        "Hover a cell for its value."
    )
    return report.Section("layers", "Layer × token", intro + Markup("").join(parts), summary)


# ---------------------------------------------------------------- statistics across depth


def corpus_stats(model: Model, docs: list[data.Document], points: list[str], tokens: int, *, context: int = 128,
                 batch_size: int = 16, split: str = "eval", exclusion: data.Exclusion | None = None,
                 collect: list[str] | None = None, extra: list[str] | None = None, extra_tokens: int = 0,
                 ) -> tuple[dict[str, PointStats], dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Per-point statistics over ``tokens`` tokens of a corpus split (excluded tokens counted separately),
    the kept rows of the ``collect`` points ({point: [rows, d]} float32 on the CPU; rows aligned across
    points: a token is kept only if it is an outlier at none of them), and the windows they come from:
    (token ids [W, T], kept mask [W, T]), rows in ``kept.nonzero()`` order."""
    exclusion = exclusion or data.Exclusion()
    spec = data.WindowSpec(context=context, split=split)
    acc = {p: RunningStats(model.d_model) for p in points}
    collect = collect or []
    extra = [p for p in extra or [] if p not in collect]
    rows: dict[str, list[torch.Tensor]] = {p: [] for p in collect + extra}
    n_extra = 0
    seen: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    n_windows = max(1, tokens // context)
    with bar("layer statistics", total=n_windows * context, unit="tokens") as b:
        for kb in data.kept_activations(model, docs, list(dict.fromkeys([*points, *collect, *extra])), windows=spec,
                                        batch_size=batch_size, exclusion=exclusion, outlier_points=collect,
                                        limit_tokens=tokens, progress=b):
            for p in points:
                acc[p].update(kb.acts[p], kb.kept_at([p]))  # each point's own outliers
            if collect:
                for p in collect:
                    rows[p].append(kb.rows(p).float().cpu())
                seen.append(kb.tokens.cpu())
                masks.append(kb.keep.cpu())
            if extra and n_extra < extra_tokens:
                kept = kb.kept_at(extra)
                for p in extra:
                    rows[p].append(kb.rows(p, kept)[: extra_tokens - n_extra].half().cpu())
                n_extra += min(int(kept.sum()), extra_tokens - n_extra)
    windows = (torch.cat(seen), torch.cat(masks)) if seen else (torch.zeros(0, context, dtype=torch.long),
                                                               torch.zeros(0, context, dtype=torch.bool))
    return {p: a.result() for p, a in acc.items()}, {p: torch.cat(v) for p, v in rows.items()}, windows


def depth_section(ctx: ScanContext) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, model = ctx.config, ctx.model
    L = model.n_layers
    kinds = ("resid_post", "attn_out", "mlp_out")
    points = [f"{k}.{l}" for l in range(L) for k in kinds]
    from .dictionaries.scan_section import sae_points

    from .circuits.scan_section import circuit_points

    extra = circuit_points(ctx)
    stats, acts, ctx.windows = corpus_stats(model, ctx.docs, points, cfg.stats_tokens, context=cfg.context,
                                            batch_size=cfg.batch_size, split="train", exclusion=cfg.exclusion,
                                            collect=sae_points(ctx), extra=extra, extra_tokens=cfg.circuit_tokens)
    ctx.extra_rows = {p: acts.pop(p) for p in extra}
    ctx.activations = acts
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
        f"Statistics over {s0.n_tokens:,} kept tokens of the train split of '{cfg.corpus}' ({cfg.exclusion.describe()}; "
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


def dictionaries_section(ctx: ScanContext) -> Section | None:
    from .dictionaries.scan_section import section

    return section(ctx)


def features_section(ctx: ScanContext) -> Section | None:
    from .features.scan_section import section

    return section(ctx)


def circuits_section(ctx: ScanContext) -> Section | None:
    from .circuits.scan_section import section

    return section(ctx)


def geometry_section(ctx: ScanContext) -> Section | None:
    from .geometry.scan_section import section

    return section(ctx)


SECTIONS: list[Callable[[ScanContext], Section | None]] = [
    model_card_section, layer_token_section, depth_section, dictionaries_section, features_section, circuits_section,
    geometry_section,
]
