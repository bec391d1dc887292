"""The Prefect tasks' own decisions: which cache key they offer Prefect, and which failures they retry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ner_pipeline import pipeline
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import PipelineConfig
from ner_pipeline.errors import ConfigError, DataError, SourceUnavailableError
from ner_pipeline_tasks.stages import artifact_cache_key, retry_unless_user_error


def test_cache_key_is_offered_only_while_the_artifact_is_complete_on_disk(tmp_path: Path):
    config = PipelineConfig.model_validate({"artifacts_root": str(tmp_path / "artifacts")})
    parameters = {"config": config, "upstream": {}, "ctx": pipeline.RunContext()}
    cache_key = artifact_cache_key("ingest")
    assert cache_key(None, parameters) is None  # nothing built: Prefect must run the task

    key = pipeline.stage_key("ingest", config, {})
    built = ArtifactStore(config.artifacts_root).build("ingest", key, lambda folder: {})
    assert cache_key(None, parameters) == f"ner-pipeline-ingest-{key}"

    shutil.rmtree(built.path)  # pruned: a result Prefect recorded earlier must not be served
    assert cache_key(None, parameters) is None


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def attempts_until_failed(error: Exception) -> int:
    """Run a real task that always raises `error`, with two retries on our condition; count its attempts."""
    from prefect import task

    attempts = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_unless_user_error)
    def failing() -> None:
        attempts.append(1)
        raise error

    assert failing(return_state=True).is_failed()
    return len(attempts)


@pytest.mark.slow
def test_user_errors_fail_at_once_and_passing_failures_are_retried(harness):
    assert attempts_until_failed(ConfigError("configs/x.yaml: train.learning_rate must be > 0")) == 1
    assert attempts_until_failed(DataError("train.txt line 2: expected at least 2 columns")) == 1
    assert attempts_until_failed(SourceUnavailableError("the Hub did not answer")) == 3  # transient
    assert attempts_until_failed(ConnectionResetError("connection reset by peer")) == 3


def test_library_info_lines_reach_a_flow_run_whose_root_logger_is_at_warning():
    import logging

    from ner_pipeline_tasks.config import show_library_logs

    library, root = logging.getLogger("ner_pipeline"), logging.getLogger()
    saved = library.level, root.level
    try:
        library.setLevel(logging.NOTSET)
        root.setLevel(logging.WARNING)  # a worker's flow run: Prefect attaches handlers, sets no level
        show_library_logs()
        assert logging.getLogger("ner_pipeline.pipeline").isEnabledFor(logging.INFO)

        library.setLevel(logging.NOTSET)
        root.setLevel(logging.DEBUG)  # the CLI's -v: more verbose than INFO stays so
        show_library_logs()
        assert logging.getLogger("ner_pipeline.pipeline").isEnabledFor(logging.DEBUG)
    finally:
        library.setLevel(saved[0])
        root.setLevel(saved[1])
