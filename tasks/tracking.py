"""Prefect tasks around the MLflow run of a flow run."""

from __future__ import annotations

import os

from prefect import task

from ner_pipeline import tracking
from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import PipelineConfig


@task(name="start-mlflow-run", retries=2, retry_delay_seconds=5)
def start_run_task(config: PipelineConfig, tags: dict[str, str]) -> tracking.Tracker | None:
    """Open the MLflow run for this flow run (None when tracking is off)."""
    if not config.tracking.enabled:
        return None
    uri = tracking.resolve_tracking_uri(config.tracking, os.environ)
    return tracking.start_run(config, uri, tags=tags)


@task(name="log-stage", task_run_name="log-{artifact.stage}", retries=2, retry_delay_seconds=5)
def log_stage_task(tracker: tracking.Tracker | None, artifact: Artifact) -> None:
    """Log a stage's artifact to the MLflow run, whether it was computed now or came from the cache."""
    if tracker is not None:
        tracking.log_stage(tracker, artifact)


@task(name="end-mlflow-run", retries=2, retry_delay_seconds=5)
def end_run_task(tracker: tracking.Tracker | None, status: str) -> None:
    if tracker is not None:
        tracker.end(status)
