"""Reading features: per-feature statistics, dashboards, Neuronpedia JSON, auto-interpretation, the explorer."""

from .stats import FeatureConfig, FeatureStats, collect, feature_stats, logit_effects, model_windows, row_windows

__all__ = ["FeatureConfig", "FeatureStats", "collect", "feature_stats", "logit_effects", "model_windows", "row_windows"]
