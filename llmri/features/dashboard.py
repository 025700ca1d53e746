"""Feature dashboards: a static, self-contained, offline site, and Neuronpedia-style feature JSON.

The site is one page (``index.html``: the sortable, searchable feature index and a feature panel behind
``#f{i}`` links, so the browser's back button works) plus plain script files it loads with ``<script>``
tags (``data/index.js``, ``data/tokens.js``, ``data/f/{i}.js``) — which, unlike ``fetch``, works from
``file://``. No CDN, no server. Corpus and model text is only ever inserted with ``textContent``, and
the JSON embedded in scripts escapes ``<``, ``>`` and ``&``, so a ``<script>`` in the corpus shows as text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jinja2
import numpy as np

from ..atomic import atomic_path
from .autointerp import cheap_labels
from .stats import FeatureStats, round_sig


def _sig(x, digits: int = 3):
    """Significant digits for the page (a float, or a list for an array); non-finite values become 0."""
    if isinstance(x, float):  # the common scalar case, without numpy's per-call overhead
        return float(f"{x:.{digits}g}") if math.isfinite(x) else 0.0
    r = round_sig(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), digits)
    return r.tolist()


def _js(obj) -> str:
    """JSON safe to embed in a <script> (no '</script>' or HTML-significant characters survive)."""
    return json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def token_strings(tokenizer, ids) -> dict[int, str]:
    """Each token id decoded on its own."""
    return {int(i): tokenizer.decode([int(i)]) for i in sorted(set(int(i) for i in ids)) if i >= 0}


def _example(e: dict) -> list:
    return [e["tokens"], e["acts"], e["max_index"], _sig(e["value"], 4)]


def feature_record(stats: FeatureStats, i: int, labels: dict[int, str] | None = None,
                   explanations: dict | None = None, top: int = 12, groups: int = 5, per_group: int = 3) -> dict:
    """Everything the dashboard shows about feature ``i`` (token ids, not strings)."""
    _, counts = stats.histogram(i)
    nz = [j for j, c in enumerate(counts) if c]
    lo, hi = (nz[0], nz[-1] + 1) if nz else (0, 0)
    expl = (explanations or {}).get(str(i))
    n_pos = stats.logit_top[0].shape[1]
    return {
        "i": i, "name": stats.name(i), "count": int(stats.counts[i]), "density": float(stats.density[i]),
        "max": _sig(float(stats.max_activation[i]), 4), "mean": _sig(float(stats.mean_activation[i]), 4),
        "label": (labels or {}).get(i, ""),
        "explanation": expl,
        "hist": {"first": lo, "counts": counts[lo:hi]},
        "logits": {"pos": [list(p) for p in zip(stats.logit_top[0][i].tolist(), _sig(stats.logit_top[1][i]))],
                   "neg": [list(p) for p in zip(stats.logit_bottom[0][i].tolist(), _sig(stats.logit_bottom[1][i]))],
                   "hist": stats.logit_hist[i].tolist(), "range": _sig(stats.logit_range[i])}
        if n_pos else None,
        "neighbours": [[j, s] for j, s in zip(stats.neighbours[i].tolist(), _sig(stats.jaccard[i])) if j >= 0],
        "top": [_example(e) for e in stats.examples(i, "top")[:top]],
        "groups": [{"quantile": g["quantile"], "range": _sig(g["range"]),
                    "examples": [_example(e) for e in g["examples"]]}
                   for g in stats.quantile_groups(i, groups, per_group)],
    }


def _record_tokens(rec: dict) -> set[int]:
    ids = {t for ex in rec["top"] for t in ex[0]} | {t for g in rec["groups"] for ex in g["examples"] for t in ex[0]}
    if rec["logits"]:
        ids |= {t for t, _ in rec["logits"]["pos"]} | {t for t, _ in rec["logits"]["neg"]}
    return ids


def index_rows(stats: FeatureStats, labels: dict[int, str], explanations: dict | None = None) -> list[list]:
    """[index, name, density, max activation, label, explanation score] per feature (dead ones included)."""
    dens, mx = _sig(stats.density, 4), _sig(stats.max_activation, 4)
    rows = []
    for i in range(stats.n):
        e = (explanations or {}).get(str(i))
        label = e["explanation"] if e else labels.get(i, "")
        rows.append([i, stats.name(i), dens[i], mx[i], label,
                     None if not e or e.get("score") is None else round(e["score"], 3)])
    return rows


def write_dashboard(stats: FeatureStats, tokenizer, out: str | Path, *, explanations: dict | None = None,
                    features: list[int] | None = None, title: str = "") -> Path:
    """Write the site for ``stats`` into ``out`` (atomically, as a whole); pages for ``features`` (default:
    all). Returns the path of ``index.html``."""
    labels = cheap_labels(stats, tokenizer)
    pages = range(stats.n) if features is None else sorted(set(features))
    used: set[int] = set()
    with atomic_path(out, directory=True, kind="dashboard") as tmp:
        (tmp / "data" / "f").mkdir(parents=True)
        for i in pages:
            rec = feature_record(stats, i, labels, explanations)
            used |= _record_tokens(rec)
            (tmp / "data" / "f" / f"{i}.js").write_text(f"llmriFeature({_js(rec)});\n")
        meta = {**stats.meta, "title": title or f"{stats.meta.get('dictionary', 'dictionary')} features",
                "pages": None if features is None else list(pages),
                "hist_centres": [round(c, 4) for c in stats.histogram(0)[0]]}
        rows = index_rows(stats, labels, explanations)
        (tmp / "data" / "index.js").write_text(f"window.LLMRI_META={_js(meta)};\nwindow.LLMRI_INDEX={_js(rows)};\n")
        (tmp / "data" / "tokens.js").write_text(f"window.LLMRI_TOKENS={_js(token_strings(tokenizer, used))};\n")
        env = jinja2.Environment(loader=jinja2.PackageLoader("llmri", "templates"), autoescape=True)
        (tmp / "index.html").write_text(env.get_template("dashboard.html.j2").render(title=meta["title"], meta=meta))
    return Path(out) / "index.html"


# ---------------------------------------------------------------- Neuronpedia-style JSON


def neuronpedia_feature(stats: FeatureStats, i: int, tokenizer, *, model_id: str, layer: str,
                        labels: dict[int, str] | None = None, explanations: dict | None = None) -> dict:
    """One feature in the field names of Neuronpedia's feature records (SAEDashboard's export)."""
    rec = feature_record(stats, i, labels, explanations, top=stats.top.value.shape[0], per_group=5)
    tok = token_strings(tokenizer, _record_tokens(rec))
    centres = stats.histogram(i)[0][rec["hist"]["first"] :][: len(rec["hist"]["counts"])]
    counts = rec["hist"]["counts"]

    def act(ex, bin_=None):
        out = {"tokens": [tok[t] for t in ex[0]], "values": ex[1], "maxValue": ex[3], "maxValueTokenIndex": ex[2]}
        if bin_:
            out |= {"bin_min": bin_[0], "bin_max": bin_[1]}
        return out

    lg = rec["logits"] or {"pos": [], "neg": [], "hist": [], "range": [0, 0]}
    lo, hi = lg["range"]
    nb = len(lg["hist"])
    expl = rec["explanation"]
    return {
        "modelId": model_id, "layer": layer, "index": str(i), "maxActApprox": rec["max"],
        "frac_nonzero": rec["density"],
        "pos_str": [tok[t] for t, _ in lg["pos"]], "pos_values": [v for _, v in lg["pos"]],
        "neg_str": [tok[t] for t, _ in lg["neg"]], "neg_values": [v for _, v in lg["neg"]],
        # parallel arrays (one value per bar); activation bars at 10^centre, logit bars at bin centres
        "freq_hist_data_bar_values": _sig(10.0 ** np.asarray(centres)), "freq_hist_data_bar_heights": counts,
        "logits_hist_data_bar_values": _sig(lo + (hi - lo) * (np.arange(nb) + 0.5) / nb),
        "logits_hist_data_bar_heights": lg["hist"],
        "correlated_features_indices": [j for j, _ in rec["neighbours"]],
        "correlated_features_jaccard": [s for _, s in rec["neighbours"]],
        "activations": [act(ex) for ex in rec["top"]]
        + [act(ex, g["range"]) for g in rec["groups"] for ex in g["examples"]],
        "explanations": [{"description": expl["explanation"], "score": expl.get("score"),
                          "explanationModelName": expl.get("explainer", "")}] if expl else
        [{"description": rec["label"], "score": None, "explanationModelName": "llmri cheap label (no LLM)"}],
    }


def write_neuronpedia(stats: FeatureStats, tokenizer, out: str | Path, *, model_id: str, layer: str,
                      explanations: dict | None = None, batch: int = 128) -> Path:
    """``out/batch-{k}.json`` files of ``{"features": [...]}``, ``batch`` features each (dead ones included)."""
    labels = cheap_labels(stats, tokenizer)
    with atomic_path(out, directory=True, kind="neuronpedia") as tmp:
        for k, s in enumerate(range(0, stats.n, batch)):
            feats = [neuronpedia_feature(stats, i, tokenizer, model_id=model_id, layer=layer, labels=labels,
                                         explanations=explanations) for i in range(s, min(s + batch, stats.n))]
            (tmp / f"batch-{k}.json").write_text(json.dumps({"model_id": model_id, "layer": layer, "features": feats},
                                                            separators=(",", ":")))
    return Path(out)
