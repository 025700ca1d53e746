"""``llmri unlearn``: several methods on one task, side by side, each from the same original model.

    run_unlearning("organisms/facts", "runs/unlearn", ["ga", "npo", "rmu", "manifold"], RunConfig(task="facts"))

The folder holds ``run.json`` (task and settings; a rerun with other settings is refused), ``original.json``
(the model before unlearning, with the 4-bit, logit-lens and linear-lens attacks as references), ``retain_only.json``
(the gold standard, when ``retain_only`` names a model fine-tuned without the forget set, with the two lens
attacks as baselines; it may be given on a later rerun, and forget quality — TOFU's KS p-value between a
model's and the retain-only model's forget truth ratios, stored in every result — is computed for every row
when the table is written), one ``METHOD/result.json`` per method (its
:class:`~llmri.unlearning.methods.Outcome`, every measure of :mod:`llmri.unlearning.evaluate`, the attacks,
representation drift, the geometry view and a *trajectory*: the quick forget/retain reads as the method gets
stronger: every ``eval_every`` steps of a fine-tuning method, every rank up to ``rank`` of the manifold edit,
every clamp 0, 1, 2, 4, … up to ``sae_clamp`` of SAE clamping), and over them ``table.json``, ``table.md``,
``pareto.png``, ``representation.png``, ``geometry.png`` and ``diffusion.png``. A method whose result is on
disk is not run again, so an interrupted run resumes at the next method. Every file appears whole (written to a
temporary name, renamed).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..atomic import claimed, mark, same_run, write_figure, write_json
from ..progress import say
from ..validate import bounded, check, check_choice
from .methods import EDIT_METHODS, METHODS, UnlearnConfig, layers_of, mlp_outputs, rmu_layer, unlearn_model
from .tasks import TASKS, UnlearnError, make_task

KIND = "unlearning run"


@dataclass
class RunConfig:
    """Settings of :func:`run_unlearning` besides the methods' own (:class:`UnlearnConfig`)."""

    task: str = "facts"
    """One of :data:`~llmri.unlearning.tasks.TASKS`."""
    forget: str = "forget10"
    """Facts: the forget split (``forget01``, ``forget05``, ``forget10``)."""
    split: str = "test"
    """``test``, or ``validation`` (facts, cloze): forget and retain-eval sets of the same sizes carved out of
    retain-train, for choosing hyper-parameters without reading the test sets."""
    windows: int = bounded(64, 1)
    """Domain task: 64-token windows of each corpus the methods read; ≥ 1."""
    eval_every: int = bounded(10, 1)
    """Fine-tuning methods: steps between the trajectory's quick reads; ≥ 1."""
    relearn_steps: int = bounded(10, 0)
    """Relearning attack: fine-tuning steps on half the forget set (0: skip the attack); ≥ 0."""
    relearn_lr: float = bounded(2e-5, 0, lo_open=True)
    """Relearning attack: AdamW learning rate; > 0."""
    attacks: bool = True
    """Run the 4-bit attack (and relearning, unless ``relearn_steps`` is 0)."""
    ppl_tokens: int = bounded(8192, 128)
    """Tokens of each eval split read for perplexity; ≥ 128."""
    corpus: str = "sotu"
    """Facts: the corpus whose eval-split perplexity is the general utility (a bundled name or a path)."""
    method: UnlearnConfig = field(default_factory=UnlearnConfig)
    """The methods' settings (its ``method`` field is replaced by each method in turn)."""

    def __post_init__(self):
        from ..safety.facts import FORGET

        check(self, UnlearnError)
        if self.task not in TASKS:
            raise UnlearnError(f"unknown unlearning task {self.task!r}", f"use one of {', '.join(TASKS)}")
        if self.task == "facts":
            check_choice("forget split", self.forget, tuple(FORGET), UnlearnError)
        check_choice("split", self.split, ("test", "validation"), UnlearnError)
        if self.split == "validation" and self.task == "kjv":
            raise UnlearnError("the kjv task has no validation split", "use --split test, or the facts or cloze task")


def _settings(model_name: str, cfg: RunConfig) -> dict:
    """What makes two runs the same run (methods may be added and a retain-only model given later)."""
    c = asdict(cfg)
    c["method"].pop("method")
    return {"model": model_name, "config": c}


