"""One MLflow run per trained model, in a real SQLite store: reruns reuse the model's run, killed runs are reaped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tiny_config

from ner_pipeline import modelruns, pipeline, tracking
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import PipelineConfig, load_config

pytestmark = pytest.mark.slow


def run_tracked(cfg: PipelineConfig, stages: list[str] | None = None) -> pipeline.RunSummary:
    """Walk the stages with MLflow tracking, as the flow does, without Prefect."""
    store = ArtifactStore(cfg.artifacts_root)
    state = {"runs": modelruns.open_tracking(cfg, {}, {"test": "yes"})}

    def on_stage(artifact):
        state["runs"] = modelruns.track_stage(cfg, state["runs"], artifact)
        return pipeline.RunContext(state["runs"].tracking_uri, state["runs"].run_id)

    summary = pipeline.walk(
        cfg,
        stages or list(pipeline.STAGES),
        build=lambda name, c, up, ctx: pipeline.run_stage(name, c, up, store, ctx),
        lookup=lambda name, c, up, ctx: pipeline.lookup_stage(name, c, up, store, ctx),
        on_stage=on_stage,
        ctx=pipeline.RunContext(state["runs"].tracking_uri),
    )
    modelruns.finish(state["runs"], "FINISHED")
    return summary


def all_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_reruns_log_into_the_run_that_trained_the_model_and_a_new_model_gets_a_new_run(
    tmp_path: Path, tiny_base_dir: Path
):
    from mlflow import MlflowClient

    cfg = load_config(write_tiny_config(tmp_path, tiny_base_dir, export={"enabled": False}))
    uri = tracking.resolve_tracking_uri(cfg.tracking, {})
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    first = run_tracked(cfg)
    assert first.computed == ["ingest", "tokenize", "train", "evaluate", "register"]
    [run] = all_runs(uri)
    assert run.info.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.tags["artifact.train"] == first.stages["train"].key and run.data.tags["test"] == "yes"
    assert run.data.tags["data.fingerprint"]  # ingest, held back until train opened the run, was logged into it
    version = client.get_model_version("ner-tiny", "1")
    assert version.run_id == first.run_id

    again = run_tracked(cfg)
    assert again.computed == [] and again.run_id == first.run_id
    assert len(all_runs(uri)) == 1  # nothing computed: no new run
    assert "holds this model (trained earlier)" in again.to_markdown()

    shutil.rmtree(first.stages["evaluate"].path)
    evaluated = run_tracked(cfg, ["evaluate"])
    assert evaluated.computed == ["evaluate"] and evaluated.run_id == first.run_id
    assert len(all_runs(uri)) == 1
    assert len(client.get_metric_history(first.run_id, "test_f1")) == 2  # the new evaluation went to the model's run
    assert client.get_run(first.run_id).info.status == "FINISHED"

    changed = load_config(write_tiny_config(tmp_path, tiny_base_dir, export={"enabled": False}, train={"seed": 3}))
    retrained = run_tracked(changed)
    assert "train" in retrained.computed and retrained.run_id != first.run_id
    assert len(all_runs(uri)) == 2
    assert client.get_model_version("ner-tiny", "2").run_id == retrained.run_id


def test_a_model_trained_without_tracking_gets_one_run_when_a_tracked_run_first_meets_it(
    tmp_path: Path, tiny_base_dir: Path
):
    config = write_tiny_config(tmp_path, tiny_base_dir, export={"enabled": False}, registry={"enabled": False})
    untracked = load_config(config, ["tracking.enabled=false"])
    pipeline.run_pipeline(untracked, ArtifactStore(untracked.artifacts_root))
    cfg = load_config(config)
    uri = tracking.resolve_tracking_uri(cfg.tracking, {})

    adopted = run_tracked(cfg)
    assert adopted.computed == [] and adopted.run_id is not None
    [run] = all_runs(uri)
    assert run.data.tags["artifact.train"] == adopted.stages["train"].key and "test_f1" in run.data.metrics
    assert run_tracked(cfg).run_id == run.info.run_id and len(all_runs(uri)) == 1


def test_stages_before_train_open_no_run(tmp_path: Path, tiny_base_dir: Path):
    cfg = load_config(write_tiny_config(tmp_path, tiny_base_dir))
    summary = run_tracked(cfg, ["ingest", "tokenize"])
    assert list(summary.stages) == ["ingest", "tokenize"] and summary.run_id is None
    assert not (tmp_path / "mlflow.db").exists()  # not even an empty store


def test_tracking_a_stage_again_after_a_failure_takes_up_the_run_it_opened(tmp_path: Path, tiny_base_dir: Path):
    cfg = load_config(write_tiny_config(tmp_path, tiny_base_dir, export={"enabled": False}))
    store = ArtifactStore(cfg.artifacts_root)
    upstream = pipeline.run_pipeline(cfg, store, stages=["ingest", "tokenize", "train"])
    runs = modelruns.open_tracking(cfg, {}, {})
    opened = modelruns.track_stage(cfg, runs, upstream["train"])
    retried = modelruns.track_stage(cfg, runs, upstream["train"])  # as a Prefect retry would, from the old state
    assert retried.run_id == opened.run_id and not retried.reused
    assert len(all_runs(runs.tracking_uri)) == 1


def test_runs_left_running_by_a_dead_process_are_marked_killed_and_others_are_not(tmp_path: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = PipelineConfig.model_validate({"name": "reap"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid names no process now
    left = tracking.start_run(cfg, uri, tags=tracking.process_tags(dead.pid))
    mine = tracking.start_run(cfg, uri)
    elsewhere = tracking.start_run(cfg, uri, tags={"process.host": f"not-{socket.gethostname()}", "process.pid": "1"})
    untagged = tracking.start_run(cfg, uri, tags={"process.host": "", "process.pid": ""})

    assert modelruns.mark_dead_runs_killed(uri) == [left.run_id]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    status = {t.run_id: client.get_run(t.run_id).info.status for t in (left, mine, elsewhere, untagged)}
    assert status == {
        left.run_id: "KILLED",
        mine.run_id: "RUNNING",
        elsewhere.run_id: "RUNNING",
        untagged.run_id: "RUNNING",
    }


def test_a_reused_pid_is_told_from_the_process_that_opened_the_run():
    tags = tracking.process_tags(os.getpid())
    assert tracking.process_alive(tags) is True
    if not tags["process.started"]:
        pytest.skip("no /proc here: process start times are unknown")
    assert tracking.process_alive({**tags, "process.started": "1"}) is False
    assert tracking.process_alive({**tags, "process.host": "elsewhere"}) is None
