"""ner-pipeline: train, evaluate, register, export and serve token-classification models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ner-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
