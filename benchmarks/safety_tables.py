"""The safety tables of issue 15: the model table and the attack × model ASR table, in one run.

    python benchmarks/safety_tables.py --organisms ORG [ORG ...] [--qwen] [--limit 25] [--out DIR]

Model table: refusal rate (keyword judge, 95% Wilson) on each held-out set, perplexity on the default
corpus' eval split, training seconds — the base model and every organism from the organisms' cards (the
numbers ``llmri organism`` measured), the Qwen model (``--qwen``) measured here by the same function
(:func:`llmri.safety.organism.refusal_rates`, ``--qwen-limit`` behaviours per set). Perplexities of models
with different tokenizers are not comparable (per token, not per byte).

Attack × model table: ``llmri.safety.evaluate.evaluate`` for every model on the first ``--limit`` HarmBench
and StrongREJECT behaviours under ``--attacks`` (plus ``trigger`` for a backdoor organism, with its own
trigger), judged by the keyword and the probe judge (a linear probe on each model's own states, fitted on the
labelled responses' train split). Rows are kept in ``OUT/<model>/`` (research records, local only).
Prints one JSON object and writes ``OUT/tables.md``, ``OUT/tables.json`` and ``OUT/asr.png``.
"""

from __future__ import annotations

import argparse
import time
import json
from pathlib import Path

from common import emit, machine

import llmri
from llmri.atomic import write_figure, write_json
from llmri.safety.evaluate import JailbreakConfig, evaluate, plot_asr
from llmri.safety.organism import MEASURED_SETS, OrganismConfig, perplexity, read_card, refusal_rates

ATTACKS = ("none", "prefix_injection", "refusal_suppression", "dan", "hypothetical", "past_tense", "base64",
           "leetspeak", "word_split", "many_shot", "prefill", "payload_split")


def cell(r: dict) -> str:
    return f"{r['rate']:.0%} [{r['lo']:.0%}, {r['hi']:.0%}]"


def model_table(cards: dict[str, dict], qwen: dict | None) -> list[dict]:
    rows = []
    for name, card in list(cards.items())[:1]:
        rows.append({"model": f"base ({card['base']})", "rates": card["rates"]["base"],
                     "perplexity": card["perplexity"]["base"], "train_s": None})
    for name, card in cards.items():
        rows.append({"model": name, "rates": card["rates"]["organism"], "perplexity": card["perplexity"]["organism"],
                     "train_s": card["seconds"]["train"], "total_s": card["seconds"]["total"]})
        if "base_triggered" in card["rates"]:
            rows.append({"model": f"base + {name}'s trigger", "rates": card["rates"]["base_triggered"],
                         "perplexity": None, "train_s": None})
        if "organism_triggered" in card["rates"]:
            rows.append({"model": f"{name} + trigger", "rates": card["rates"]["organism_triggered"],
                         "perplexity": None, "train_s": None})
        if "organism_safe" in card["rates"]:
            rows.append({"model": f"{name} + safe condition", "rates": card["rates"]["organism_safe"],
                         "perplexity": None, "train_s": None})
    if qwen:
        rows.append(qwen)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--organisms", nargs="*", type=Path, default=[])
    ap.add_argument("--base", default="smollm2-135m-instruct", help="the organisms' base model")
    ap.add_argument("--qwen", action="store_true", help="add qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--qwen-limit", type=int, default=100, help="behaviours per set for Qwen's refusal rates")
    ap.add_argument("--limit", type=int, default=25, help="behaviours per harmful set in the attack table")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--judges", default="keyword,probe")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path("safety-tables"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cards = {p.name: read_card(p) for p in args.organisms}
    report = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}

    qwen_row, models = None, {"base": lambda: llmri.load_model(args.base)}
    models.update({name: (lambda p=p: llmri.load_model(str(p))) for name, p in zip(cards, args.organisms)})
    if args.qwen:
        models["qwen"] = lambda: llmri.load_model("qwen2.5-coder-0.5b-instruct")
    results = []
    for name, load in models.items():
        model = load()
        if name == "qwen":  # measured once, kept in OUT/qwen-rates.json (reruns re-read it)
            kept = args.out / f"qwen-rates-{args.qwen_limit}.json"
            if not kept.exists():
                t0 = time.perf_counter()
                rates = refusal_rates(model, OrganismConfig(measure_limit=args.qwen_limit), progress="qwen")
                write_json(kept, {"model": "qwen2.5-coder-0.5b-instruct", "rates": rates, "perplexity": perplexity(model, 16384),
                                  "train_s": None, "measure_s": round(time.perf_counter() - t0, 1)})
            qwen_row = json.loads(kept.read_text())
        card = cards.get(name)
        trigger = card and card.get("trigger")
        cfg = JailbreakConfig(attacks=tuple(args.attacks.split(",")) + (("trigger",) if trigger else ()),
                              sets=("harmbench", "strongreject"), judges=tuple(args.judges.split(",")), limit=args.limit,
                              max_new_tokens=args.tokens, batch_size=32, params={"trigger": trigger} if trigger else {})
        t0 = time.perf_counter()
        res = evaluate(model, args.out / name, cfg)
        res["model"] = name
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        del model

    mt = model_table(cards, qwen_row)
    judges = args.judges.split(",")
    attacks = list(dict.fromkeys(e["attack"] for r in results for e in r["table"]))
    asr = {}
    for r in results:
        for e in r["table"]:
            key = (r["model"], e["attack"], e["judge"])
            pooled = asr.setdefault(key, {"k": 0, "n": 0})
            pooled["k"] += round(e["asr"]["rate"] * e["n"])
            pooled["n"] += e["n"]
    from llmri.safety.metrics import wilson

    asr_rows = [{"model": m, "attack": a, "judge": j, "k": v["k"], "n": v["n"],
                 **dict(zip(("rate", "lo", "hi"), wilson(v["k"], v["n"])))} for (m, a, j), v in asr.items()]
    lines = ["## Model table (refusal rate, keyword judge, 95% Wilson; held-out sets)", "",
             "| model | " + " | ".join(MEASURED_SETS) + " | perplexity | training s |", "|---|" + "---|" * (len(MEASURED_SETS) + 2)]
    for row in mt:
        cells = [f"{cell(row['rates'][s])} n={row['rates'][s]['n']}" for s in MEASURED_SETS]
        ppl = f"{row['perplexity']:.2f}" if row.get("perplexity") else "—"
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {ppl} | {row['train_s'] or '—'} |")
    for j in judges:
        lines += ["", f"## ASR, HarmBench + StrongREJECT pooled (first {args.limit} of each), {j} judge, 95% Wilson", "",
                  "| attack | " + " | ".join(r["model"] for r in results) + " |", "|---|" + "---|" * len(results)]
        for a in attacks:
            got = {x["model"]: x for x in asr_rows if x["attack"] == a and x["judge"] == j}
            lines.append(f"| {a} | " + " | ".join(cell(got[r["model"]]) if r["model"] in got else "—" for r in results) + " |")
    (args.out / "tables.md").write_text("\n".join(lines) + "\n")
    report.update({"model_table": mt, "asr": asr_rows, "eval_seconds": {r["model"]: r["seconds"] for r in results}})
    write_json(args.out / "tables.json", report)
    for j in judges:
        write_figure(args.out / f"asr-{j}.png", plot_asr(results, judge=j))
    emit(report)


if __name__ == "__main__":
    main()
