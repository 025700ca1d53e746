"""Errors a user can fix. Each one renders as a single line: what is wrong, then how to fix it.

The CLI prints ``error: <message>`` and exits with code 2 for any :class:`LlmriError`; the Python API raises
the specific subclass so notebooks can catch exactly what they expect.
"""

from __future__ import annotations


class LlmriError(Exception):
    """Base class: a problem with the user's input or environment, never a bug in llmri."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class UnknownModelError(LlmriError):
    """The model spec is not a bundled name, a local folder, a .gguf file or a reachable hub id."""


class UnsupportedArchitectureError(LlmriError):
    """The model loaded but llmri has no adapter for its architecture."""


class UnknownHookPointError(LlmriError):
    """A hook-point name that does not exist for this model."""


class AssetError(LlmriError):
    """A pinned registry asset could not be fetched or extracted."""


class ChecksumError(AssetError):
    """A cached or provided file does not have the pinned sha256."""


class CorpusError(LlmriError):
    """A corpus could not be read or holds no text."""


class ContextLengthError(LlmriError):
    """The requested context is longer than the model supports."""


class DiskFullError(LlmriError):
    """Writing an artefact failed for lack of disk space; nothing partial was left behind."""


class OutputError(LlmriError):
    """An output location cannot be written without destroying something llmri did not write."""


class StoreError(LlmriError):
    """An activation store is missing, incomplete, or was started with a different configuration."""


class InterventionError(LlmriError):
    """An intervention does not fit the activation it is applied to."""


class GeometryError(LlmriError):
    """Data handed to a geometry tool (intrinsic dimension, diffusion maps, steering) cannot be used as given."""


class SafetyError(LlmriError):
    """A safety data set, split or label that does not exist, or safety data that cannot be used as given."""
