"""The MRI report's circuits section: one prompt traced end to end — its attribution graph, scores,
validation against interventions, and the offline viewer embedded in the page.

Without ``--transcoders`` the scan trains quick TopK transcoders for every layer on the mlp_in/mlp_out rows
its statistics pass already captured (no extra model pass); like the quick SAEs they are previews, and
their replacement score says how much of the graph they leave to error nodes."""

from __future__ import annotations

import tempfile
import time

from markupsafe import Markup

from .. import report
from ..dictionaries.config import DictionaryError, TrainConfig
from ..dictionaries.run import plan
from ..dictionaries.sources import TensorSource
from ..dictionaries.trainer import Trainer, build
from .attribution import AttributionConfig, attribute
from .pipeline import TraceConfig, write_trace
from .transcoders import Transcoders, load_transcoders


def circuit_points(ctx) -> list[str]:
    """Points the statistics pass keeps for the quick transcoders (none when given transcoders or skipped)."""
    cfg = ctx.config
    if not cfg.circuit_prompt or cfg.transcoders or not cfg.circuit_tokens:
        return []
    L = ctx.model.n_layers
    return [f"mlp_in.{l}" for l in range(L)] + [f"mlp_out.{l}" for l in range(L)]


def quick_transcoders(ctx) -> tuple[Transcoders, str]:
    cfg, model = ctx.config, ctx.model
    rows = ctx.extra_rows
    n = len(next(iter(rows.values())))
    dict_cfgs = plan(model, kind="transcoder", arch="topk", points=["mlp_in"], layers="all",
                     expansion=cfg.circuit_expansion, k=cfg.circuit_k)
    batch = 1024
    tc = TrainConfig(tokens=2 * n, batch_size=batch, checkpoint_every=0, norm_batches=2, log_every=8)
    dicts = [build(c, device=model.device, seed=i) for i, c in enumerate(dict_cfgs)]
    source = TensorSource({p: r.float() for p, r in rows.items()}, batch)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        Trainer(dicts, tc, source, scratch).fit()
    for d in dicts:
        d.eval()
    note = (f"Quick TopK transcoders (mlp_in.l → mlp_out.l, every layer): {dict_cfgs[0].n_latents:,} latents "
            f"({cfg.circuit_expansion:g}×), k = {cfg.circuit_k}, two epochs over {n:,} kept tokens of the statistics "
            f"pass ({time.perf_counter() - t0:.0f} s). Previews: train real ones with `llmri train --kind transcoder "
            "--layers all` and pass them with `llmri scan --transcoders PATH`.")
    return Transcoders(dicts, model.n_layers), note


def section(ctx) -> report.Section | None:
    cfg, model = ctx.config, ctx.model
    if not cfg.circuit_prompt:
        return None
    try:
        if cfg.transcoders:
            tcs = load_transcoders(cfg.transcoders, model.n_layers, device=model.device)
            note = f"Transcoders: {cfg.transcoders}."
        elif ctx.extra_rows:
            tcs, note = quick_transcoders(ctx)
        else:
            return None
    except DictionaryError as err:
        return report.Section("circuits", "Circuits", report.paragraph(f"No graph was traced: {err}"), {"skipped": str(err)})
    t0 = time.perf_counter()
    graph = attribute(model, tcs, cfg.circuit_prompt, AttributionConfig(max_feature_nodes=cfg.circuit_features))
    tc = TraceConfig(validate_top=10, feature_tokens=4096, corpus=cfg.corpus)
    summary = write_trace(model, tcs, graph, ctx.artefacts / "circuits", tc, transcoder_path=None, slug="scan")
    summary["section_seconds"] = round(time.perf_counter() - t0, 1)
    decode = model.tokenizer.decode
    top = ", ".join(f"{decode([int(t)])!r} {float(p):.2f}" for t, p in zip(graph.logit_tokens[:3], graph.logit_probs[:3]))
    v = summary.get("validation", {})
    rows = [("prompt", cfg.circuit_prompt), ("top next tokens", top),
            ("replacement score", f"{summary['replacement_score']:.3f}"),
            ("completeness score", f"{summary['completeness_score']:.3f}"),
            ("graph", f"{summary['active_features']:,} active features, {summary['feature_nodes']:,} with computed "
                      f"inputs, {summary['nodes']:,} nodes / {summary['edges']:,} edges"),
            ("pruned (0.8 / 0.98)", f"{summary['pruned_nodes']:,} nodes ({summary['pruned_features']:,} features) / "
                                    f"{summary['pruned_edges']:,} edges"),
            ("validation", f"Pearson r = {v.get('pearson')} between predicted and measured top-logit change when "
                           f"ablating each of the {v.get('features')} most influential features (attention frozen)"),
            ("time", f"attribution {summary['seconds']['attribution']} s, the rest {summary['seconds']['rest']} s")]
    html = (report.paragraph(note + " Replacement score: share of the output's influence reaching the prompt "
                             "tokens through features rather than error nodes; completeness: influence-weighted share "
                             "of every node's input not from error nodes (circuit-tracer's definitions).")
            + report.table(rows)
            + Markup('<p><a href="circuits/index.html">Open the graph viewer</a> · '
                     '<a href="circuits/scan.json">graph JSON (circuit-tracer / Neuronpedia schema)</a></p>'
                     '<iframe src="circuits/index.html" title="attribution graph" '
                     'style="width:100%;height:720px;border:1px solid #ccc"></iframe>'))
    return report.Section("circuits", "Circuits", html, summary)
