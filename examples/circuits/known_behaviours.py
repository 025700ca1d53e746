"""Trace prompts where SmolLM2-135M-Instruct gets the answer right and tabulate the graphs.

    python examples/circuits/known_behaviours.py --transcoders RUN [--out examples/circuits]

For each prompt: the model's top next token (and whether it is the expected one), replacement and
completeness scores, graph size before/after pruning, wall time, and the validation correlation
(predicted vs. measured top-logit change when ablating the 20 most influential features, attention
frozen, norms recomputed). Each graph is written to OUT/<slug>/ (pruned graph JSON in the circuit-tracer
schema, gzipped; summary.json; the offline viewer for the first ``--viewers`` prompts — a few MB each, so the
rest are left out of the repo: ``llmri trace "PROMPT" -t RUN`` rebuilds one); the table goes to OUT/table.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import llmri
from llmri.circuits import load_transcoders
from llmri.circuits.attribution import attribute
from llmri.circuits.pipeline import TraceConfig, slug_of, write_trace

PROMPTS = [
    ("factual recall", "The capital of France is", " Paris"),
    ("factual recall", "The Eiffel Tower is located in the city of", " Paris"),
    ("antonym", "The opposite of hot is", " cold"),
    ("arithmetic", "2 + 2 = ", "4"),
    ("arithmetic", "5 - 3 = ", "2"),
    ("induction", "Mr and Mrs Dursley, of number four, Privet Drive. Mr and Mrs", " D"),
    ("induction", "The cat sat on the mat. The cat sat on the", " mat"),
    ("counting", "One, two, three, four,", " five"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--max-features", type=int, default=4096)
    ap.add_argument("--feature-tokens", type=int, default=16_384)
    ap.add_argument("--viewers", type=int, default=1)
    a = ap.parse_args()
    model = llmri.load_model()
    tcs = load_transcoders(a.transcoders, model.n_layers)
    cfg = TraceConfig(feature_tokens=a.feature_tokens)
    cfg.attribution.max_feature_nodes = a.max_features
    rows = []
    for kind, prompt, expected in PROMPTS:
        t0 = time.perf_counter()
        graph = attribute(model, tcs, prompt, cfg.attribution)
        s = write_trace(model, tcs, graph, Path(a.out) / slug_of(prompt), cfg, transcoder_path=a.transcoders,
                        slug=slug_of(prompt))
        folder = Path(a.out) / slug_of(prompt)
        (folder / "attribution.safetensors").unlink()  # the full matrix stays out of the repo
        (folder / "attribution.json").unlink()
        gj = folder / f"{slug_of(prompt)}.json"
        gj.with_suffix(".json.gz").write_bytes(gzip.compress(gj.read_bytes(), 9))
        gj.unlink()
        if len(rows) >= a.viewers:
            (folder / "index.html").unlink()
        wall = time.perf_counter() - t0
        top = model.tokenizer.decode([int(graph.logit_tokens[0])])
        rows.append({"kind": kind, "prompt": prompt, "top": top, "p": round(float(graph.logit_probs[0]), 3),
                     "correct": top.strip().startswith(expected.strip()), "tokens": graph.n_pos,
                     "replacement": s["replacement_score"], "completeness": s["completeness_score"],
                     "active": s["active_features"], "nodes": s["nodes"], "edges": s["edges"],
                     "pruned_nodes": s["pruned_nodes"], "pruned_edges": s["pruned_edges"],
                     "attribution_s": s["seconds"]["attribution"], "wall_s": round(wall, 1),
                     "validation_r": s["validation"]["pearson"], "slug": slug_of(prompt)})
        print(json.dumps(rows[-1]), flush=True)
    head = ("| behaviour | prompt | top token (p) | replacement | completeness | nodes / edges | pruned nodes / edges "
            "| attribution s (wall s) | validation r |\n|---|---|---|---|---|---|---|---|---|\n")
    link = lambda i, r: f"{r['slug']}/index.html" if i < a.viewers else f"{r['slug']}/{r['slug']}.json.gz"  # noqa: E731
    body = "".join(
        f"| {r['kind']} | [{r['prompt']}]({link(i, r)}) | `{r['top']!r}` ({r['p']}){'' if r['correct'] else ' ✗'} "
        f"| {r['replacement']:.3f} | {r['completeness']:.3f} | {r['nodes']:,} / {r['edges']:,} "
        f"| {r['pruned_nodes']:,} / {r['pruned_edges']:,} | {r['attribution_s']} ({r['wall_s']}) | {r['validation_r']:.2f} |\n"
        for i, r in enumerate(rows))
    (Path(a.out) / "table.md").write_text(head + body)
    (Path(a.out) / "table.json").write_text(json.dumps(rows, indent=1))
    print(head + body)


if __name__ == "__main__":
    main()
