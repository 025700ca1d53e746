"""The MRI report's circuits section: one prompt traced end to end — its attribution graph, scores,
validation against interventions, and the offline viewer embedded in the page.

Without ``--transcoders`` the scan trains quick TopK transcoders for every layer on the mlp_in/mlp_out rows
its statistics pass already captured (no extra model pass); like the quick SAEs they are previews, and
their replacement score says how much of the graph they leave to error nodes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from markupsafe import Markup

from .. import report
from ..dictionaries.config import DictionaryError
from ..dictionaries.run import plan, train_in_memory
from ..errors import LlmriError
from ..features.stats import row_windows
from ..stages import Inputs, Need, Stage
from ..validate import bounded, check
from .attribution import AttributionConfig, attribute
from .pipeline import TraceConfig, write_trace
from .transcoders import Transcoders, load_transcoders


@dataclass
class CircuitSectionConfig:
    """The scan's traced prompt and its transcoders."""

    prompt: str = "The capital of France is"
    """Prompt traced in the circuits section ("" skips the section)."""
    transcoders: str = ""
    """Transcoders for every layer (run folder, CLT or circuit-tracer export); "" trains quick ones on the first
    ``tokens`` kept tokens of the scan's pass."""
    tokens: int = bounded(16_384, 0, option="--circuit-tokens")
    """Kept tokens of the scan's pass (fp16 mlp_in/mlp_out of every layer) the quick transcoders train on; ≥ 0
    (0: no quick transcoders, so no circuits section unless ``transcoders`` is given)."""
    expansion: float = bounded(2.0, 0, lo_open=True)
    """Quick transcoders' width as a multiple of d_model; > 0."""
    k: int = bounded(16, 1)
    """Quick transcoders' k; ≥ 1."""
    features: int = bounded(1024, 1)
    """Feature nodes with computed inputs in the traced graph; ≥ 1."""

    def __post_init__(self):
        check(self, LlmriError)


def needs(config, model) -> Need | None:
    """fp16 kept rows of mlp_in/mlp_out at every layer for the quick transcoders (none when given transcoders)."""
    cfg = config.circuits
    if not cfg.prompt or cfg.transcoders or not cfg.tokens:
        return None
    L = model.n_layers
    return Need(rows=tuple([f"mlp_in.{l}" for l in range(L)] + [f"mlp_out.{l}" for l in range(L)]),
                limit=cfg.tokens, dtype=torch.float16, windows=True)


def panel_windows(captured, tokens: int, batch_size: int):
    """The feature panels' batches from the rows the transcoders trained on: the first windows holding
    ``tokens`` tokens (no corpus pass)."""
    n = max(1, tokens // captured.tokens.shape[1])
    kept = captured.kept[:n]
    rows = {p: r[: int(kept.sum())] for p, r in captured.rows.items() if p.startswith("mlp_in.")}
    return row_windows(captured.tokens[:n], kept, rows, batch_size)


def quick_transcoders(inp: Inputs) -> tuple[Transcoders, str]:
    cfg, model, rows = inp.config.circuits, inp.model, inp.captured.rows
    n = len(next(iter(rows.values())))
    dict_cfgs = plan(model, kind="transcoder", arch="topk", points=["mlp_in"], layers="all",
                     expansion=cfg.expansion, k=cfg.k)
    t0 = time.perf_counter()
    dicts = train_in_memory(dict_cfgs, rows, 2 * n, device=model.device)
    note = (f"Quick TopK transcoders (mlp_in.l → mlp_out.l, every layer): {dict_cfgs[0].n_latents:,} latents "
            f"({cfg.expansion:g}×), k = {cfg.k}, two epochs over {n:,} kept tokens of the statistics "
            f"pass ({time.perf_counter() - t0:.0f} s). Previews: train real ones with `llmri train --kind transcoder "
            "--layers all` and pass them with `llmri scan --transcoders PATH`.")
    return Transcoders(dicts, model.n_layers), note


def section(inp: Inputs) -> report.Section | None:
    cfg, model, corpus = inp.config.circuits, inp.model, inp.config.corpus
    if not cfg.prompt:
        return None
    try:
        if cfg.transcoders:
            tcs = load_transcoders(cfg.transcoders, model.n_layers, device=model.device)
            note = f"Transcoders: {cfg.transcoders}."
        elif inp.captured is not None:
            tcs, note = quick_transcoders(inp)
        else:
            return None
    except DictionaryError as err:
        return report.Section("circuits", "Circuits", report.paragraph(f"No graph was traced: {err}"), {"skipped": str(err)})
    t0 = time.perf_counter()
    graph = attribute(model, tcs, cfg.prompt, AttributionConfig(max_feature_nodes=cfg.features))
    tc = TraceConfig(validate_top=10, feature_tokens=4096, corpus=corpus)
    panels = (panel_windows(inp.captured, tc.feature_tokens, inp.config.stats.batch_size)
              if inp.captured is not None and not cfg.transcoders else None)
    summary = write_trace(model, tcs, graph, inp.artefacts / "circuits", tc, transcoder_path=None, slug="scan",
                          feature_windows=panels)
    summary["section_seconds"] = round(time.perf_counter() - t0, 1)
    decode = model.tokenizer.decode
    top = ", ".join(f"{decode([int(t)])!r} {float(p):.2f}" for t, p in zip(graph.logit_tokens[:3], graph.logit_probs[:3]))
    v = summary.get("validation", {})
    rows = [("prompt", cfg.prompt), ("top next tokens", top),
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


STAGE = Stage("circuits", section, needs)
