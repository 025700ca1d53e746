"""CLI options take their defaults and help from the config dataclasses (one source of truth)."""

import ast
import dataclasses
import inspect
import subprocess
import sys

import pytest
import typer.main

from llmri.circuits.attribution import AttributionConfig
from llmri.circuits.pipeline import TraceConfig
from llmri.circuits.prune import PruneConfig
from llmri.cli import app, geometry_app, parse_count
from llmri.data import WindowSpec
from llmri.dictionaries.config import DictConfig, TrainConfig
from llmri.dictionaries.evaluate import EvalConfig
from llmri.features.autointerp import InterpConfig
from llmri.features.stats import FeatureConfig
from llmri.geometry.diffusion import DiffusionConfig
from llmri.geometry.layer_map import LayerMapConfig
from llmri.geometry.profile import ProfileConfig
from llmri.geometry.steer import SteerConfig
from llmri.options import count, first_sentence, joined
from llmri.scan import ScanConfig
from llmri.store import StoreConfig
from llmri.unlearning.run import RunConfig


def floats(text):
    return tuple(float(x) for x in text.split(","))


def words(text):
    return tuple(x for x in text.split(",") if x)


# command → {parameter: (config class, field, how the CLI reads its option string or None)}
CONVERTED = {
    "scan": {"model": (ScanConfig, "model", None), "corpus": (ScanConfig, "corpus", None),
             "out": (ScanConfig, "out", str),
             "stats_tokens": (ScanConfig, "stats.tokens", parse_count), "passages": (ScanConfig, "heatmaps.passages", None),
             "chat_prompt": (ScanConfig, "heatmaps.chat_prompt", None), "sae_layers": (ScanConfig, "saes.layers", None),
             "sae_tokens": (ScanConfig, "saes.tokens", parse_count),
             "circuit_prompt": (ScanConfig, "circuits.prompt", None),
             "transcoders": (ScanConfig, "circuits.transcoders", None),
             "geometry_points": (ScanConfig, "geometry.points", parse_count), "dtype": (ScanConfig, "dtype", None),
             "device": (ScanConfig, "device", None)},
    "cache": {"points": (StoreConfig, "points", None), "tokens": (StoreConfig, "tokens", parse_count),
              "corpus": (StoreConfig, "corpus", None), "context": (StoreConfig, "windows.context", None),
              "split": (StoreConfig, "windows.split", None), "store_dtype": (StoreConfig, "dtype", None),
              "shard_tokens": (StoreConfig, "shard_tokens", parse_count),
              "batch_size": (StoreConfig, "batch_size", None)},
    "train": {"kind": (DictConfig, "kind", None), "arch": (DictConfig, "arch", None), "k": (DictConfig, "k", None),
              "skip": (DictConfig, "skip", None), "sparsity_coeff": (DictConfig, "sparsity_coeff", None),
              "tokens": (TrainConfig, "tokens", parse_count), "batch_size": (TrainConfig, "batch_size", None),
              "lr": (TrainConfig, "lr", None), "seed": (TrainConfig, "seed", None),
              "compute_dtype": (TrainConfig, "dtype", None), "context": (WindowSpec, "context", None),
              "checkpoint_every": (TrainConfig, "checkpoint_every", None),
              "dead_tokens": (TrainConfig, "dead_tokens", parse_count),
              "eval_tokens": (EvalConfig, "tokens", parse_count),
              "ce_tokens": (EvalConfig, "ce_tokens", parse_count), "distribute": (TrainConfig, "distribute", None)},
    "eval": {"tokens": (EvalConfig, "tokens", parse_count), "ce_tokens": (EvalConfig, "ce_tokens", parse_count)},
    "dashboard": {"tokens": (FeatureConfig, "tokens", parse_count), "context": (FeatureConfig, "context", None),
                  "top_k": (FeatureConfig, "top_k", None), "seed": (FeatureConfig, "seed", None)},
    "interp": {"n_features": (InterpConfig, "n_features", None),
               "explain_examples": (InterpConfig, "explain_examples", None),
               "score_examples": (InterpConfig, "score_examples", None),
               "tokens": (FeatureConfig, "tokens", parse_count),
               "seed": (InterpConfig, "seed", None)},
    "trace": {"max_logits": (AttributionConfig, "max_logits", None),
              "logit_probability": (AttributionConfig, "logit_probability", None),
              "max_features": (AttributionConfig, "max_feature_nodes", None),  # 0 on the CLI is None (all)
              "batch_size": (AttributionConfig, "batch_size", None),
              "node_threshold": (PruneConfig, "node_threshold", None),
              "edge_threshold": (PruneConfig, "edge_threshold", None), "max_edges": (PruneConfig, "max_edges", None),
              "validate_top": (TraceConfig, "validate_top", None),
              "feature_tokens": (TraceConfig, "feature_tokens", parse_count), "corpus": (TraceConfig, "corpus", None)},
    "validate": {"top": (TraceConfig, "validate_top", None), "factor": (TraceConfig, "validate_factor", None),
                 "freeze": (TraceConfig, "validate_freeze", None)},
    "geometry id": {"points": (ProfileConfig, "points", parse_count), "per_window": (ProfileConfig, "per_window", None),
                    "position": (ProfileConfig, "position", None), "context": (ProfileConfig, "context", None),
                    "split": (ProfileConfig, "split", None), "kind": (ProfileConfig, "kind", None),
                    "control": (ProfileConfig, "control", None), "seed": (ProfileConfig, "seed", None)},
    "geometry diffusion": {"layer": (LayerMapConfig, "layer", None), "kind": (LayerMapConfig, "kind", None),
                           "documents": (LayerMapConfig, "documents", None),
                           "per_document": (LayerMapConfig, "per_document", None),
                           "concepts": (LayerMapConfig, "concepts", words),
                           "normalise": (LayerMapConfig, "normalise", None),
                           "neighbours": (LayerMapConfig, "diffusion.n_neighbors", None),
                           "bandwidth": (LayerMapConfig, "diffusion.bandwidth", None),
                           "alpha": (LayerMapConfig, "diffusion.alpha", None),
                           "t": (LayerMapConfig, "diffusion.t", None),
                           "components": (LayerMapConfig, "diffusion.n_components", None)},
    "geometry steer": {"layer": (SteerConfig, "layer", None), "scales": (SteerConfig, "scales", floats),
                       "methods": (SteerConfig, "methods", words), "neighbours": (SteerConfig, "neighbours", None),
                       "tangent_dim": (SteerConfig, "tangent_dim", None),
                       "reference_tokens": (SteerConfig, "reference_tokens", parse_count),
                       "corpus": (SteerConfig, "corpus", None), "new_tokens": (SteerConfig, "new_tokens", None),
                       "probe_layer": (SteerConfig, "probe_layer", None)},
    "unlearn": {"task": (RunConfig, "task", None),
                "forget": (RunConfig, "forget", None),
                "split": (RunConfig, "split", None),
                "windows": (RunConfig, "windows", None),
                "eval_every": (RunConfig, "eval_every", None),
                "relearn_steps": (RunConfig, "relearn_steps", None),
                "attacks": (RunConfig, "attacks", None),
                "ppl_tokens": (RunConfig, "ppl_tokens", None),
                "corpus": (RunConfig, "corpus", None),
                "steps": (RunConfig, "method.steps", None),
                "lr": (RunConfig, "method.lr", None),
                "batch_size": (RunConfig, "method.batch_size", None),
                "retain_weight": (RunConfig, "method.retain_weight", None),
                "beta": (RunConfig, "method.beta", None),
                "gamma": (RunConfig, "method.gamma", None),
                "layer": (RunConfig, "method.layer", None),
                "rmu_scale": (RunConfig, "method.rmu_scale", None),
                "rmu_retain": (RunConfig, "method.rmu_retain", None),
                "rank": (RunConfig, "method.rank", None),
                "retain_energy": (RunConfig, "method.retain_energy", None),
                "edit_layers": (RunConfig, "method.edit_layers", None),
                "sae": (RunConfig, "method.sae", None),
                "sae_latents": (RunConfig, "method.sae_latents", None),
                "sae_tokens": (RunConfig, "method.sae_tokens", None),
                "sae_features": (RunConfig, "method.sae_features", None),
                "sae_retain_max": (RunConfig, "method.sae_retain_max", None),
                "sae_clamp": (RunConfig, "method.sae_clamp", None),
                "seed": (RunConfig, "method.seed", None)},
}


