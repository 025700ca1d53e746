"""The MRI report's features section: for each quick SAE of the scan, its statistics over the tokens the
statistics pass already captured (no extra model pass), a dashboard, and a few features shown inline —
the densest and the median-density ones — with their labels and top contexts."""

from __future__ import annotations

import torch
from markupsafe import Markup

from .. import report
from ..stages import Inputs, Stage
from .autointerp import cheap_labels
from .dashboard import write_dashboard
from .stats import FeatureConfig, collect, row_windows

SHOWN = 3
"""Features shown per group (densest / median density) and layer."""


def _context(tokens: list[str], acts: list[float], vmax: float) -> Markup:
    spans = []
    for t, a in zip(tokens, acts):
        alpha = 0.0 if a <= 0 else min(1.0, 0.15 + 0.85 * a / (vmax or 1))
        spans.append(Markup('<span style="background:rgba(255,140,0,{:.2f})" title="{:.3g}">{}</span>').format(
            alpha, a, t.replace("\n", "↵")))
    return Markup('<div class="ctx">{}</div>').format(Markup("").join(spans))


def _feature_block(stats, i: int, label: str, tok, link: str) -> Markup:
    examples = stats.examples(i, "top")[:3]
    vmax = float(stats.max_activation[i])
    ctxs = Markup("").join(_context([tok(t) for t in e["tokens"]], e["acts"], vmax) for e in examples)
    return Markup('<div class="feature"><a href="{}">#{}</a> <span class="muted">density {:.2%} · max {:.3g}</span> '
                  '<span class="label">{}</span>{}</div>').format(link, i, float(stats.density[i]), vmax, label, ctxs)


def section(inp: Inputs) -> report.Section | None:
    trained = inp.upstream.get("dictionaries")
    if not trained:
        return None
    dicts, captured = trained
    if captured.tokens is None or not len(captured.tokens):
        return None
    model, cfg = inp.model, inp.config
    tokens, kept = captured.tokens, captured.kept
    acts = captured.rows
    cache: dict[int, str] = {}

    def tok(t: int) -> str:
        if t not in cache:
            cache[t] = model.tokenizer.decode([t])
        return cache[t]

    fc = FeatureConfig(top_k=10, samples=24, before=12, after=4, cooc_tokens=len(acts[dicts[0].cfg.in_points[0]]))
    parts, summary = [], {}
    for d in dicts:
        point = d.cfg.in_points[0]
        stats = collect(d, row_windows(tokens, kept, {point: acts[point]}, cfg.stats.batch_size), fc, model=model,
                        meta={"corpus": f"{cfg.corpus} ({cfg.stats.split} split)", "model": model.name})
        site = f"dashboards/{d.cfg.name}"
        write_dashboard(stats, model.tokenizer, inp.artefacts / site, title=f"{model.name} · {d.cfg.name} (quick SAE)")
        labels = cheap_labels(stats, model.tokenizer)
        alive = (stats.counts > 0).nonzero().flatten()
        by_density = alive[stats.counts[alive].argsort(descending=True)]
        densest = by_density[:SHOWN].tolist()
        mid = len(by_density) // 2
        median = by_density[max(0, mid - SHOWN // 2) : mid - SHOWN // 2 + SHOWN].tolist()
        blocks = [Markup("<h4>densest</h4>")] + [_feature_block(stats, i, labels.get(i, ""), tok, f"{site}/index.html#f{i}") for i in densest]
        blocks += [Markup("<h4>median density</h4>")] + [_feature_block(stats, i, labels.get(i, ""), tok, f"{site}/index.html#f{i}")
                                                        for i in median]
        dead = int((stats.counts == 0).sum())
        parts.append(Markup('<h3>{} — <a href="{}/index.html">dashboard of all {} features</a></h3><p class="muted">{} dead on '
                            'these tokens · median density {:.3%}</p>{}').format(
            d.cfg.name, site, stats.n, dead, float(torch.median(stats.density[alive])) if len(alive) else 0.0,
            Markup("").join(blocks)))
        summary[d.cfg.name] = {"features": stats.n, "dead": dead, "tokens": stats.n_tokens,
                               "densest": [{"feature": i, "density": float(stats.density[i]), "label": labels.get(i, "")} for i in densest],
                               "median": [{"feature": i, "density": float(stats.density[i]), "label": labels.get(i, "")} for i in median]}
    intro = report.paragraph(
        f"Features of the quick SAEs above, read over the {int(kept.sum()):,} kept {cfg.stats.split}-split tokens of the statistics pass "
        "(the tokens they were trained on; no extra model pass). Labels are the cheap, LLM-free ones: the most common "
        "max-activating tokens → the top logit effects of the decoder through the final norm and unembedding. Each "
        "context is centred on its max token (orange: activation / the feature's max). `llmri dashboard` and "
        "`llmri interp` build full dashboards and LLM explanations for any dictionary.")
    return report.Section("features", "Features", intro + Markup("").join(parts), summary)


STAGE = Stage("features", section, uses=("dictionaries",))
