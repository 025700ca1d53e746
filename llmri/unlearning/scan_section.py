"""The report's unlearning section: the table and Pareto plot of ``llmri unlearn`` runs (``--unlearning DIR,…``)."""

from __future__ import annotations

import json
from pathlib import Path

from markupsafe import Markup

from .. import report
from ..stages import Inputs, Stage
from .tasks import UnlearnError

COLUMNS = {"facts": [("forget", "forget p"), ("forget_paraphrased", "paraphrased p"), ("forget_truth_ratio", "forget R"),
                     ("retain", "retain p"), ("utility", "utility"), ("perplexity", "corpus ppl"),
                     ("mia_auroc", "MIA AUROC"), ("forget_quality", "forget quality"), ("distinct2", "distinct-2"),
                     ("quant4_forget", "4-bit: forget p"), ("relearn_forget_kept", "relearned: unseen half p"),
                     ("direction_forget", "direction ablated: forget p"),
                     ("seconds", "s")],
           "domain": [("forget", "forget ppl"), ("retain", "retain ppl"), ("distinct2", "distinct-2"), ("quant4_forget", "4-bit: forget ppl"),
                      ("relearn_forget_kept", "relearned: forget ppl"),
                      ("direction_forget", "direction ablated: forget ppl"), ("seconds", "s")]}
"""What the section shows per task kind (``table.json`` keys, headers)."""


def read_run(folder: str) -> dict:
    """``table.json`` of an ``llmri unlearn`` folder (one line naming the fix when there is none)."""
    path = Path(folder).expanduser() / "table.json"
    if not path.is_file():
        raise UnlearnError(f"{folder} holds no table.json", "give folders written by `llmri unlearn`")
    return json.loads(path.read_text())


def _cell(v) -> str:
    return "—" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def section(inp: Inputs) -> report.Section | None:
    folders = inp.config.unlearning
    if not folders:
        return None
    html, data = Markup(""), {}
    for folder in folders:
        t = read_run(folder)
        cols = COLUMNS["facts" if t["task"] == "facts" else "domain"]
        rows = [(r["method"], *(_cell(r.get(k)) for k, _ in cols)) for r in t["rows"]]
        html += Markup("<h3>{}: {}</h3>").format(t["task"], Path(folder).name)
        html += report.paragraph(
            "Each method starts from the same model. p = mean probability of the answer (facts; forget on the forget "
            "entities, retain on retain entities no method read), R = TOFU's truth ratio, utility = harmonic mean of "
            "retain p and mean(max(0, 1 − R)), distinct-2 = share of distinct bigrams in greedy answers to neutral prompts, MIA = loss-based membership AUROC of forget vs never-seen facts, forget "
            "quality = KS p-value against the retain-only model; ppl = eval-split perplexity (domain). Attacks on a "
            "copy: 4-bit round-to-nearest, relearning on one half of the forget set read on the other, and ablating "
            "the one direction along which the method moved the forget states most. Intervals "
            f"per measure are in {Path(folder) / '*/result.json'}.")
        html += report.table(rows, ["method", *(h for _, h in cols)], cls="data")
        if (Path(folder).expanduser() / "pareto.png").is_file():
            html += report.image(Path(folder).expanduser() / "pareto.png", "forget vs retain, one point per method × strength")
        data[str(folder)] = t
    return report.Section("unlearning", "Unlearning: what is removed, what is kept, what comes back", html, data)


def needs(config, model) -> None:
    """Nothing from the pass; the folders are checked before it."""
    for folder in config.unlearning:
        read_run(folder)
    return None


UNLEARNING = Stage("unlearning", section, needs)
