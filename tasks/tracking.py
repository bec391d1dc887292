"""Prefect tasks around MLflow: one run per trained model (see `ner_pipeline.modelruns`).

They write to MLflow, so none may ever be answered from Prefect's cache (NO_CACHE); retrying them is safe.
"""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from ner_pipeline import modelruns
from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import PipelineConfig


@task(name="open-tracking", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def open_tracking_task(config: PipelineConfig, tags: dict[str, str]) -> modelruns.ModelRuns | None:
    """Resolve the MLflow store and mark runs of killed processes KILLED (None when tracking is off)."""
    return modelruns.open_tracking(config, os.environ, tags)


@task(
    name="track-stage", task_run_name="track-{artifact.stage}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5
)
def track_stage_task(config: PipelineConfig, runs: modelruns.ModelRuns, artifact: Artifact) -> modelruns.ModelRuns:
    """Log a stage into the run that holds its model (opened or found when train arrives); safe to retry."""
    return modelruns.track_stage(config, runs, artifact)


@task(name="end-mlflow-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def end_run_task(runs: modelruns.ModelRuns | None, status: str) -> None:
    """End the MLflow run this flow run opened (a reused run is left as it was)."""
    modelruns.finish(runs, status)
