"""Which MLflow run a pipeline run logs into: one run per trained model, and none for a rerun that computes nothing.

A pipeline run holds back what its stages before train produced until train tells which model this is. Then:

- train computed now: a new run opens (named, timed from the pipeline run's start) and gets every stage;
- train from the cache: the run that holds that model (tag `artifact.train` = its key, the latest finished one)
  is reused, and only stages computed now (a new evaluation, an export, a registration) are logged into it;
- train from the cache and no run holds it (trained with tracking off): a new run opens and gets every stage, so
  the model has its run from then on.

A pipeline run that stops before train opens no run. Runs a killed process left RUNNING are marked KILLED at the
start of the next pipeline run on the same host (`mark_dead_runs_killed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import PipelineConfig
from ner_pipeline.tracking import (
    Tracker,
    is_embedded,
    log_stage,
    process_alive,
    process_tags,
    resolve_tracking_uri,
    start_run,
)

logger = logging.getLogger(__name__)

SEARCH_LIMIT = 1000  # runs per search; a store with more open or same-model runs than this is not our case


@dataclass(frozen=True)
class ModelRuns:
    """The MLflow side of one pipeline run: the run it logs into once known, and what waits to be logged there."""

    tracking_uri: str
    tags: Mapping[str, str] = field(default_factory=dict)
    started_ms: int = 0
    run_id: str | None = None
    experiment_id: str | None = None
    reused: bool = False  # the run held the model before this pipeline run
    pending: tuple[Artifact, ...] = ()


def open_tracking(config: PipelineConfig, env: Mapping[str, str], tags: Mapping[str, str]) -> ModelRuns | None:
    """Start tracking a pipeline run (None when tracking is off): mark dead processes' runs KILLED, open no run yet.

    Args:
        config: The resolved config.
        env: The environment, for $MLFLOW_TRACKING_URI.
        tags: Tags for a run this pipeline run may open (e.g. the Prefect flow run id).
    """
    if not config.tracking.enabled:
        return None
    uri = resolve_tracking_uri(config.tracking, env)
    mark_dead_runs_killed(uri)
    return ModelRuns(uri, dict(tags), int(time.time() * 1000))


def track_stage(config: PipelineConfig, runs: ModelRuns, artifact: Artifact) -> ModelRuns:
    """Log a stage's artifact into the run that holds its model; return the updated state.

    Safe to repeat after a failure: a run this process opened for the model and left RUNNING is taken up again.
    """
    if runs.run_id is None and artifact.stage != "train":
        return replace(runs, pending=(*runs.pending, artifact))
    if runs.run_id is None:
        runs = _open_model_run(config, runs, artifact)
        due = () if runs.reused else (*runs.pending, artifact)
        runs = replace(runs, pending=())
    else:
        due = () if runs.reused and artifact.cached else (artifact,)
    tracker = Tracker(runs.tracking_uri, runs.run_id)  # type: ignore[arg-type]
    for done in due:
        log_stage(tracker, done)
    return runs


def finish(runs: ModelRuns | None, status: str) -> None:
    """End the run this pipeline run opened; a reused run keeps its status (a failed evaluation does not fail it)."""
    if runs is not None and runs.run_id is not None and not runs.reused:
        Tracker(runs.tracking_uri, runs.run_id).end(status)


def _open_model_run(config: PipelineConfig, runs: ModelRuns, trained: Artifact) -> ModelRuns:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=runs.tracking_uri)
    candidates = _runs_of_model(client, trained.key) if _store_exists(runs.tracking_uri) else []
    mine = process_tags()
    own = [r for r in candidates if r.info.status == "RUNNING" and _same_process(r.data.tags, mine)]
    finished = [r for r in candidates if r.info.status == "FINISHED"]
    if own:  # a retry after a failure half-way through opening: take up what it opened
        run, reused = own[0], False
    elif trained.cached and finished:
        run, reused = finished[0], True
        logger.info(
            "model %s is held by MLflow run %s; logging only what is computed now", trained.key, run.info.run_id
        )
    else:
        tags = {**runs.tags, "artifact.train": trained.key}
        tracker = start_run(config, runs.tracking_uri, tags=tags, start_time=runs.started_ms or None)
        run, reused = client.get_run(tracker.run_id), False
    return replace(runs, run_id=run.info.run_id, experiment_id=run.info.experiment_id, reused=reused)


def _same_process(tags: Mapping[str, str], mine: Mapping[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in mine.items())


def _runs_of_model(client: Any, train_key: str) -> list[Any]:
    """Runs (any experiment) tagged with this train artifact key, newest first."""
    return client.search_runs(
        _experiment_ids(client),
        filter_string=f"tags.`artifact.train` = '{train_key}'",
        max_results=SEARCH_LIMIT,
        order_by=["attributes.start_time DESC"],
    )


def _experiment_ids(client: Any) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(max_results=SEARCH_LIMIT)]


def _store_exists(uri: str) -> bool:
    """False for a SQLite store not created yet (searching it would create an empty one)."""
    return not is_embedded(uri) or Path(uri.removeprefix("sqlite:///").partition("?")[0]).is_file()


def mark_dead_runs_killed(tracking_uri: str) -> list[str]:
    """Mark KILLED every RUNNING run opened on this host by a process that no longer runs; return their ids.

    Runs opened elsewhere, or without our process tags, are left alone: whether their process lives cannot be told.
    """
    if not _store_exists(tracking_uri):
        return []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    host = process_tags()["process.host"]
    open_runs = client.search_runs(
        _experiment_ids(client),
        filter_string=f"attributes.status = 'RUNNING' and tags.`process.host` = '{host}'",
        max_results=SEARCH_LIMIT,
    )
    killed = [r.info.run_id for r in open_runs if process_alive(r.data.tags) is False]
    for run_id in killed:
        client.set_terminated(run_id, status="KILLED")
        logger.warning("MLflow run %s was left RUNNING by a process that no longer runs: marked KILLED", run_id)
    return killed
