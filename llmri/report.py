"""The MRI report: a self-contained offline HTML page assembled from sections.

Each capability contributes :class:`Section` objects (title, HTML body, JSON data). Rendering goes through
a Jinja2 template with autoescaping, so model and corpus text is always escaped; figures are embedded as
base64 PNG, heatmaps are plain HTML tables — no scripts or styles are fetched from anywhere.
"""

from __future__ import annotations

import base64
import io
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from .atomic import atomic_path, write_json


@dataclass
class Section:
    """One part of the report."""

    id: str
    """HTML anchor (letters, digits, dashes)."""
    title: str
    """Heading shown in the page and the navigation."""
    html: Markup
    """Body; build it from escaped pieces (``table``, ``figure``, ``heatmap``) or ``markupsafe.escape``."""
    data: dict = field(default_factory=dict)
    """Numbers behind the section, saved to ``scan.json``."""


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("llmri", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )


def render(title: str, sections: Sequence[Section], out_dir: str | Path, *, footer: str = "",
           extra: dict | None = None, artefacts: Path | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/scan.json`` atomically (the folder is replaced whole),
    together with everything sections left in the ``artefacts`` staging folder (e.g. trained SAEs)."""
    html = _env().get_template("report.html.j2").render(title=title, sections=sections, footer=footer)
    out_dir = Path(out_dir)
    with atomic_path(out_dir, directory=True, kind="report") as tmp:
        for entry in sorted(artefacts.iterdir()) if artefacts is not None else []:
            shutil.move(str(entry), tmp / entry.name)
        (tmp / "index.html").write_text(html)
        write_json(tmp / "scan.json", {"title": title, **(extra or {}), "sections": {s.id: s.data for s in sections}})
    return out_dir / "index.html"


# ---------------------------------------------------------------- building blocks


def figure(fig, alt: str) -> Markup:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return Markup('<img class="fig" alt="{}" src="data:image/png;base64,{}">').format(alt, data)


def image(path: str | Path, alt: str) -> Markup:
    """A PNG file (an artefact's figure) as an embedded image."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return Markup('<img class="fig" alt="{}" src="data:image/png;base64,{}">').format(alt, data)


def table(rows: Sequence[Sequence], header: Sequence[str] | None = None, cls: str = "kv") -> Markup:
    """A plain table; every cell is escaped unless it is already Markup."""
    head = Markup("").join(Markup("<th>{}</th>").format(h) for h in header) if header else Markup("")
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(Markup("").join(Markup("<td>{}</td>").format(_fmt(c)) for c in row)) for row in rows
    )
    return Markup('<table class="{}">{}{}</table>').format(cls, Markup("<thead><tr>{}</tr></thead>").format(head) if header else "", body)


def _fmt(value) -> object:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return value


def heatmap(values, row_labels: Sequence[str], col_labels: Sequence[str], *, caption: str,
            log: bool = True, dim_cols: Sequence[int] = ()) -> Markup:
    """A rows × columns heatmap as an HTML table: token strings as column heads (escaped), the exact value
    in each cell's tooltip. ``log`` colours by log10 (residual norms span 3 orders of magnitude);
    ``dim_cols`` are marked as excluded tokens (hatched heading)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    c = np.log10(np.maximum(v, 1e-12)) if log else v
    lo, hi = float(np.nanmin(c)), float(np.nanmax(c))
    span = hi - lo or 1.0
    dims = set(dim_cols)
    head = Markup("").join(
        Markup('<th class="tok{}" title="position {}">{}</th>').format(" excl" if j in dims else "", j, _visible(t))
        for j, t in enumerate(col_labels)
    )
    rows = []
    for i, label in enumerate(row_labels):
        cells = Markup("").join(
            Markup('<td style="background:{}" title="{} · {}: {:.4g}"></td>').format(
                _colour((c[i, j] - lo) / span), label, _visible(col_labels[j]), v[i, j]
            )
            for j in range(v.shape[1])
        )
        rows.append(Markup("<tr><th>{}</th>{}</tr>").format(label, cells))
    scale = f"colour: {'log10 ' if log else ''}value from {10**lo if log else lo:.3g} (dark) to {10**hi if log else hi:.3g} (bright)"
    return Markup('<figure class="heat"><table class="heat"><thead><tr><th></th>{}</tr></thead><tbody>{}</tbody></table>'
                  '<figcaption>{} — {}</figcaption></figure>').format(head, Markup("").join(rows), caption, scale)


def _visible(token: str) -> str:
    return token.replace("\n", "↵").replace(" ", "·") or "∅"


_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _colour(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    r, g, b = (round(a + (bb - a) * f) for a, bb in zip(_VIRIDIS[i], _VIRIDIS[i + 1]))
    return f"rgb({r},{g},{b})"


def paragraph(text: str) -> Markup:
    return Markup("<p>{}</p>").format(escape(text))
