"""The MRI report's dictionaries section: quick TopK SAEs on a few layers, trained together on the kept rows
of the scan's one model pass, evaluated on held-out tokens, plotted across depth and saved with the report
(``saes/``). It hands the SAEs and their rows on to the features section."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .. import report
from ..errors import LlmriError
from ..hookpoints import layer_of
from ..stages import Inputs, Need, Output, Stage
from ..validate import bounded, check
from . import formats
from .config import DictionaryError
from .evaluate import EvalConfig, evaluate_many
from .run import parse_layers, plan, train_in_memory


@dataclass
class SaeSectionConfig:
    """The scan's quick SAEs."""

    layers: str = "auto"
    """Layers that get a quick TopK SAE on resid_post ("auto": five spread over depth; "" skips)."""
    tokens: int = bounded(65_536, 0, option="--sae-tokens")
    """Training tokens of those SAEs: they cycle over the kept rows of the scan's pass (65,536 over the default
    32,768 = two epochs), so the scan runs the model over the corpus once; ≥ 0 (0 skips them)."""
    expansion: float = bounded(4.0, 0, lo_open=True)
    """Their width as a multiple of d_model; > 0."""
    k: int = bounded(32, 1)
    """Their k; ≥ 1."""
    eval_tokens: int = bounded(8_192, 0)
    """Held-out tokens for their NMSE / L0 / dead %; ≥ 0 (0: skip)."""
    ce_tokens: int = bounded(2_048, 0)
    """Held-out tokens for their CE loss recovered; ≥ 0 (0: skip)."""

    def __post_init__(self):
        check(self, LlmriError)


def scan_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "auto":
        return sorted({round(i * (n_layers - 1) / 4) for i in range(5)})
    return parse_layers(spec, n_layers)


def needs(config, model) -> Need | None:
    """Aligned fp32 kept rows of resid_post at the SAE layers, with their windows (for the features section)."""
    cfg = config.saes
    if not cfg.layers or not cfg.tokens:
        return None
    return Need(rows=tuple(f"resid_post.{l}" for l in scan_layers(cfg.layers, model.n_layers)), windows=True)


def section(inp: Inputs) -> Output | None:
    if inp.captured is None:
        return None
    cfg, model, pass_cfg = inp.config.saes, inp.model, inp.config.stats
    exclusion = inp.config.exclusion
    acts = inp.captured.rows
    points = list(acts)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [layer_of(p) for p in points]
    dict_cfgs = plan(model, kind="sae", arch="topk", points=["resid_post"], layers=",".join(map(str, layers)),
                     expansion=cfg.expansion, k=cfg.k)
    t0 = time.perf_counter()
    try:
        dicts = train_in_memory(dict_cfgs, acts, cfg.tokens, device=model.device)
    except DictionaryError as err:  # e.g. a small corpus: say so instead of failing the whole scan
        return Output(report.Section("dictionaries", "Sparse dictionaries",
                                     report.paragraph(f"No SAEs were trained: {err}"), {"skipped": str(err)}))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = evaluate_many(model, dicts, inp.docs, EvalConfig(tokens=cfg.eval_tokens, ce_tokens=cfg.ce_tokens,
                                                               context=pass_cfg.context, batch_size=pass_cfg.batch_size,
                                                               exclusion=exclusion))
    eval_s = time.perf_counter() - t0
    rows, summary = [], {}
    for d, r in zip(dicts, results):
        density = r.pop("_density")
        formats.save(d, inp.artefacts / "saes" / d.cfg.name, density=density, extra={"eval.json": r})
        layer = d.source_layers[0]
        summary[d.cfg.name] = {k: r[k] for k in ("nmse", "explained_variance", "l0", "dead_fraction", "dense_fraction",
                                                 "ce_loss_recovered", "kl_clean_spliced", "ce_clean", "ce_spliced",
                                                 "ce_zero_ablation", "tokens", "ce_tokens")}
        rows.append((layer, r["nmse"], r["explained_variance"], r["l0"], 100 * r["dead_fraction"],
                     r["ce_loss_recovered"], r["kl_clean_spliced"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    xs = [r[0] for r in rows]
    axes[0].plot(xs, [r[1] for r in rows], "o-", label="NMSE (FVU)")
    axes[0].plot(xs, [r[5] for r in rows], "s-", label="CE loss recovered")
    axes[0].set_ylim(0, 1.05), axes[0].set_xlabel("layer"), axes[0].legend(fontsize=8), axes[0].set_title("reconstruction")
    axes[1].plot(xs, [r[3] for r in rows], "o-", color="tab:green")
    axes[1].set_xlabel("layer"), axes[1].set_ylabel("L0"), axes[1].set_title("active latents per token")
    axes[2].plot(xs, [r[4] for r in rows], "o-", color="tab:red")
    axes[2].set_xlabel("layer"), axes[2].set_ylabel("dead %"), axes[2].set_title(f"dead over {results[0]['tokens']:,} held-out tokens")
    fig.tight_layout()
    n_lat = dict_cfgs[0].n_latents
    note = report.paragraph(
        f"Quick TopK SAEs on resid_post of layers {', '.join(map(str, layers))}: {n_lat:,} latents ({cfg.expansion:g}×), "
        f"k = {cfg.k}, trained together for {cfg.tokens:,} tokens "
        f"(epochs over the {len(acts[points[0]]):,} kept {pass_cfg.split}-split tokens of the statistics pass) "
        f"({train_s:.0f} s), evaluated on {results[0]['tokens']:,} held-out tokens (CE on {results[0].get('ce_tokens', 0):,}; "
        f"{eval_s:.0f} s). {exclusion.describe()}. CE loss recovered = (CE_zero − CE_spliced)/(CE_zero − CE_clean) "
        "with the residual stream zero-ablated at the kept positions as the baseline. These are previews: "
        "`llmri train` trains real ones. Weights (SAELens format) are saved in saes/ next to this page."
    )
    html = note + report.figure(fig, "SAE metrics across depth") + report.table(
        rows, ["layer", "NMSE", "explained var.", "L0", "dead %", "CE recovered", "KL(clean‖spliced)"], cls="data")
    summary["train_seconds"], summary["eval_seconds"] = round(train_s, 1), round(eval_s, 1)
    return Output(report.Section("dictionaries", "Sparse dictionaries", html, summary), (dicts, inp.captured))


STAGE = Stage("dictionaries", section, needs)
