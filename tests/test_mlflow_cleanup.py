"""`artifacts prune --mlflow` on a real SQLite MLflow store: runs and logged models that no registered version and no
kept artifact needs go (first listed by --dry-run), a registered version's run and files never do."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import write_tiny_config
from typer.testing import CliRunner

from ner_pipeline import registry, tracking
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.cli import app
from ner_pipeline.config import load_config

pytestmark = pytest.mark.slow


def train_artifact(store: ArtifactStore, key: str, model_dir: Path) -> None:
    store.build("train", key, lambda folder: shutil.copytree(model_dir, folder / "model") and {})


def training_run(cfg, uri: str, key: str, report: Path, end: bool = True) -> str:
    """The MLflow run of one training, as the pipeline leaves it: tagged with its train key, a report logged."""
    tracker = tracking.start_run(cfg, uri, tags={"artifact.train": key})
    tracker.log_artifact(report, "evaluation")
    if end:
        tracker.end()
    return tracker.run_id


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_prune_mlflow_deletes_only_what_no_registered_version_or_kept_artifact_needs(
    tmp_path: Path, tiny_model_dir: Path
):
    config = write_tiny_config(tmp_path, Path("unused"))
    cfg = load_config(config)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry.client_for(uri)
    store = ArtifactStore(cfg.artifacts_root)
    report = tmp_path / "report.md"
    report.write_text("# a report\n")

    # Two trainings: one registered, one whose version was deleted (its logged model is an orphan). The registered
    # version carries no artifact tags, so nothing protects its train artifact: the cache drops it, and its run
    # stays only because it holds a registered version's model.
    runs = {}
    for key in ("t-registered", "t-dropped"):
        train_artifact(store, key, tiny_model_dir)
        runs[key] = training_run(cfg, uri, key, report)
        registry.log_and_register(cfg.registry, tiny_model_dir, uri, runs[key], {}, "v")
    client.delete_model_version(cfg.registry.model_name, "2")
    registered = client.get_model_version(cfg.registry.model_name, "1")
    models = {m.source_run_id: m for m in client.search_logged_models([registered_experiment(client, runs)])}
    # A training without registration, a training still registering (RUNNING), and a run that holds no model.
    train_artifact(store, "t-plain", tiny_model_dir)
    runs["t-plain"] = training_run(cfg, uri, "t-plain", report)
    runs["t-running"] = training_run(cfg, uri, "t-running", report, end=False)
    batch_job = client.create_run(client.create_experiment("jobs", str(tmp_path / "jobs"))).info.run_id

    doomed_runs = {runs["t-dropped"], runs["t-plain"]}
    doomed_model = models[runs["t-dropped"]].model_id
    folders = {r: local(client.get_run(r).info.artifact_uri) for r in runs.values()}
    model_folders = {m.model_id: local(m.artifact_location) for m in models.values()}
    assert all(f.is_dir() for f in [*folders.values(), *model_folders.values()])

    common = ["--keep-last", "0", "--mlflow", "--config", str(config)]
    listed = CliRunner().invoke(app, ["artifacts", "prune", *common, "--dry-run"])
    assert listed.exit_code == 0, listed.output
    listing = re.findall(r"^would delete MLflow (?:run|logged model) (\S+):", listed.stdout, re.MULTILINE)
    assert sorted(listing) == sorted([*doomed_runs, doomed_model]), listed.stdout
    assert "would delete 3 MLflow run(s) and logged model(s)" in listed.stdout
    assert all(f.is_dir() for f in [*folders.values(), *model_folders.values()])  # a dry run deletes nothing
    assert {r.info.run_id for r in client.search_runs(all_experiments(client))} == {*runs.values(), batch_job}

    pruned = CliRunner().invoke(app, ["artifacts", "prune", *common])
    assert pruned.exit_code == 0, pruned.output
    assert "removed train/t-registered" in pruned.stdout
    assert "deleted 3 MLflow run(s) and logged model(s)" in pruned.stdout
    assert {r.info.run_id for r in client.search_runs(all_experiments(client))} == {
        runs["t-registered"],
        runs["t-running"],
        batch_job,
    }
    for run_id in doomed_runs:
        assert client.get_run(run_id).info.lifecycle_stage == "deleted" and not folders[run_id].exists()
    assert not model_folders[doomed_model].exists()
    kept = [m.model_id for m in client.search_logged_models(all_experiments(client))]
    assert kept == [models[runs["t-registered"]].model_id] and registered.source == f"models:/{kept[0]}"
    assert folders[runs["t-registered"]].is_dir() and folders[runs["t-running"]].is_dir()
    fetched = registry.fetch_model(f"models:/{cfg.registry.model_name}/1", uri, tmp_path / "download")
    assert (fetched.model_dir / "config.json").is_file()  # the registered version's files are all there

    again = CliRunner().invoke(app, ["artifacts", "prune", *common])
    assert again.exit_code == 0 and "deleted 0 MLflow run(s)" in again.stdout, again.output


def registered_experiment(client, runs: dict[str, str]) -> str:
    return client.get_run(runs["t-registered"]).info.experiment_id


def all_experiments(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]