def _trajectory(model, task, cfg: UnlearnConfig, run: RunConfig) -> tuple[dict, list]:
    """Unlearn ``model`` in place; returns (outcome, [[strength, forget, retain], …])."""
    from .evaluate import clone, quick

    if cfg.method == "manifold":  # the statistics are read once for every rank
        t0 = time.perf_counter()
        stats = _stats(model, task, cfg)
        read = time.perf_counter() - t0
        points, rank = [], 1
        while rank < cfg.rank:
            m = clone(model)
            unlearn_model(m, task, replace(cfg, rank=rank), stats=stats)
            points.append([rank, *quick(m, task)])
            rank *= 2
        outcome = unlearn_model(model, task, cfg, stats=stats)
        outcome["seconds"] = round(outcome["seconds"] + read, 2)
        return outcome, points + [[cfg.rank, *quick(model, task)]]
    if cfg.method == "sae":  # the SAE and its features are made once for every strength
        from .clamp import prepare

        prepared = prepare(model, task, cfg)
        points, c = [], 0.0
        while c < cfg.sae_clamp:
            m = clone(model)
            unlearn_model(m, task, replace(cfg, sae_clamp=c), prepared=prepared)
            points.append([c, *quick(m, task)])
            c = 2 * c or 1.0
        outcome = unlearn_model(model, task, cfg, prepared=prepared)
        return outcome, points + [[cfg.sae_clamp, *quick(model, task)]]
    if cfg.method in EDIT_METHODS:
        outcome = unlearn_model(model, task, cfg)
        return outcome, [[1, *quick(model, task)]]
    points = []

    def on_step(step: int) -> None:
        if step % run.eval_every == 0 or step == cfg.steps:
            points.append([step, *quick(model, task)])

    return unlearn_model(model, task, cfg, on_step=on_step), points


def _stats(model, task, cfg: UnlearnConfig):
    layers = layers_of(cfg.edit_layers, model.n_layers)
    return mlp_outputs(model, task.forget, layers), mlp_outputs(model, task.retain, layers)


def _measured(lm, task, run: RunConfig, **extra) -> dict:
    """``measures`` (:func:`~llmri.unlearning.evaluate.measure`) and, for facts, every forget fact's truth ratio
    (``forget_truth_ratios``, in the order of ``task.facts["forget"]``), from which :func:`write_table` computes
    forget quality against whichever retain-only model the folder has — also one added by a later rerun."""
    from .evaluate import measure

    raw: dict = {}
    out = {**extra, "measures": measure(lm, task, ppl_tokens=run.ppl_tokens, corpus=run.corpus, keep_scores=raw)}
    if "forget" in raw:
        out["forget_truth_ratios"] = raw["forget"].truth_ratio.tolist()
    return out


def _attacks(model, task, run: RunConfig) -> dict:
    from .evaluate import lens_attack, linear_lens_attack, quantised, relearned

    if not run.attacks:
        return {}
    out = {"quant4": quantised(model, task)}
    if task.facts:
        out["lens"] = lens_attack(model, task)
        out["linear_lens"] = linear_lens_attack(model, task, run.corpus)
    if run.relearn_steps:
        out["relearn"] = relearned(model, task, run.relearn_steps, run.relearn_lr, run.method.seed)
    return out


