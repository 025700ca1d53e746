"""Every config refuses an out-of-range value where it is made, naming the field."""

from __future__ import annotations

import math

import pytest

from llmri.circuits.attribution import AttributionConfig
from llmri.circuits.pipeline import TraceConfig
from llmri.circuits.prune import PruneConfig
from llmri.dictionaries.config import DictionaryError
from llmri.errors import GeometryError, InterventionError, LlmriError
from llmri.features.autointerp import ExplainerError, InterpConfig
from llmri.features.stats import FeatureConfig
from llmri.geometry.diffusion import DiffusionConfig
from llmri.geometry.layer_map import LayerMapConfig
from llmri.geometry.profile import ProfileConfig
from llmri.geometry.steer import SteerConfig
from llmri.unlearning.methods import UnlearnConfig
from llmri.unlearning.run import RunConfig
from llmri.unlearning.tasks import UnlearnError
from llmri.scan import (CircuitSectionConfig, GeometrySectionConfig, HeatmapConfig, PassConfig, SaeSectionConfig,
                        ScanConfig)

CASES = [
    (FeatureConfig, DictionaryError, [("top_k", 0), ("context", 1), ("hist_bins", 0), ("split", "test"),
                                      ("hist_range", (4.0, -4.0))]),
    (InterpConfig, ExplainerError, [("n_features", 0), ("score_examples", -1), ("features", [3, -1])]),
    (PassConfig, LlmriError, [("tokens", 0), ("context", 1), ("split", "test")]),
    (HeatmapConfig, LlmriError, [("passages", 0)]),
    (SaeSectionConfig, LlmriError, [("expansion", 0.0), ("tokens", -1)]),
    (CircuitSectionConfig, LlmriError, [("features", 0), ("k", 0)]),
    (GeometrySectionConfig, LlmriError, [("points", 50), ("steer_scales", (0.0, math.nan))]),
    (ProfileConfig, GeometryError, [("points", 0), ("per_window", 0), ("position", "middle"), ("ranks", (1, 0))]),
    (LayerMapConfig, GeometryError, [("layer", -1), ("documents", 0), ("normalise", "whiten")]),
    (DiffusionConfig, GeometryError, [("n_neighbors", 1), ("epsilon", 0.0), ("alpha", -0.5), ("bandwidth", "adaptive")]),
    (SteerConfig, GeometryError, [("tangent_dim", 0), ("substeps", 0), ("scales", (0.0, -0.2)),
                                  ("methods", ("linear", "curvy"))]),
    (AttributionConfig, LlmriError, [("logit_probability", 1.5), ("max_feature_nodes", 0), ("batch_size", -1)]),
    (PruneConfig, LlmriError, [("node_threshold", 0.0), ("edge_threshold", 1.01), ("max_edges", 0)]),
    (TraceConfig, LlmriError, [("validate_top", -1), ("validate_factor", math.inf), ("feature_tokens", 1.5)]),
    (UnlearnConfig, UnlearnError, [("steps", 0), ("lr", 0.0), ("retain_energy", 1.5), ("rank", 0), ("method", "sgd"),
                                   ("beta", -1.0), ("sae_retain_max", 1.5), ("sae_clamp", -1.0), ("sae_features", 0)]),
    (RunConfig, UnlearnError, [("windows", 0), ("ppl_tokens", 10), ("task", "mmlu"), ("forget", "forget50"),
                               ("split", "train")]),
]


@pytest.mark.parametrize("cls", [c[0] for c in CASES], ids=lambda c: c.__name__)
def test_defaults_construct(cls):
    cls()


@pytest.mark.parametrize("cls,error,name,value",
                         [(c, e, n, v) for c, e, bad in CASES for n, v in bad],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_out_of_range_is_refused_naming_the_field(cls, error, name, value):
    with pytest.raises(error) as got:
        cls(**{name: value})
    msg = str(got.value)
    assert "\n" not in msg
    # enum fields are named by what they choose ("unknown position rule 'middle'"); numbers by the field
    assert name in msg or repr(value if isinstance(value, str) else value[-1]) in msg


def test_documented_special_values_still_work():
    LayerMapConfig(layer=None), SteerConfig(layer=None, tangent_dim=None, probe_layer=None)
    DiffusionConfig(epsilon=None), AttributionConfig(max_feature_nodes=None, batch_size=0), PruneConfig(max_edges=None)
    TraceConfig(validate_top=0, feature_tokens=0, validate_factor=-1.0), ScanConfig(geometry=GeometrySectionConfig(points=0), saes=SaeSectionConfig(tokens=0))
    InterpConfig(features=[0, 5])


def test_freeze_mode_is_an_intervention_error():
    with pytest.raises(InterventionError, match="freeze mode"):
        TraceConfig(validate_freeze="everything")
