"""MLflow tracking: one run per trained model, logging config, data, per-epoch metrics and stage artifacts.

Only this module and the `registry` package import MLflow. The embedded default is a SQLite store in `mlruns/mlflow.db`
under the project root, with artifacts in `mlruns/artifacts`; a tracking server URI (config or
$MLFLOW_TRACKING_URI) works the same. Stages never log themselves: after each stage the caller hands its artifact
to `log_stage`, which reads what the stage recorded (manifest stats, history, report files). So a stage served
from cache logs the same numbers.

Which run a pipeline run logs into is decided in `ner_pipeline.modelruns`: the run that holds the model, found by
its train artifact key, so reruns that compute nothing add no run. Every run records the process that opened it
(`process_tags`), so a later pipeline run can mark runs left RUNNING by a killed process as KILLED.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import DEFAULT_TRACKING_URI, PipelineConfig, TrackingConfig
from ner_pipeline.configfile import absolute_store_uri, flatten

logger = logging.getLogger(__name__)

TRACKED_PACKAGES = ("ner-pipeline", "torch", "transformers", "datasets", "mlflow", "prefect", "onnxruntime")
PARAM_BATCH = 100  # MLflow accepts at most 100 params per batch call


def resolve_tracking_uri(cfg: TrackingConfig, env: Mapping[str, str]) -> str:
    """Return the tracking URI: the config's, else $MLFLOW_TRACKING_URI from `env`, else the embedded store.

    A SQLite path comes back absolute: the config's and the embedded default against the project root (the
    config already anchors its own), $MLFLOW_TRACKING_URI against the working folder, where the user set it.
    """
    return (
        cfg.tracking_uri
        or (absolute_store_uri(env_uri, Path.cwd()) if (env_uri := env.get("MLFLOW_TRACKING_URI")) else None)
        or cfg.resolve_uri(DEFAULT_TRACKING_URI)
    )


def is_embedded(uri: str) -> bool:
    """True for a local SQLite store (we then choose where artifacts go)."""
    return uri.startswith("sqlite:")


def prepare_store(uri: str) -> None:
    """Create the folder of a local SQLite store, which MLflow will not create itself."""
    if is_embedded(uri):
        db_path = Path(uri.removeprefix("sqlite:///"))
        db_path.parent.mkdir(parents=True, exist_ok=True)


def git_commit(cwd: Path | None = None) -> str | None:
    """Return the current git commit, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's result."""
    found: dict[str, str] = {}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that owns a run: host, pid and (on Linux) its start time, which tells a reused pid
    from the original."""
    pid = pid or os.getpid()
    return {"process.host": socket.gethostname(), "process.pid": str(pid), "process.started": _start_ticks(pid) or ""}


def process_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process named by `process_tags` still runs; None when it is not on this host (cannot tell)."""
    if tags.get("process.host") != socket.gethostname() or not tags.get("process.pid", "").isdigit():
        return None
    pid = int(tags["process.pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    started = tags.get("process.started")
    now = _start_ticks(pid)
    return not (started and now is not None and now != started) and _state(pid) != "Z"


def _stat_fields(pid: int) -> list[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces: field 3 onwards


def _start_ticks(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None  # field 22: start time in clock ticks since boot


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None  # field 3: Z for a zombie, which is dead but not yet reaped


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI's "Model training" view of an experiment (runs, models, registry), not its GenAI overview.

    For a local store that is where `mlflow ui` listens by default; for a tracking server, the server itself.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


@dataclass
class Tracker:
    """An open MLflow run, addressed by id so it can be handed between processes and threads."""

    tracking_uri: str
    run_id: str

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + PARAM_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, int | float)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, fingerprint: str, source: str, source_type: str, profile: Mapping) -> None:
        """Record the training data as a run input, with our content fingerprint as its digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=fingerprint[:36],
            source_type=source_type,
            source=json.dumps({"uri": source}),
            profile=json.dumps(dict(profile), default=str),
        )
        tags = [InputTag("mlflow.data.context", "training")]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)])

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def ensure_experiment(client: Any, name: str, uri: str, artifact_location: str) -> str:
    """Return the id of experiment `name`, creating it (with artifacts in `artifact_location` when embedded)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = Path(artifact_location).resolve().as_uri() if is_embedded(uri) else None
    return client.create_experiment(name, artifact_location=location)


def start_run(
    config: PipelineConfig,
    tracking_uri: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    start_time: int | None = None,
) -> Tracker:
    """Open an MLflow run and log what is known up front: config, versions, commit, the process that owns it.

    Args:
        config: The resolved pipeline config; logged flat as params (`train.learning_rate`, ...).
        tracking_uri: Where to log (see `resolve_tracking_uri`).
        run_name: Shown in the MLflow UI; defaults to `<config name>-<model>-<UTC start time>`, so the runs of
            one config stay apart in the compare view.
        tags: Extra run tags (e.g. the Prefect flow run id, the train artifact key).
        start_time: Start of the run in ms since the epoch (e.g. when the pipeline run began); default now.
    """
    from mlflow import MlflowClient

    prepare_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = config.tracking.experiment or config.name
    experiment_id = ensure_experiment(client, experiment, tracking_uri, config.tracking.artifact_location)
    model_short = config.model.name_or_path.rsplit("/", 1)[-1].removeprefix("package:")
    base_tags = {
        "mlflow.source.git.commit": git_commit(config.project_root),
        "config.name": config.name,
        "model.base": config.model.name_or_path,
        "data.source": f"{config.data.source}:{config.data.path}" if config.data.path else config.data.source,
        **{f"version.{k}": v for k, v in package_versions().items()},
        **process_tags(),
        **(tags or {}),
    }
    run = client.create_run(
        experiment_id,
        start_time=start_time,
        run_name=run_name or f"{config.name}-{model_short}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        tags={k: str(v) for k, v in base_tags.items() if v is not None},
    )
    tracker = Tracker(tracking_uri=tracking_uri, run_id=run.info.run_id)
    tracker.log_params(flatten(config.model_dump(mode="json")))
    logger.info("MLflow run %s in experiment '%s' (%s)", tracker.run_id, experiment, tracking_uri)
    return tracker


def log_stage(tracker: Tracker, artifact: Artifact) -> None:
    """Log what a stage produced to the run: its key as a tag, its stats as metrics, its reports as files."""
    tracker.set_tags({f"artifact.{artifact.stage}": artifact.key, f"cached.{artifact.stage}": artifact.cached})
    stats = artifact.stats
    logger_for_stage = {
        "ingest": _log_ingest,
        "tokenize": _log_numbers,
        "train": _log_train,
        "evaluate": _log_evaluate,
        "export": _log_numbers,
    }.get(artifact.stage, _log_numbers)
    logger_for_stage(tracker, artifact, stats)


def _numbers(stats: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat = flatten(dict(stats), prefix)
    return {k: v for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _log_numbers(tracker: Tracker, artifact: Artifact, stats: Mapping[str, Any]) -> None:
    tracker.log_metrics(_numbers(stats, f"{artifact.stage}."))


def _log_ingest(tracker: Tracker, artifact: Artifact, stats: Mapping[str, Any]) -> None:
    source = artifact.manifest.get("config", {})
    source_type = "hugging_face" if source.get("source") == "hub" else "local"
    tracker.log_dataset(
        name=str(source.get("path") or source.get("source")),
        fingerprint=str(stats.get("fingerprint", artifact.key)),
        source=str(source.get("path") or source.get("source")),
        source_type=source_type,
        profile=_numbers(stats),
    )
    tracker.set_tags({"data.fingerprint": stats.get("fingerprint")})
    tracker.log_params({f"data.stats.{k}": v for k, v in _numbers(stats).items()})


def _log_train(tracker: Tracker, artifact: Artifact, stats: Mapping[str, Any]) -> None:
    history_path = artifact.path / "history.json"
    if history_path.is_file():
        for row in json.loads(history_path.read_text(encoding="utf-8")):
            # The optimizer step, as transformers' own MLflow callback logs it: unique per evaluation even when
            # evaluations come every N steps (several per epoch); the epoch is logged as a metric beside it.
            step = int(row.get("step") or round(float(row.get("epoch", 0))))
            values = {k: v for k, v in row.items() if k != "step" and v is not None}
            tracker.log_metrics(values, step=step)
    tracker.log_metrics(_numbers(stats, "train."))
    curves = artifact.path / "training_curves.png"
    if curves.is_file():
        tracker.log_artifact(curves, "training")


def _log_evaluate(tracker: Tracker, artifact: Artifact, stats: Mapping[str, Any]) -> None:
    tracker.log_metrics(_numbers(stats))
    tracker.log_artifacts(artifact.path, "evaluation")


def start_job_run(
    tracking_uri: str, experiment: str, artifact_location: str, run_name: str, tags: Mapping[str, Any] | None = None
) -> Tracker:
    """Open an MLflow run for a job that is not a training pipeline run (e.g. batch inference).

    Args:
        experiment: Experiment name, created when missing (artifacts in `artifact_location` when embedded).
        tags: Run tags; package versions and the git commit are added.
    """
    from mlflow import MlflowClient

    prepare_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment, tracking_uri, artifact_location)
    base_tags = {
        "mlflow.source.git.commit": git_commit(),
        **{f"version.{k}": v for k, v in package_versions().items()},
        **process_tags(),  # a killed job's run is marked KILLED by the next pipeline run, as a training run is
        **(tags or {}),
    }
    run = client.create_run(
        experiment_id, run_name=run_name, tags={k: str(v) for k, v in base_tags.items() if v is not None}
    )
    logger.info("MLflow run %s in experiment '%s' (%s)", run.info.run_id, experiment, tracking_uri)
    return Tracker(tracking_uri=tracking_uri, run_id=run.info.run_id)


def experiment_of_run(tracking_uri: str, run_id: str) -> str:
    """The id of the experiment a run belongs to."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
