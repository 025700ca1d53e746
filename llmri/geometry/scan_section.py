"""The MRI report's geometry section: the intrinsic-dimension profile across depth with its shuffled control,
a diffusion map of the middle layer, and the linear vs. manifold steering trade-off."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

from .. import report
from ..errors import GeometryError, LlmriError
from ..stages import Inputs, Need, Stage
from ..validate import bounded, check, check_number
from .layer_map import LayerMapConfig, layer_map
from .layer_map import plot as plot_map
from .profile import ProfileConfig, describe, id_profile, profile_points
from .profile import plot as plot_profile
from .steer import SteerConfig, bundled, steer_compare
from .steer import plot as plot_steer


@dataclass
class GeometrySectionConfig:
    """The scan's geometry section (the ID profile's corpus sample comes from the scan's pass; the diffusion map
    and the steering comparison draw their own: eval documents, concept sentences, prompts)."""

    points: int = bounded(2048, 0, option="--geometry-points")
    """Token states per layer for the intrinsic-dimension profile (and as many for its shuffled control); 0 skips
    the geometry section, otherwise ≥ 100."""
    per_window: int = bounded(16, 1)
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
        if 0 < self.points < 100:
            raise LlmriError(f"GeometrySectionConfig.points (--geometry-points) must be 0 or ≥ 100, got {self.points}",
                             "use at least 100 token states per layer, or 0 to skip the geometry section")
        for s in self.steer_scales:
            check_number("GeometrySectionConfig.steer_scales entry", s, 0, error=LlmriError)


def _profile_config(config) -> ProfileConfig:
    """The ID profile's settings: its sample comes from the scan's pass (same split and windows)."""
    cfg = config.geometry
    return ProfileConfig(points=cfg.points, per_window=cfg.per_window, n_boot=100, exclusion=config.exclusion,
                         split=config.stats.split, context=config.stats.context, batch_size=config.stats.batch_size)


def needs(config, model) -> Need | None:
    """The ID profile's corpus states: ``per_window`` random kept tokens per window of the pass, at ``embed`` and
    every resid_post, until ``points`` of them (the control then shuffles the same windows)."""
    if not config.geometry.points:
        return None
    pc = _profile_config(config)
    return Need(rows=tuple(profile_points(model, pc)), limit=pc.points, windows=True, sample=pc.per_window, seed=pc.seed)


def _id_part(inp: Inputs) -> tuple[Markup, dict]:
    pc, got = _profile_config(inp.config), inp.captured
    # a pass too short for the sample (a small --stats-tokens): the profile draws its own windows
    sample = ((got.rows, got.tokens[got.kept.any(1)]) if got is not None and len(got.tokens)
              and len(next(iter(got.rows.values()))) >= pc.points else None)
    prof = id_profile(inp.model, inp.docs, pc, corpus=inp.config.corpus, sample=sample)
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


def _map_part(inp: Inputs) -> tuple[Markup, dict]:
    m = layer_map(inp.model, inp.docs, LayerMapConfig(exclusion=inp.config.exclusion))
    s = m.summary()
    text = report.paragraph(
        f"Diffusion map of {m.point}: {s['points']:,} token states from {len(s['documents'])} eval documents and the "
        f"bundled concept sentences (sea vs. other topics), z-scored per coordinate, variable-bandwidth kNN kernel "
        f"(k = 32), α = 1, t = 1. |Spearman| of ψ₁, ψ₂ with position: {s['spearman_position']['psi1']}, "
        f"{s['spearman_position']['psi2']}; concept sets separated by ψ₁/ψ₂ with AUC "
        f"{s['concept_separation_auc'].get('psi1', '—')}/{s['concept_separation_auc'].get('psi2', '—')}.")
    return Markup("<h3>Diffusion map of one layer</h3>") + text + report.figure(plot_map(m), "diffusion map"), s


def _steer_part(inp: Inputs) -> tuple[Markup, dict]:
    cfg = inp.config.geometry
    scfg = SteerConfig(scales=cfg.steer_scales, reference_tokens=cfg.steer_reference_tokens, new_tokens=cfg.steer_tokens,
                       corpus=inp.config.corpus, exclusion=inp.config.exclusion)
    res = steer_compare(inp.model, scfg, prompts=bundled("prompts")[: cfg.steer_prompts])
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


def section(inp: Inputs) -> report.Section | None:
    if not inp.config.geometry.points:
        return None
    parts, data = [], {}
    for name, part in (("id_profile", _id_part), ("diffusion_map", _map_part), ("steering", _steer_part)):
        try:
            html, data[name] = part(inp)
        except GeometryError as err:  # e.g. a corpus too small for the sample: say so, keep the report
            html, data[name] = report.paragraph(f"{name.replace('_', ' ')} skipped: {err}"), {"skipped": str(err)}
        parts.append(html)
    return report.Section("geometry", "Geometry", Markup("").join(parts), data)


STAGE = Stage("geometry", section, needs)
