"""MLflow tracking in a temporary SQLite store: params, per-epoch metrics, the dataset input, evaluation files."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_tiny_config

from ner_pipeline import pipeline, tracking
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import TrackingConfig, load_config
from ner_pipeline.train import read_history

pytestmark = pytest.mark.slow


def test_a_pipeline_run_is_one_mlflow_run_with_everything_a_user_compares(tmp_path: Path, tiny_base_dir: Path):
    from mlflow import MlflowClient

    config_path = write_tiny_config(tmp_path, tiny_base_dir, train={"epochs": 2}, export={"enabled": False})
    cfg = load_config(config_path)
    uri = tracking.resolve_tracking_uri(cfg.tracking, {})
    tracker = tracking.start_run(cfg, uri, run_name="tiny-run")
    stages = ["ingest", "tokenize", "train", "evaluate"]
    done = pipeline.run_pipeline(
        cfg, ArtifactStore(cfg.artifacts_root), stages=stages, on_stage=lambda a: tracking.log_stage(tracker, a)
    )
    tracker.end()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    params = run.data.params
    assert params["train.learning_rate"] == str(cfg.train.learning_rate)
    assert params["model.name_or_path"] == str(tiny_base_dir)
    assert params["data.stats.train.sentences"] == "300"
    tags = run.data.tags
    assert {f"artifact.{s}" for s in stages} <= set(tags)
    assert tags["artifact.train"] == done["train"].key
    assert tags["data.fingerprint"] == done["ingest"].stats["fingerprint"]
    assert "version.transformers" in tags
    assert "mlflow.source.git.commit" not in tags  # the config's project (tmp_path) is no git checkout
    assert tags["process.pid"] == str(os.getpid()) and tags["process.host"] == socket.gethostname()

    per_epoch = client.get_metric_history(tracker.run_id, "eval_f1")
    steps = [r["step"] for r in read_history(done["train"])]
    assert [m.step for m in per_epoch] == steps and steps[0] < steps[1]  # one point per evaluation
    assert [m.value for m in client.get_metric_history(tracker.run_id, "epoch")] == [1.0, 2.0]
    assert len(client.get_metric_history(tracker.run_id, "train_loss")) == 2
    assert run.data.metrics["test_f1"] == pytest.approx(done["evaluate"].stats["test_f1"])

    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == done["ingest"].stats["fingerprint"][:36]
    files = {f.path for f in client.list_artifacts(tracker.run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/confusion_matrix.png", "evaluation/errors.jsonl"} <= files
    assert {f.path for f in client.list_artifacts(tracker.run_id, "training")} == {"training/training_curves.png"}


def test_tracking_uri_prefers_config_then_environment_then_the_embedded_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (project / "configs" / "c.yaml").write_text("name: c\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(project / "configs" / "c.yaml").tracking

    server = {"MLFLOW_TRACKING_URI": "http://y:5000"}
    assert tracking.resolve_tracking_uri(TrackingConfig(tracking_uri="http://x:5000"), server) == "http://x:5000"
    assert tracking.resolve_tracking_uri(cfg, server) == "http://y:5000"
    # A relative SQLite path in the environment was written in the shell's folder; the default is the project's.
    relative = {"MLFLOW_TRACKING_URI": "sqlite:///stores/mlflow.db"}
    assert tracking.resolve_tracking_uri(cfg, relative) == f"sqlite:///{elsewhere.resolve()}/stores/mlflow.db"
    assert tracking.resolve_tracking_uri(cfg, {}) == f"sqlite:///{project.resolve()}/mlruns/mlflow.db"
    assert tracking.resolve_tracking_uri(TrackingConfig(), {}) == f"sqlite:///{elsewhere.resolve()}/mlruns/mlflow.db"


def test_a_run_records_the_commit_of_the_checkout_holding_the_config_not_of_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # no checkout here
    cfg = load_config(REPO_ROOT / "configs" / "quickstart.yaml", [f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db"])
    uri = tracking.resolve_tracking_uri(cfg.tracking, {})
    tracker = tracking.start_run(cfg, uri)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).data.tags["mlflow.source.git.commit"] == head


def test_the_experiment_url_opens_the_model_training_view():
    assert (
        tracking.experiment_url("sqlite:////p/mlruns/mlflow.db", "3")
        == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    )
    assert (
        tracking.experiment_url("http://mlflow.internal:8080/", "7")
        == "http://mlflow.internal:8080/#/experiments/7?workflowType=machine_learning"
    )
