"""The first ``llmri trace`` without ``--transcoders``: what it costs and how good its graphs are.

    python benchmarks/first_trace.py [--expansion 2 --k 32 --skip --cache-tokens 40960 --train-tokens 327680]
                                     [--root DIR] [--prompts 8] [--max-features 4096]

Builds the default transcoder set (``llmri.circuits.default_transcoders``) with the given config into
``--root`` (a fresh temporary folder by default, so the caching and training really run; a root that
already holds the set measures the reuse instead), traces the first known-behaviour prompt as ``llmri trace``
does (attribution, pruning, scores, validation of 20 features, feature panels from 16k corpus tokens), then
attributes the other prompts of ``examples/circuits/known_behaviours.py`` (attribution and scores only).

Prints one JSON line: the config, the seconds of each part (model load, estimate, caching, training, the
first trace, their sum = the first call), the up-front estimate, per-prompt replacement/completeness with
their means, and the ratio of those means to the README's 4× set (2,304 latents, k = 32, skip, 80k cached
tokens, 480k token-steps: replacement 0.375, completeness 0.819 over the same 8 prompts, 4,096 feature rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import emit, log, machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "circuits"))

import llmri  # noqa: E402
from llmri.circuits import AttributionConfig, DefaultTranscoders, attribute, default_transcoders, load_transcoders, scores  # noqa: E402
from llmri.circuits.pipeline import TraceConfig, trace  # noqa: E402
from known_behaviours import PROMPTS  # noqa: E402

README_4X = {  # examples/circuits table in README.md: (replacement, completeness) per prompt
    "The capital of France is": (0.394, 0.825),
    "The Eiffel Tower is located in the city of": (0.360, 0.812),
    "The opposite of hot is": (0.296, 0.771),
    "2 + 2 = ": (0.334, 0.811),
    "5 - 3 = ": (0.366, 0.826),
    "Mr and Mrs Dursley, of number four, Privet Drive. Mr and Mrs": (0.376, 0.821),
    "The cat sat on the mat. The cat sat on the": (0.432, 0.839),
    "One, two, three, four,": (0.440, 0.846),
}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    d = DefaultTranscoders()
    ap.add_argument("--expansion", type=float, default=d.expansion)
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument("--skip", action=argparse.BooleanOptionalAction, default=d.skip)
    ap.add_argument("--cache-tokens", type=int, default=d.cache_tokens)
    ap.add_argument("--train-tokens", type=int, default=d.train_tokens)
    ap.add_argument("--root", default=None, help="where the set is cached (default: a fresh temporary folder, removed after)")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the known-behaviour prompts to score")
    ap.add_argument("--max-features", type=int, default=4096)
    a = ap.parse_args()
    os.environ.setdefault("LLMRI_LOG_SECONDS", "60")

    cfg = DefaultTranscoders(expansion=a.expansion, k=a.k, skip=a.skip, cache_tokens=a.cache_tokens,
                             train_tokens=a.train_tokens)
    root = Path(a.root) if a.root else Path(tempfile.mkdtemp(prefix="llmri-first-trace-"))
    load_start, cpu_start, wall_start = os.getloadavg()[0], _cpu(), time.perf_counter()
    t0 = time.perf_counter()
    model = llmri.load_model()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = default_transcoders(model, cfg, root=root)
    set_s = time.perf_counter() - t0
    built = json.loads((run.parent / "complete.json").read_text())["seconds"]
    tcs = load_transcoders(run, model.n_layers)
    rows = []
    trace_s = None
    with tempfile.TemporaryDirectory() as out:
        for i, (kind, prompt, expected) in enumerate(PROMPTS[: a.prompts]):
            t0 = time.perf_counter()
            if i == 0:  # as `llmri trace` does it (its feature panels are not cached without --transcoders)
                tc = TraceConfig(attribution=AttributionConfig(max_feature_nodes=a.max_features))
                s = trace(model, tcs, prompt, Path(out) / "trace", tc)
                trace_s = time.perf_counter() - t0
                rep, comp, attr_s = s["replacement_score"], s["completeness_score"], s["seconds"]["attribution"]
            else:
                g = attribute(model, tcs, prompt, AttributionConfig(max_feature_nodes=a.max_features))
                sc = scores(g)
                rep, comp, attr_s = round(sc.replacement, 4), round(sc.completeness, 4), g.meta.get("seconds")
            ref = README_4X[prompt]
            rows.append({"prompt": prompt, "replacement": rep, "completeness": comp, "readme_4x": list(ref),
                         "attribution_s": attr_s, "wall_s": round(time.perf_counter() - t0, 1)})
            log(json.dumps(rows[-1]))
    n = len(rows)
    mean = {k: round(sum(r[k] for r in rows) / n, 4) for k in ("replacement", "completeness")} if n else {}
    ref = {k: round(sum(README_4X[r["prompt"]][j] for r in rows) / n, 4) for j, k in enumerate(("replacement", "completeness"))} if n else {}
    first_call = load_s + set_s + (trace_s or 0.0)
    # contention check: the share of the torch threads' wall time this process got (≈ 1 on an idle machine;
    # another busy process on the same cores makes every time above longer)
    cpu_share = (_cpu() - cpu_start) / ((time.perf_counter() - wall_start) * torch.get_num_threads())
    emit({"benchmark": "first_trace", "config": cfg.key_fields(), "latents": tcs.n_features, "layers": model.n_layers,
          "seconds": {"model_load": round(load_s, 1), "estimate": built.get("estimate"), "cache": built.get("cache"),
                      "train": built.get("train"), "set_total": round(set_s, 1),
                      "trace": round(trace_s, 1) if trace_s is not None else None, "first_call": round(first_call, 1)},
          "estimated": {"cache": round(built.get("estimated_cache", 0), 1), "train": round(built.get("estimated_train", 0), 1)},
          "cache_tok_s": round(cfg.cache_tokens / built["cache"], 1) if built.get("cache") else None,
          "train_tok_s": round(cfg.train_tokens / built["train"], 1) if built.get("train") else None,
          "prompts": rows, "mean": mean, "readme_4x_mean": ref,
          "ratio_to_readme_4x": {k: round(mean[k] / ref[k], 3) for k in mean},
          "cpu_share": round(cpu_share, 2), "loadavg_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
          "machine": machine()})
    if not a.root:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
