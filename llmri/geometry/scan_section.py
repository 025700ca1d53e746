"""The MRI report's geometry section: the intrinsic-dimension profile across depth with its shuffled control,
a diffusion map of the middle layer, and the linear vs. manifold steering trade-off."""

from __future__ import annotations

from markupsafe import Markup

from .. import report
from ..errors import GeometryError
from .layer_map import LayerMapConfig, layer_map
from .layer_map import plot as plot_map
from .profile import ProfileConfig, describe, id_profile
from .profile import plot as plot_profile
from .steer import SteerConfig, bundled, steer_compare
from .steer import plot as plot_steer


def _id_part(ctx) -> tuple[Markup, dict]:
    cfg = ctx.config
    prof = id_profile(ctx.model, ctx.docs, ProfileConfig(points=cfg.geometry_points, per_window=cfg.geometry_per_window,
                                                         n_boot=100, exclusion=cfg.exclusion), corpus=cfg.corpus)
    corpus, control = prof.corpus_ids, prof.control_ids
    body = corpus[1:]
    peak = max(body, key=lambda r: r.twonn.d)
    cpeak = max(control[1:], key=lambda r: r.twonn.d)
    text = report.paragraph(
        f"TwoNN intrinsic dimension of {describe(prof.config, prof.windows)}; the control shuffles the same windows' "
        f"tokens (position 0 kept). Corpus: ID {body[0].twonn.d:.1f} after layer 0, peak {peak.twonn.d:.1f} at "
        f"{peak.point}, {body[-1].twonn.d:.1f} at the last layer; shuffled control: peak {cpeak.twonn.d:.1f} at "
        f"{cpeak.point}. Published profiles (Valeriani et al. 2023, Cheng et al. 2025) rise, peak mid-depth and fall, "
        "with a lower peak on shuffled text; compare, don't assume. Intervals: 95% bootstrap over points.")
    rows = [(r.point, f"{r.twonn.d:.2f} [{r.twonn.lo:.2f}, {r.twonn.hi:.2f}]", f"{r.gride[4].d:.2f}",
             f"{c.twonn.d:.2f} [{c.twonn.lo:.2f}, {c.twonn.hi:.2f}]", r.twonn.duplicates) for r, c in zip(corpus, control)]
    html = Markup("<h3>Intrinsic dimension across depth</h3>") + text + report.figure(plot_profile(prof), "ID profile") + Markup(
        "<details><summary>per-layer numbers</summary>{}</details>").format(report.table(
            rows, ["point", "TwoNN (corpus)", "GRIDE n=4", "TwoNN (shuffled)", "duplicates dropped"], cls="data"))
    return html, prof.summary()


def _map_part(ctx) -> tuple[Markup, dict]:
    m = layer_map(ctx.model, ctx.docs, LayerMapConfig(exclusion=ctx.config.exclusion))
    s = m.summary()
    text = report.paragraph(
        f"Diffusion map of {m.point}: {s['points']:,} token states from {len(s['documents'])} eval documents and the "
        f"bundled concept sentences (sea vs. other topics), z-scored per coordinate, variable-bandwidth kNN kernel "
        f"(k = 32), α = 1, t = 1. |Spearman| of ψ₁, ψ₂ with position: {s['spearman_position']['psi1']}, "
        f"{s['spearman_position']['psi2']}; concept sets separated by ψ₁/ψ₂ with AUC "
        f"{s['concept_separation_auc'].get('psi1', '—')}/{s['concept_separation_auc'].get('psi2', '—')}.")
    return Markup("<h3>Diffusion map of one layer</h3>") + text + report.figure(plot_map(m), "diffusion map"), s


def _steer_part(ctx) -> tuple[Markup, dict]:
    cfg = ctx.config
    scfg = SteerConfig(scales=cfg.steer_scales, reference_tokens=cfg.steer_reference_tokens, new_tokens=cfg.steer_tokens,
                       corpus=cfg.corpus, exclusion=cfg.exclusion)
    res = steer_compare(ctx.model, scfg, prompts=bundled("prompts")[: cfg.steer_prompts])
    s = res.summary()
    rows = [(r["method"], r["scale"], f"{r['concept']:.2f} [{r['concept_lo']:.2f}, {r['concept_hi']:.2f}]",
             f"{r['ppl']:.1f} [{r['ppl_lo']:.1f}, {r['ppl_hi']:.1f}]", f"{r['distance_ratio']:.2f}", r["examples"][0])
            for r in res.rows]
    text = report.paragraph(
        f"Concept 'sea' vs. other topics ({res.direction_source}) at {res.point}; {res.prompts} prompts × ≤ "
        f"{scfg.new_tokens} greedy tokens per setting. Concept strength: a logistic probe at {res.probe_point} "
        f"(held-out accuracy {res.probe_accuracy:.2f}, n = {res.probe_test}) on the continuation; fluency: its "
        f"perplexity under the unsteered model; off-manifold: mean distance to the {scfg.distance_k} nearest of "
        f"{res.reference_states:,} reference states relative to the unsteered run. The manifold step follows the "
        f"direction projected on a {res.tangent_dim}-dimensional local tangent space and retracts to the data.")
    verdict = [(f"≤ {v['ppl_budget']}× unsteered", *(f"{v[m]['concept']:.2f} (s = {v[m]['scale']:g})" if v.get(m) else "—"
                                                   for m in ("linear", "manifold"))) for v in s["verdict"]]
    html = (Markup("<h3>Linear vs. manifold-constrained steering</h3>") + text + report.figure(plot_steer(res), "steering")
            + report.table(verdict, ["perplexity budget", "best concept score: linear", "manifold"], cls="data")
            + Markup("<details><summary>every setting</summary>{}</details>").format(report.table(
                rows, ["method", "step s", "concept P(sea) [95% CI]", "perplexity [95% CI]", "kNN distance ratio",
                       "first continuation"], cls="data")))
    return html, s


def section(ctx) -> report.Section | None:
    if not ctx.config.geometry_points:
        return None
    parts, data = [], {}
    for name, build in (("id_profile", _id_part), ("diffusion_map", _map_part), ("steering", _steer_part)):
        try:
            html, data[name] = build(ctx)
        except GeometryError as err:  # e.g. a corpus too small for the sample: say so, keep the report
            html, data[name] = report.paragraph(f"{name.replace('_', ' ')} skipped: {err}"), {"skipped": str(err)}
        parts.append(html)
    return report.Section("geometry", "Geometry", Markup("").join(parts), data)
