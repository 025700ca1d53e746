"""An offline viewer for attribution graphs: one self-contained HTML file, no server, no CDN.

The graph (circuit-tracer / Neuronpedia graph JSON, from :func:`llmri.circuits.export.graph_json`) is drawn
as inline SVG: prompt positions along x (scaled so every column fits the window), embeddings, layers and
logits up y; only the strongest edges are drawn (500 by default, a control sets how many), one SVG path per
sign and strength bucket. Clicking a node highlights its paths over the drawn edges and shows its edges
and, for a feature with a dashboard record, its statistics; nodes can be pinned and grouped into
supernodes, and the graph downloads again as JSON with those choices in ``qParams``. All data is embedded
as JSON (``<``, ``>`` and ``&`` escaped) and model text only ever reaches the page through ``textContent``.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from ..atomic import atomic_path
from ..features.dashboard import _js

RECORD_KEYS = ("i", "label", "density", "max", "top")
NOT_FEATURES = ("embedding", "logit", "mlp reconstruction error")


def feature_key(node_id: str) -> str:
    """``"{layer}_{feature}"`` of a feature node id ``"{layer}_{feature}_{pos}"``."""
    return "_".join(node_id.split("_")[:2])


def _slim(rec: dict) -> dict:
    """The parts of a dashboard feature record the viewer shows (logit effects without their histogram)."""
    out = {k: rec[k] for k in RECORD_KEYS if k in rec}
    lg = rec.get("logits")
    out["logits"] = {"pos": lg.get("pos", []), "neg": lg.get("neg", [])} if lg else None
    return out


def _record_tokens(rec: dict) -> set[int]:
    ids = {int(t) for ex in rec.get("top", []) for t in ex[0]}
    if rec["logits"]:
        ids |= {int(t) for t, _ in rec["logits"]["pos"] + rec["logits"]["neg"]}
    return ids


def viewer_data(graph: dict, features: dict[str, dict] | None = None, tokens: dict[int, str] | None = None,
                suggested: list[list[str]] | None = None) -> dict:
    """What the page needs besides the graph: records of the graph's feature nodes, their token strings,
    and suggested supernodes."""
    keys = {feature_key(n["node_id"]) for n in graph["nodes"] if n.get("feature_type") not in NOT_FEATURES}
    recs = {k: _slim(r) for k, r in (features or {}).items() if k in keys}
    used = set().union(*map(_record_tokens, recs.values())) if recs else set()
    toks = {str(i): s for i, s in (tokens or {}).items() if int(i) in used}
    return {"features": recs, "tokens": toks, "suggested": suggested or []}


def write_viewer(out: str | Path, graph: dict, *, features: dict[str, dict] | None = None,
                 tokens: dict[int, str] | None = None, suggested: list[list[str]] | None = None,
                 title: str = "") -> Path:
    """Write the viewer of ``graph`` to the file ``out`` (atomically) and return its path.

    ``features`` maps ``"{layer}_{feature}"`` to a record shaped like
    :func:`llmri.features.dashboard.feature_record`'s, ``tokens`` maps the token ids in those records to
    text, ``suggested`` lists supernodes (``[label, node ids...]``) offered for one-click grouping."""
    title = title or f"attribution graph · {graph.get('metadata', {}).get('slug', '')}".rstrip(" ·")
    env = jinja2.Environment(loader=jinja2.PackageLoader("llmri", "templates"), autoescape=True)
    html = env.get_template("graph.html.j2").render(
        title=title, graph=_js(graph), extra=_js({"title": title, **viewer_data(graph, features, tokens, suggested)}))
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out
