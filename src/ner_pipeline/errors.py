"""Errors raised on bad user input or broken state.

Every message says where (file, line, field), what is wrong and, where it helps, how to fix it. The CLI
prints these without a traceback and exits non-zero; any other exception keeps its traceback.
"""

from __future__ import annotations


class NerPipelineError(Exception):
    """Base class for errors a user can act on."""

    #: True when trying again later can help (the network, a busy server); orchestrators retry only these.
    transient: bool = False


class ConfigError(NerPipelineError):
    """A config file or override is invalid."""


class DataError(NerPipelineError):
    """Input data is malformed: names the file and line."""


class SourceUnavailableError(DataError):
    """A remote data source could not be reached (retrying may help)."""

    transient = True


class ArtifactError(NerPipelineError):
    """An artifact is missing, incomplete or inconsistent."""


class ModelError(NerPipelineError):
    """A model reference cannot be resolved or a model folder lacks what we need."""


class RegistryError(NerPipelineError):
    """A registry operation was refused or the registry is unreachable."""


class ExportError(NerPipelineError):
    """ONNX export or its parity check failed."""


class PredictError(NerPipelineError):
    """Bad input to the predictor."""


class TrainingError(NerPipelineError):
    """Training produced no usable model (its loss or weights turned NaN/inf): nothing is saved or cached."""