def run_unlearning(model_spec: str, out: str | Path, methods: list[str], run: RunConfig | None = None, *,
                   retain_only: str | None = None, dtype: str = "float32", device: str = "cpu") -> dict:
    """Run ``methods`` on ``run.task`` from ``model_spec`` into ``out`` (module docstring); returns the table."""
    from ..model import load_model
    from .evaluate import clone, direction_ablated, drift, drift_rows, geometry, lens_attack, linear_lens_attack, states

    run = run or RunConfig()
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UnlearnError(f"unknown unlearning method {bad[0]!r}" if bad else "no unlearning method given",
                           f"use one or more of {', '.join(METHODS)}")
    if retain_only and (run.task != "facts" or run.split != "test"):
        raise UnlearnError("--retain-only is the gold standard of the facts task's test split", "drop --retain-only")
    out = Path(out)
    with claimed(out, KIND) as folder:
        model = load_model(model_spec, dtype=dtype, device=device)
        if set(methods) & set(EDIT_METHODS):  # refuse bad layers before an hour of measuring, not after
            layers_of(run.method.edit_layers, model.n_layers)
        if "rmu" in methods or "sae" in methods:
            rmu_layer(model, run.method)
        if "sae" in methods and run.method.sae:
            from .clamp import load_sae

            load_sae(run.method.sae, model, run.method)
        if run.task == "facts":
            from ..data import load_corpus

            load_corpus(run.corpus)  # a bad --corpus fails now, not after the first hour of measuring
        gold = (load_model(retain_only, dtype=dtype, device=device)
                if retain_only and not (folder / "retain_only.json").exists() else None)
        same_run(folder, _settings(model.name, run), "an unlearning run", UnlearnError)
        task = make_task(model, run.task, forget=run.forget, windows=run.windows, validation=run.split == "validation")
        if retain_only and (folder / "retain_only.json").exists():
            had = json.loads((folder / "retain_only.json").read_text())["model"]
            if had != retain_only:
                raise UnlearnError(f"{folder} already holds the retain-only model {had}, not {retain_only}",
                                   "use a new --out folder to compare with another retain-only model")
        if gold is not None:
            say("llmri: measuring the retain-only model")
            write_json(folder / "retain_only.json", _measured(gold, task, run, model=retain_only, attacks=(
                {"lens": lens_attack(gold, task), "linear_lens": linear_lens_attack(gold, task, run.corpus)}
                if run.attacks and task.facts else {})))
            del gold
        if not (folder / "original.json").exists():
            say("llmri: measuring the original model")
            write_json(folder / "original.json", _measured(model, task, run, model=model.name,
                                                           attacks=_attacks(model, task, replace(run, relearn_steps=0))))
        mark(folder, KIND)
        probe = drift_rows(model, task)
        before = {k: states(model, v) for k, v in probe.items()} if any(
            not (folder / n / "result.json").exists() for n in methods) else {}
        for name in methods:
            path = folder / name / "result.json"
            if path.exists():
                continue
            say(f"llmri: unlearning with {name}")
            cfg = replace(run.method, method=name)
            m = clone(model)
            outcome, points = _trajectory(m, task, cfg, run)
            if outcome.get("stopped"):
                say(f"llmri: {outcome['stopped']} (lower --lr); measuring those weights")
            after = {k: states(m, v) for k, v in probe.items()}
            attacks = _attacks(m, task, run)
            if run.attacks:
                attacks["direction"] = direction_ablated(m, task, before["forget"], after["forget"])
            result = {"method": name, "outcome": dict(outcome), "trajectory": points,
                      "drift": {k: drift(before[k], after[k]) for k in probe}, "geometry": geometry(before, after),
                      **_measured(m, task, run, attacks=attacks)}
            path.parent.mkdir(exist_ok=True)
            write_json(path, result)
            mark(folder, KIND, name)
            del m
        table = write_table(folder, task)
        mark(folder, KIND)
    return table


def _row(name: str, res: dict, task, gold: list[float] | None = None) -> dict:
    from ..safety.knowledge import ks_pvalue
    from .evaluate import headline

    m = res["measures"]
    forget, retain = headline(task, m)
    row = {"method": name, "forget": forget, "retain": retain}
    if task.facts:
        row |= {"forget_paraphrased": m["forget_paraphrased"]["probability"]["mean"],
                "forget_truth_ratio": m["forget"]["truth_ratio"]["mean"], "forget_top1": m["forget"]["top1"]["mean"],
                "retain_top1": m["retain"]["top1"]["mean"], "utility": m["utility"], "perplexity": m["perplexity"],
                "mia_auroc": m["mia"]["auroc"] if "mia" in m else None,
                "forget_quality": (ks_pvalue(res["forget_truth_ratios"], gold)
                                   if gold is not None and "forget_truth_ratios" in res else None)}
    row["distinct2"] = m["fluency"]["distinct2"]
    out = res.get("outcome", {})
    row |= {"seconds": out.get("seconds"), "flops": out.get("flops"), "stopped": out.get("stopped")}
    att = res.get("attacks") or {}
    if att.get("quant4"):
        q = att["quant4"]
        row["quant4_forget"] = q["forget"]["probability"]["mean"] if task.facts else q["forget_ppl"]
    if att.get("lens"):
        row["lens_forget_top1"] = att["lens"]["best"]["top1"]["mean"]
    if att.get("linear_lens"):
        row["linear_lens_forget_top1"] = att["linear_lens"]["best"]["top1"]["mean"]
    if att.get("direction"):
        row["direction_forget"] = att["direction"]["forget"]
    if att.get("relearn"):
        r = att["relearn"]
        row["relearn_forget_kept"] = r["forget_kept"]["probability"]["mean"] if task.facts else r["forget_ppl"]
    return row


