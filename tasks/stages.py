"""One Prefect task per pipeline stage.

Each task calls the library's stage through `ner_pipeline.pipeline`, and its Prefect cache key is the library's
artifact key, so Prefect's cache and the artifacts on disk agree: a key is offered to Prefect only when the
artifact it names is complete on disk, and a pruned artifact is rebuilt rather than served from a stale record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from ner_pipeline import pipeline
from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import PipelineConfig
from ner_pipeline.transient import is_transient

# Stages that read from the network or a shared store can fail for passing reasons; retry those only.
RETRIES = {"ingest": 2, "register": 3}


def artifact_cache_key(stage: str) -> Callable[[Any, dict[str, Any]], str | None]:
    """Build a Prefect `cache_key_fn` that returns the stage's artifact key when that artifact is on disk."""

    def cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
        if stage == "register":
            return None  # a registration is reused only after the registry confirms it (run_register asks it)
        config: PipelineConfig = parameters["config"]
        key = pipeline.stage_key(stage, config, parameters["upstream"], parameters["ctx"])
        if pipeline.open_store(config).get(stage, key) is None:
            return None  # nothing complete on disk: never let Prefect serve a result for it
        return f"ner-pipeline-{stage}-{key}"

    return cache_key


def retry_unless_user_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry passing failures (network, locks); a bad config or bad data fails at once."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def stage_task(stage: str) -> Task[[PipelineConfig, Mapping[str, Artifact], pipeline.RunContext], Artifact]:
    """The Prefect task that builds (or reuses) one stage's artifact."""

    @task(
        name=stage,
        task_run_name=f"{stage}",
        cache_key_fn=artifact_cache_key(stage),
        persist_result=True,
        retries=RETRIES.get(stage, 0),
        retry_delay_seconds=10,
        retry_condition_fn=retry_unless_user_error,
    )
    def run(config: PipelineConfig, upstream: Mapping[str, Artifact], ctx: pipeline.RunContext) -> Artifact:
        return pipeline.run_stage(stage, config, upstream, pipeline.open_store(config), ctx)

    return run


@task(name="lookup", task_run_name="lookup-{stage}")
def lookup_task(
    stage: str, config: PipelineConfig, upstream: Mapping[str, Artifact], ctx: pipeline.RunContext
) -> Artifact:
    """Find the cached artifact of a stage this run does not compute."""
    return pipeline.lookup_stage(stage, config, upstream, pipeline.open_store(config), ctx)


STAGE_TASKS = {name: stage_task(name) for name in pipeline.STAGES}


def build_stage(
    stage: str, config: PipelineConfig, upstream: Mapping[str, Artifact], ctx: pipeline.RunContext
) -> Artifact:
    """Run a stage's task (the flow's `build` step); a result Prefect served from its cache counts as a cache hit."""
    state = STAGE_TASKS[stage](config, upstream, ctx, return_state=True)
    artifact: Artifact = state.result()
    return replace(artifact, cached=True) if state.name == "Cached" else artifact
