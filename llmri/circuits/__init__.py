"""Circuit tracing: local replacement models, attribution graphs, pruning, interventions and graph files."""

from .attribution import AttributionConfig, Graph, GraphError, attribute
from .default_set import DefaultTranscoders, default_transcoders
from .intervene import FeatureEdit, Validation, validate
from .prune import PruneConfig, Pruned, Scores, prune, scores
from .replacement import PromptError, Replacement, build
from .transcoders import Transcoders, load_transcoders

__all__ = ["AttributionConfig", "DefaultTranscoders", "FeatureEdit", "Graph", "GraphError", "PromptError", "PruneConfig", "Pruned",
           "Replacement", "Scores", "Transcoders", "Validation", "attribute", "build", "default_transcoders", "load_transcoders", "prune",
           "scores", "validate"]