def write_table(folder: Path, task) -> dict:
    """table.json, table.md and pareto.png from the results in ``folder``."""
    from ..atomic import atomic_path

    gold_path = folder / "retain_only.json"
    gold = json.loads(gold_path.read_text()) if gold_path.exists() else None
    ratios = gold.get("forget_truth_ratios") if gold else None
    rows = [_row("original", json.loads((folder / "original.json").read_text()), task, ratios)]
    if gold:
        rows.append(_row("retain-only", gold, task, ratios))
    results = {}
    for p in sorted(folder.glob("*/result.json")):
        results[p.parent.name] = json.loads(p.read_text())
        rows.append(_row(p.parent.name, results[p.parent.name], task, ratios))
    table = {"task": task.name, "rows": rows,
             "columns": "forget/retain: answer probability (facts) or eval-split perplexity (domain)"}
    write_json(folder / "table.json", table)
    with atomic_path(folder / "table.md") as tmp:
        tmp.write_text(markdown(table))
    _pareto(folder, task, rows, results)
    _drift_plot(folder, results)
    _geometry_plots(folder, results)
    return table


def markdown(table: dict) -> str:
    """The table as Markdown (numbers to 3 significant digits)."""
    rows = table["rows"]
    cols = [c for c in dict.fromkeys(c for r in rows for c in r) if c != "method"]

    def fmt(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + r["method"] + " | " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pareto(folder: Path, task, rows: list[dict], results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, res in results.items():
        pts = res.get("trajectory") or []
        if pts:
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", ms=3, label=name)
    for r in rows[: 2 if any(r["method"] == "retain-only" for r in rows) else 1]:
        ax.plot([r["forget"]], [r["retain"]], "k*" if r["method"] == "original" else "g*", ms=12, label=r["method"])
    if task.facts:
        ax.set_xlabel("forget: answer probability (lower is better)")
        ax.set_ylabel("retain-eval: answer probability (higher is better)")
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"forget: {task.corpora['forget']} eval perplexity (higher is better)")
        ax.set_ylabel(f"retain: {task.corpora['retain']} eval perplexity (lower is better)")
    ax.set_title(f"unlearning {task.name}: one point per method × strength")
    ax.legend(fontsize=8)
    write_figure(folder / "pareto.png", fig)


def _drift_plot(folder: Path, results: dict) -> None:
    """representation.png: per-layer drift of forget (solid) and retain (dashed) states, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, res) in enumerate(results.items()):
        d = res.get("drift")
        if not d:
            continue
        colour = f"C{i % 10}"
        ax.plot(d["forget"], "-", color=colour, label=f"{name}: forget")
        ax.plot(d["retain"], "--", color=colour, label=f"{name}: retain")
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("‖h − h_original‖ / ‖h_original‖")
    ax.set_title("where each method moved the states")
    ax.legend(fontsize=7, ncol=2)
    write_figure(folder / "representation.png", fig)


def _geometry_plots(folder: Path, results: dict) -> None:
    """geometry.png (off-manifold ratio and forget states' intrinsic dimension per layer, one colour per method)
    and diffusion.png (per method: the original states' diffusion map with the moved forget states in it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = {name: res["geometry"] for name, res in results.items() if res.get("geometry")}
    if not views:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, g) in enumerate(views.items()):
        colour = f"C{i % 10}"
        ax.plot(g["off_manifold"]["forget"], "-", color=colour, label=f"{name}: forget")
        ax.plot(g["off_manifold"]["retain"], "--", color=colour, label=f"{name}: retain")
        bx.plot([d[0] for d in g["id"]["forget_after"]], "-", color=colour, label=name)
    first = next(iter(views.values()))
    bx.plot([d[0] for d in first["id"]["forget_before"]], "k--", label="original")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="layer (resid_post)", ylabel="off-manifold ratio (1: on the original states)",
           title="moved off the original model's states?")
    bx.set(xlabel="layer (resid_post)", ylabel="TwoNN intrinsic dimension", title="forget states' dimension")
    ax.legend(fontsize=7, ncol=2)
    bx.legend(fontsize=7)
    write_figure(folder / "geometry.png", fig)

    cols = min(4, len(views))
    rows = -(-len(views) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(views):]:
        ax.axis("off")
    for ax, (name, g) in zip(axes.flat, views.items()):
        d = g["diffusion"]
        if "error" in d:
            ax.set(title=f"{name}: no diffusion map")
            ax.text(0.5, 0.5, d["error"][:60], ha="center", va="center", fontsize=6, wrap=True)
            continue
        for key, colour, label in (("retain_before", "0.7", "retain (original)"), ("forget_before", "C0", "forget (original)"),
                                   ("forget_after", "C3", f"forget ({name})")):
            xy = np.asarray(d[key]).reshape(-1, 2)
            ax.scatter(xy[:, 0], xy[:, 1], s=3, c=colour, label=label)
        ax.set(title=f"{name}: layer {d['layer']}", xlabel="ψ₁", ylabel="ψ₂")
        ax.legend(fontsize=6, markerscale=3)
    write_figure(folder / "diffusion.png", fig)
