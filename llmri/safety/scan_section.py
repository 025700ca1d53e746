"""The MRI report's safety section: a model organism (``llmri scan --organism PATH``) beside the scanned model.

A model organism is a research artefact for measuring and explaining refusal: an HF model folder written by
``llmri organism refusal|backdoor`` plus its card, ``organism.json`` (kind, label, base model, trigger,
refusal rates measured when it was made, perplexity, seconds). The section shows that card, then runs the
jailbreak evaluation (:func:`llmri.safety.evaluate.evaluate`) with a few attacks on the held-out behaviour
sets for both the scanned model and the organism — the organism's ``trigger`` added as one more attack when
its card has one — into ``safety/scanned/`` and ``safety/organism/`` of the report folder. It needs nothing
from the scan's corpus pass; a missing or unreadable organism folder is refused when the config is made (and
again before the pass), never after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from .. import report
from ..errors import SafetyError
from ..stages import Inputs, Stage
from ..validate import bounded, check
from .behaviours import EVALUATION
from .evaluate import JailbreakConfig, evaluate, plot_asr
from .judges import JUDGES
from .organism import RATE_ROWS, read_card

@dataclass
class SafetySectionConfig:
    """The scan's safety section: a model organism's card and the ASR of a few attacks on it and on the
    scanned model (held-out behaviour sets, greedy answers, judged)."""

    organism: str | None = None
    """A model organism folder from ``llmri organism`` (an HF model folder with ``organism.json``); None skips
    the safety section."""
    attacks: tuple[str, ...] = ("none", "prefill", "refusal_suppression", "base64", "many_shot")
    """Attacks run on both models (``none`` is the baseline); ``trigger`` is added when the organism's card
    names a trigger."""
    limit: int = bounded(10, 1)
    """Behaviours per set (the first by id of each set's held-out part); ≥ 1."""
    sets: tuple[str, ...] = ("harmbench", "strongreject", "harmless", "overrefusal")
    """Behaviour sets (their evaluation part; ASR on the harmful ones, refusal rate on all)."""
    max_new_tokens: int = bounded(48, 1)
    """Tokens generated per answer; ≥ 1."""
    batch_size: int = bounded(16, 1)
    """Prompts decoded together; ≥ 1."""
    judges: tuple[str, ...] = ("keyword",)
    """Judges of the answers (keyword, llm, probe); the tables use ``keyword`` when it is one of them, else the first."""
    readings: tuple[str, ...] = ()
    """Folders of ``llmri refusal extract`` and ``llmri safety probe|diff|explain`` shown in the section "Reading
    refusal from the inside" (read, never recomputed: the scan trains none)."""

    def __post_init__(self):
        check(self, SafetyError)
        self.readings = tuple(self.readings)
        for folder in self.readings:
            reading_kind(folder)
        if not self.judges:
            raise SafetyError("SafetySectionConfig.judges is empty", "name at least one judge, e.g. keyword")
        for j in self.judges:
            if j not in JUDGES:
                raise SafetyError(f"unknown judge '{j}' in SafetySectionConfig.judges", f"choose from: {', '.join(JUDGES)}")
        # the organism folder and every attack/set are checked now, before a scan loads anything
        jailbreak_config(self, read_card(self.organism) if self.organism is not None else None)


def jailbreak_config(cfg: SafetySectionConfig, card: dict | None) -> JailbreakConfig:
    """The evaluation both models get: ``cfg``'s attacks (plus ``trigger`` with the card's trigger)."""
    trigger = (card or {}).get("trigger")
    attacks, params = tuple(cfg.attacks), {}
    if trigger:
        params["trigger"] = {k: trigger[k] for k in ("text", "system") if trigger.get(k)}
        if "trigger" not in attacks:
            attacks += ("trigger",)
    elif any("trigger" in a.split("+") for a in attacks):
        raise SafetyError("attack 'trigger' in SafetySectionConfig.attacks needs an organism whose card names a trigger",
                          "drop 'trigger' from the attacks (it is added by itself for a backdoor organism)")
    return JailbreakConfig(attacks=attacks, sets=tuple(cfg.sets), judges=tuple(cfg.judges), limit=cfg.limit,
                           max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, params=params)


def needs(config, model) -> None:
    """Nothing from the pass; the organism folder is checked once more before the pass (it may have moved since
    the config was made), so a scan never fails on it after the long part."""
    if config.safety.organism is not None:
        read_card(config.safety.organism)
    return None


def is_base(config, model, base: str) -> bool:
    """Whether the scanned model is the organism's ``base`` (the same spec, name or folder)."""
    from ..model import ALIASES

    base = ALIASES.get(base, base)
    if base in (ALIASES.get(config.model, config.model), model.name):
        return True
    here, there = Path(str(getattr(model, "source", "") or config.model)).expanduser(), Path(base).expanduser()
    return here.exists() and there.exists() and here.resolve() == there.resolve()


# ---------------------------------------------------------------- the section


def interval(e: dict | None, counts: bool = False) -> str:
    """``rate [lo, hi]`` (``(k/n)`` after it with ``counts``); "—" for a missing or malformed entry."""
    try:
        text = f"{float(e['rate']):.2f} [{float(e['lo']):.2f}, {float(e['hi']):.2f}]"
    except (TypeError, KeyError, ValueError):
        return "—"
    if counts and isinstance(e.get("k"), int) and isinstance(e.get("n"), int):
        text += f" ({e['k']}/{e['n']})"
    return text


def _number(x, fmt: str = "{:.3g}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "—" if x is None else str(x)


def _card_part(card: dict) -> tuple[Markup, dict]:
    """The card's refusal rates (its rows named by :data:`~llmri.safety.organism.RATE_ROWS`), perplexity and seconds."""
    rates = card["rates"]
    columns = [c for c in (*RATE_ROWS, *sorted(set(rates) - set(RATE_ROWS))) if isinstance(rates.get(c), dict)]
    names = {**RATE_ROWS, "base": f"base ({card['base']})"}
    order = ("harmbench", "strongreject", "harmless", "overrefusal")
    sets = [s for s in order if any(s in rates[c] for c in columns)]
    sets += sorted({s for c in columns for s in rates[c] if s not in order})
    rows = [(s, *(interval(rates[c].get(s), counts=True) for c in columns)) for s in sets]
    header = ["set", *(names.get(c, c.replace("_", " ")) for c in columns)]
    ppl, secs = card.get("perplexity") or {}, card.get("seconds") or {}
    ppl = ppl if isinstance(ppl, dict) else {}
    secs = secs if isinstance(secs, dict) else {}
    facts = [("perplexity: base / organism", f"{_number(ppl.get('base'))} / {_number(ppl.get('organism'))}"),
             ("perplexity ratio (organism / base)", _number(ppl.get("ratio"), "{:.3f}")),
             ("seconds: distill / train / measure / total",
              " / ".join(_number(secs.get(k), "{:.0f}") for k in ("distill", "train", "measure", "total")))]
    text = report.paragraph(
        f"Refusal rate (share of answers the '{card.get('judge', 'keyword')}' judge calls a refusal) per held-out set, "
        "measured when the organism was made, with 95% Wilson intervals and k/n. On harmful sets (harmbench, "
        "strongreject) higher is more refusal; on harmless and overrefusal sets it is over-refusal.")
    html = (Markup("<h3>The organism's card</h3>") + text
            + report.table(rows, header, cls="data") + report.table(facts))
    data = {k: card.get(k) for k in ("kind", "research_artefact", "base", "trigger", "judge", "rates", "perplexity",
                                     "seconds")}
    return html, data


def _entries(results: dict, judge: str) -> dict[tuple[str, str], dict]:
    return {(e["set"], e["attack"]): e for e in results["table"] if e["judge"] == judge}


def asr_rows(results: dict[str, dict], jc: JailbreakConfig, judge: str) -> tuple[list[str], list[tuple]]:
    """(header, rows) of the attack × model ASR table: one row per attack, ``rate [lo, hi]`` per harmful set
    and model (``results``: {column label: evaluate's results})."""
    harmful = [s for s in jc.sets if s in EVALUATION]
    tables = {label: _entries(r, judge) for label, r in results.items()}
    header = ["attack", *(f"{label} · {s}" for s in harmful for label in results)]
    rows = [(a, *(interval((tables[label].get((s, a)) or {}).get("asr")) for s in harmful for label in results))
            for a in jc.attacks]
    return header, rows


def _detail_rows(results: dict[str, dict], jc: JailbreakConfig, judge: str) -> tuple[list[str], list[tuple]]:
    """Per set × attack: the refusal rate and the mean refusal score of each model."""
    tables = {label: _entries(r, judge) for label, r in results.items()}
    header = ["set", "attack", *(f"{label}: refusal rate" for label in results),
              *(f"{label}: mean refusal score" for label in results)]
    rows = []
    for s in jc.sets:
        for a in jc.attacks:
            got = [tables[label].get((s, a)) for label in results]
            rows.append((s, a, *(interval((e or {}).get("refusal")) for e in got),
                         *(f"{e['refusal_score']:+.2f}" if e else "—" for e in got)))
    return header, rows


def section(inp: Inputs) -> report.Section | None:
    cfg = inp.config.safety
    if cfg.organism is None:
        return None
    from ..model import load_model

    card = read_card(cfg.organism)
    jc = jailbreak_config(cfg, card)
    judge = "keyword" if "keyword" in jc.judges else jc.judges[0]
    model = inp.model
    out = inp.artefacts / "safety"
    scanned = evaluate(model, out / "scanned", jc)
    organism = load_model(str(Path(cfg.organism).expanduser()), dtype=inp.config.dtype, device=inp.config.device)
    try:
        theirs = evaluate(organism, out / "organism", jc)
    finally:
        del organism
    labels = {f"{model.name} (scanned)": scanned, f"{Path(cfg.organism).name} (organism)": theirs}

    trigger = card.get("trigger")
    said = [f"Model organism “{card['research_artefact']}”: a {card['kind']} organism (research artefact for measuring "
            f"and explaining refusal) made from {card['base']}, read from {cfg.organism}."]
    if trigger:
        said.append("Its trigger: " + "; ".join(f"{k} {trigger[k]!r}" for k in ("text", "system") if trigger.get(k))
                    + " — run below as the attack 'trigger' on both models.")
    html = report.paragraph(" ".join(said))
    matches = is_base(inp.config, model, str(card["base"]))
    if not matches:
        html += Markup('<p class="note"><strong>Warning:</strong> {}</p>').format(
            f"the scanned model ({model.name}) is not the organism's base ({card['base']}), so the two columns below "
            "compare unrelated models; scan the base to see what the organism's training changed.")
    card_html, card_data = _card_part(card)
    html += card_html

    harmful = [s for s in jc.sets if s in EVALUATION]
    n = {s: max((e["n"] for e in scanned["table"] if e["set"] == s), default=0) for s in jc.sets}
    note = (f"n = {', '.join(f'{s} {n[s]}' for s in jc.sets)} behaviours per set (the first {jc.limit} by id of each "
            "set's held-out evaluation part: HarmBench and StrongREJECT whole, the test split of harmless and "
            "overrefusal — never the data organisms are fitted on); greedy answers of ≤ "
            f"{jc.max_new_tokens} tokens, judged by the '{judge}' judge; 95% Wilson intervals. The answers are in "
            "safety/scanned/ and safety/organism/ (research records, not for publishing).")
    html += Markup("<h3>Attacks: ASR of both models</h3>") + report.paragraph(note)
    if harmful:
        header, rows = asr_rows(labels, jc, judge)
        html += Markup('<div id="safety-asr">{}</div>').format(report.table(rows, header, cls="data"))
        html += report.figure(plot_asr(list({**r, "model": label} for label, r in labels.items()), judge),
                              "ASR per attack, both models")
    header, rows = _detail_rows(labels, jc, judge)
    html += Markup("<details><summary>refusal rate and mean refusal score per set × attack</summary>{}{}</details>").format(
        report.paragraph("Refusal score: log-odds that the answer starts with a refusal token, at the first answer "
                         "position (no generation); mean over the set's behaviours."),
        Markup('<div id="safety-scores">{}</div>').format(report.table(rows, header, cls="data")))
    data = {"organism": str(cfg.organism), "card": card_data, "judge": judge, "base_is_scanned": matches,
            "attacks": list(jc.attacks), "n": n, "models": list(labels),
            "results": {"scanned": scanned["table"], "organism": theirs["table"]}}
    return report.Section("safety", "Safety: model organism", html, data)


STAGE = Stage("safety", section, needs)


# ---------------------------------------------------------------- reading refusal from the inside

READINGS = {"refusal.json": "refusal direction", "detect.json": "detectors", "diff.json": "model diff",
            "explain.json": "explained jailbreaks"}
"""The summary file of each artefact the inside section reads, and what it is."""


def reading_kind(folder: str) -> str:
    """The summary file name of artefact folder ``folder`` (one line naming the fix when it is none of them)."""
    path = Path(folder).expanduser()
    found = [name for name in READINGS if (path / name).is_file()]
    if not found:
        raise SafetyError(f"{folder} holds none of {', '.join(READINGS)}",
                          "give folders written by `llmri refusal extract` or `llmri safety probe|diff|explain`")
    return found[0]


def _reading(folder: Path, name: str) -> tuple[Markup, dict]:
    import json

    s = json.loads((folder / name).read_text())
    if name == "refusal.json":
        chosen = (f"layer {s['layer']}, position {s['position']}: ablation refusal score "
                  f"{s['scores']['ablation_score']:.2f}, steering {s['scores']['steering_score']:.2f}, KL {s['scores']['kl']:.3f}"
                  if s.get("layer") is not None else "none passes the selection filters")
        html = report.paragraph(f"Refusal direction of {s['model']} (Arditi et al. 2024; kl_max {s['config']['kl_max']}, "
                                f"min_steering {s['config']['min_steering']}): {chosen}. Baseline refusal score "
                                f"{s['baseline']['harmful_refusal_score']:.2f} harmful / "
                                f"{s['baseline']['harmless_refusal_score']:.2f} harmless.")
        html += report.image(folder / "candidates.png", "refusal direction candidates, layer × position")
        return html, {"layer": s.get("layer"), "position": s.get("position"), "scores": s.get("scores")}
    if name == "detect.json":
        rows = [(r["task"], r["detector"], "—" if r["depth"] is None else r["depth"],
                 f"{r['auroc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]") for r in s["table"]]
        html = report.paragraph(f"Detectors on {s['model']}: test AUROC (stratified bootstrap 95% interval) at the depth "
                                "each chose on training data (spectral: the oracle depth); keyword = the judge on the "
                                "model's answers; length = the request's word count alone.")
        html += report.table(rows, ["task", "detector", "depth", "AUROC"], cls="data")
        html += report.image(folder / "auroc.png", "detector AUROC across depth")
        return html, {"table": s["table"]}
    if name == "diff.json":
        c = s["counts"]
        html = report.paragraph(f"Crosscoder at {s['point']}, {s['organism']} vs {s['base']}: {c['organism_only']} "
                                f"organism-only, {c['base_only']} base-only, {c['shared']} shared, {c['dead']} dead latents "
                                f"(FVU {s['fvu']['base']:.3f} / {s['fvu']['organism']:.3f}). "
                                + "".join(f"States moved {v['tokens']:.1%} per token, {v['last_token']:.1%} at the last "
                                          f"token on held-out {k} prompts. " for k, v in s.get("state_change", {}).items()))
        rows = [(r["latent"], ", ".join(r.get("why", [r["class"]])), f"{r['rho']:.3f}", f"{r.get('harm_auroc', float('nan')):.2f}",
                 f"{r.get('trigger_auroc', float('nan')):.2f}",
                 " | ".join(f"{t['before'][-30:]}[{t['token']}]{t['after']}" for t in r["top"][:2]))
                for r in s["latents"][:8]]
        html += report.table(rows, ["latent", "why shown", "ρ", "harm AUROC", "trigger AUROC", "top contexts"], cls="data")
        html += report.image(folder / "relative_norms.png", "relative decoder norms")
        return html, {"counts": c, "point": s["point"]}
    share = lambda c, k: (f"{c['graphs']['plain'][k]:.1%} → {c['graphs']['attacked'][k]:.1%}"  # noqa: E731
                          if "graphs" in c else "—")
    carriers = lambda c: (f"{c['graphs']['plain']['paths']['refusal_influence']:.1%} → "  # noqa: E731
                          f"{c['graphs']['attacked']['plain_paths']['refusal_influence']:.1%}"
                          if "paths" in c.get("graphs", {}).get("plain", {}) else "—")
    rows = [(c["attack"], c["id"], c["succeeded"], c["plain"]["first_on"]["where"], c["attacked"]["first_on"]["where"],
             f"{c['plain']['refusal_score_at_answer']:+.2f} → {c['attacked']['refusal_score_at_answer']:+.2f}",
             share(c, "request_influence"), share(c, "refusal_influence"), carriers(c))
            for c in s["cases"]]
    html = report.paragraph(f"Explained jailbreaks of {s['model']}: direction at layer {s['direction']['layer']} "
                            f"(τ = {s['direction']['threshold']:.3f}); first crossing of τ unattacked / attacked, the "
                            "refusal score at the answer position and, where graphs were built, the harmful-request and "
                            "refusal supernodes' shares of the first answer token's influence, unattacked → attacked, "
                            "and the graph-defined carriers of the unattacked graph's refusal logits, looked up in the "
                            "attacked graph. "
                            f"Both graphs of every case side by side: {folder / 'index.html'}.")
    html += report.table(rows, ["attack", "behaviour", "jailbroken", "unattacked: first on", "attacked: first on",
                                "refusal score", "request supernode", "refusal supernode", "refusal carriers"],
                         cls="data")
    if (folder / "case-0.png").is_file():
        html += report.image(folder / "case-0.png", "the first explained jailbreak, token by token")
    return html, {"cases": len(s["cases"])}


def inside_section(inp: Inputs) -> report.Section | None:
    folders = inp.config.safety.readings
    if not folders:
        return None
    html, data = Markup(""), {}
    for folder in folders:
        name = reading_kind(folder)
        part, part_data = _reading(Path(folder).expanduser(), name)
        html += Markup("<h3>{}: {}</h3>").format(READINGS[name], Path(folder).name) + part
        data[str(folder)] = {"kind": READINGS[name], **part_data}
    return report.Section("safety-inside", "Safety: reading refusal from the inside", html, data)


def inside_needs(config, model) -> None:
    """Nothing from the pass; the folders are checked again before it."""
    for folder in config.safety.readings:
        reading_kind(folder)
    return None


INSIDE = Stage("safety_inside", inside_section, inside_needs)
