"""The MLflow client every registry call goes through, bound to one tracking URI.

Tracking and registry share the URI, and nothing here reads or sets MLflow's process-wide URIs: a client built
for its store is what lets the server's reload thread fetch a model while other code logs elsewhere.
"""

from __future__ import annotations

from typing import Any


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient bound to `tracking_uri` (registry at the same URI)."""
    from mlflow import MlflowClient

    from ner_pipeline.tracking import prepare_store

    prepare_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
