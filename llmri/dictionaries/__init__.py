"""Sparse dictionaries for every layer: SAEs, transcoders, crosscoders and cross-layer transcoders."""

from .clt import CrossLayerTranscoder
from .coder import SparseCoder
from .config import DictConfig, DictionaryError, TrainConfig
from .evaluate import EvalConfig, evaluate, evaluate_many
from .formats import export_circuit_tracer, load, save
from .run import plan, train
from .sources import ModelSource, StoreSource, TensorSource
from .trainer import Trainer, build

__all__ = [
    "CrossLayerTranscoder", "DictConfig", "DictionaryError", "EvalConfig", "ModelSource", "SparseCoder",
    "StoreSource", "TensorSource", "TrainConfig", "Trainer", "build", "evaluate", "evaluate_many", "export_circuit_tracer", "load", "plan", "save",
    "train",
]
