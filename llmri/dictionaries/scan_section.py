"""The MRI report's dictionaries section: quick TopK SAEs on a few layers, trained together from one model
pass, evaluated on held-out tokens, plotted across depth and saved with the report (``saes/``)."""

from __future__ import annotations

import tempfile
import time

from .. import data, report
from ..hookpoints import layer_of
from . import formats
from .config import DictionaryError, TrainConfig
from .evaluate import EvalConfig, evaluate_many
from .run import plan
from .sources import ModelSource, TensorSource
from .trainer import Trainer, build


def scan_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "auto":
        return sorted({round(i * (n_layers - 1) / 4) for i in range(5)})
    from .run import parse_layers

    return parse_layers(spec, n_layers)


def sae_points(ctx) -> list[str]:
    """The points whose activations the statistics pass keeps for this section (none when it is off)."""
    cfg = ctx.config
    if not cfg.sae_layers or not cfg.sae_tokens:
        return []
    return [f"resid_post.{l}" for l in scan_layers(cfg.sae_layers, ctx.model.n_layers)]


def section(ctx) -> report.Section | None:
    cfg, model = ctx.config, ctx.model
    points = sae_points(ctx)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [layer_of(p) for p in points]
    dict_cfgs = plan(model, kind="sae", arch="topk", points=["resid_post"], layers=",".join(map(str, layers)),
                     expansion=cfg.sae_expansion, k=cfg.sae_k)
    batch = 1024
    tc = TrainConfig(tokens=cfg.sae_tokens, batch_size=batch, checkpoint_every=0, norm_batches=2, log_every=8)
    dicts = [build(c, device=model.device, seed=i) for i, c in enumerate(dict_cfgs)]
    # the statistics pass captured these layers' kept activations: train on them (no second model pass)
    acts = {p: ctx.activations[p] for p in points} if all(p in ctx.activations for p in points) else None
    t0 = time.perf_counter()
    try:
        source = (TensorSource(acts, batch) if acts is not None else
                  ModelSource(model, ctx.docs, points, batch, windows=data.WindowSpec(context=cfg.context),
                              lm_batch=cfg.batch_size, exclusion=cfg.exclusion))
        with tempfile.TemporaryDirectory() as scratch:
            Trainer(dicts, tc, source, scratch).fit()
    except DictionaryError as err:  # e.g. a small corpus: say so instead of failing the whole scan
        return report.Section("dictionaries", "Sparse dictionaries",
                              report.paragraph(f"No SAEs were trained: {err}"), {"skipped": str(err)})
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = evaluate_many(model, dicts, ctx.docs, EvalConfig(tokens=cfg.sae_eval_tokens, ce_tokens=cfg.sae_ce_tokens,
                                                              context=cfg.context, batch_size=cfg.batch_size,
                                                              exclusion=cfg.exclusion))
    eval_s = time.perf_counter() - t0
    rows, summary = [], {}
    ctx.dictionaries = dicts
    for d, r in zip(dicts, results):
        density = r.pop("_density")
        formats.save(d, ctx.artefacts / "saes" / d.cfg.name, density=density, extra={"eval.json": r})
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
        f"Quick TopK SAEs on resid_post of layers {', '.join(map(str, layers))}: {n_lat:,} latents ({cfg.sae_expansion:g}×), "
        f"k = {cfg.sae_k}, trained together for {cfg.sae_tokens:,} tokens "
        + (f"(epochs over the {len(acts[points[0]]):,} kept train-split tokens of the statistics pass) " if acts is not None
           else "of the train split from one model pass per batch ")
        + f"({train_s:.0f} s), evaluated on {results[0]['tokens']:,} held-out tokens (CE on {results[0].get('ce_tokens', 0):,}; "
        f"{eval_s:.0f} s). {cfg.exclusion.describe()}. CE loss recovered = (CE_zero − CE_spliced)/(CE_zero − CE_clean) "
        "with the residual stream zero-ablated at the kept positions as the baseline. These are previews: "
        "`llmri train` trains real ones. Weights (SAELens format) are saved in saes/ next to this page."
    )
    html = note + report.figure(fig, "SAE metrics across depth") + report.table(
        rows, ["layer", "NMSE", "explained var.", "L0", "dead %", "CE recovered", "KL(clean‖spliced)"], cls="data")
    summary["train_seconds"], summary["eval_seconds"] = round(train_s, 1), round(eval_s, 1)
    return report.Section("dictionaries", "Sparse dictionaries", html, summary)