def dataclass_default(cls, path):
    """The default of ``cls.path`` as a dataclass instance gets it (nested configs through their factory)."""
    first, *rest = path.split(".")
    f = {f.name: f for f in dataclasses.fields(cls)}[first]
    value = (f.default if f.default is not dataclasses.MISSING else
             f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
    for name in rest:
        value = getattr(value, name)
    return value


def click_command(path):
    group = typer.main.get_command(app)
    for name in path.split():
        group = group.commands[name]
    return group


def field_docstring(cls, name):
    """The string literal right after ``name`` in the class body, read independently of llmri.options."""
    body = ast.parse(inspect.getsource(cls).lstrip()).body[0].body
    for stmt, after in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and stmt.target.id == name:
            return after.value.value
    raise KeyError(name)


@pytest.mark.parametrize("path", list(CONVERTED))
def test_option_defaults_are_the_dataclass_defaults(path):
    params = {p.name: p for p in click_command(path).params}
    for name, (cls, field, read) in CONVERTED[path].items():
        want = dataclass_default(cls, field)
        param = params[name]
        if want is dataclasses.MISSING:
            assert param.required, f"llmri {path} --{name}: {cls.__name__}.{field} has no default"
            continue
        got = param.default if read is None or param.default is None else read(param.default)
        assert got == want and type(got) is type(want), \
            f"llmri {path} --{name.replace('_', '-')} defaults to {param.default!r}, {cls.__name__}.{field} to {want!r}"


def test_every_option_made_from_a_config_is_checked():
    commands = {c.name or c.callback.__name__: c.callback for c in app.registered_commands}
    commands |= {f"geometry {c.name}": c.callback for c in geometry_app.registered_commands}
    made = {(path, name) for path, fn in commands.items() for name, p in inspect.signature(fn).parameters.items()
            if hasattr(p.default, "config_field")}
    assert made == {(path, name) for path, opts in CONVERTED.items() for name in opts}


@pytest.mark.parametrize("path, name, cls, field", [
    ("train", "batch_size", TrainConfig, "batch_size"),
    ("train", "lr", TrainConfig, "lr"),  # reST markup dropped
    ("cache", "shard_tokens", StoreConfig, "shard_tokens"),
    ("geometry steer", "neighbours", SteerConfig, "neighbours"),
    ("geometry diffusion", "components", DiffusionConfig, "n_components"),  # through LayerMapConfig.diffusion
])
def test_help_is_the_first_sentence_of_the_field_docstring(path, name, cls, field):
    param = {p.name: p for p in click_command(path).params}[name]
    assert param.help == first_sentence(field_docstring(cls, field))
    assert "\n" not in param.help and "``" not in param.help and ":meth:" not in param.help


def test_first_sentence():
    assert first_sentence("Tokens per\n    optimiser step; ≥ 1.") == "Tokens per optimiser step; ≥ 1."
    assert first_sentence("Use ``x`` (see :meth:`f`), e.g. 3. Then more. And more.") == "Use x (see f), e.g. 3."
    assert first_sentence("Gao et al. 2024 say so.") == "Gao et al. 2024 say so."


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 16_384, 32_768, 65_536, 2_000_000, 1_500_000, 3 * 10**9])
def test_count_renders_what_parse_count_reads_back(n):
    assert parse_count(count(n)) == n
    assert len(count(n)) <= len(str(n))


def test_count_and_joined_spellings():
    assert (count(2_000_000), count(1_000_000), count(65_536), count(5_000)) == ("2M", "1M", "65536", "5k")
    assert joined((0.0, 0.1, 0.75)) == "0,0.1,0.75" and joined(("sea", "other")) == "sea,other"


def test_the_cli_starts_without_scipy_and_scikit_learn():
    """Config modules keep those imports inside the functions that need them, so `llmri --help` stays fast."""
    code = ("import sys, llmri.cli; heavy = [m for m in ('sklearn', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
