"""Free the disk MLflow holds for models nobody needs: `ner-pipeline artifacts prune --mlflow`.

Each training leaves a run (metrics, the evaluation report and test predictions) and, once registered, a logged
model (the weights and the served ONNX graph: most of the bytes). After `artifacts prune` has removed old
trainings from the artifact cache, their runs and logged models stay in the MLflow store unless removed here.

What may go:

- a run of a trained model (tagged `artifact.train`) whose train artifact is no longer kept in the artifact cache
  and which no registered version needs: neither a version's run (it holds the model and the test predictions
  the promotion gate reads) nor a run of a train key a version carries;
- a logged model that no registered version was created from (a version deleted in the UI, the duplicate of two
  concurrent registrations, or the model of a run that goes).

What never goes: a registered version's files (checked again by path before anything is deleted), a run or
logged model of a run still RUNNING (a registration in progress), runs that hold no model (sweep parents, batch
jobs) and anything outside the store's active experiments.

Deleting marks the run or logged model deleted in MLflow (it leaves the UI and every search) and deletes its
artifact files, which is where the disk goes; the few database rows left are what `mlflow gc` removes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ner_pipeline.registry.client import existing_client

logger = logging.getLogger(__name__)

TRAIN_TAG = "artifact.train"
PAGE = 1000


@dataclass(frozen=True)
class Doomed:
    """A run or logged model that no registered version and no kept artifact needs."""

    kind: str  # "run" or "logged model"
    id: str
    label: str  # run name and train key, or logged model name and its run
    location: str  # its artifact URI
    size: int | None  # bytes of a local artifact folder; None when not local


@dataclass
class MlflowCleanup:
    """What `artifacts prune --mlflow` removes (or would, with --dry-run), and what it keeps."""

    tracking_uri: str
    doomed: list[Doomed] = field(default_factory=list)
    kept_runs: int = 0
    kept_models: int = 0

    @property
    def size(self) -> int:
        """Bytes the local artifact folders of the doomed runs and models hold."""
        return sum(d.size or 0 for d in self.doomed)


def plan_cleanup(tracking_uri: str, kept_keys: Set[str]) -> MlflowCleanup:
    """Decide which runs and logged models may go (see the module docstring); delete nothing.

    Args:
        tracking_uri: The MLflow store (it must exist).
        kept_keys: Artifact keys the cache keeps (after pruning); a run of a kept train key stays.

    Raises:
        RegistryError: no store at a local URI, or a server that does not answer.
    """
    client = existing_client(tracking_uri)
    versions = list(client.search_model_versions(""))
    needed_runs = {v.run_id for v in versions if v.run_id}
    needed_models = {m for v in versions for m in (getattr(v, "model_id", None), _model_id(v.source)) if m}
    needed_keys = set(kept_keys) | {(v.tags or {}).get(TRAIN_TAG) for v in versions} - {None}
    protected = {_local_path(client.get_model_version_download_uri(v.name, v.version)) for v in versions} - {None}
    experiments = [e.experiment_id for e in client.search_experiments()]
    plan = MlflowCleanup(tracking_uri)
    running, doomed_runs = set(), set()
    for run in _pages(client.search_runs, experiments):
        key = run.data.tags.get(TRAIN_TAG)
        if run.info.status == "RUNNING":
            running.add(run.info.run_id)
        if key is None or run.info.status == "RUNNING" or run.info.run_id in needed_runs or key in needed_keys:
            plan.kept_runs += key is not None
            continue
        doomed_runs.add(run.info.run_id)
        label = f"{run.info.run_name or '-'} (train {key})"
        plan.doomed += _doomed("run", run.info.run_id, label, run.info.artifact_uri, protected)
    for model in _pages(client.search_logged_models, experiments):
        if model.model_id in needed_models or model.source_run_id in running:
            plan.kept_models += 1
            continue
        why = "its run goes" if model.source_run_id in doomed_runs else "no registered version"
        label = f"{model.name} of run {model.source_run_id or '-'} ({why})"
        plan.doomed += _doomed("logged model", model.model_id, label, model.artifact_location, protected)
    return plan


def apply_cleanup(plan: MlflowCleanup) -> None:
    """Delete what `plan_cleanup` chose: mark each run and logged model deleted, then delete its artifact files.

    Raises:
        MlflowException: the store refused a deletion (what was deleted before it stays deleted).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = existing_client(plan.tracking_uri)
    for doomed in plan.doomed:
        if doomed.kind == "run":
            client.delete_run(doomed.id)
        else:
            client.delete_logged_model(doomed.id)
        get_artifact_repository(doomed.location).delete_artifacts()
        logger.info("deleted MLflow %s %s: %s", doomed.kind, doomed.id, doomed.label)


def _doomed(kind: str, ident: str, label: str, location: str, protected: Set[Path]) -> list[Doomed]:
    """The entry, or none (with a warning) when its folder holds or is inside a registered version's files."""
    path = _local_path(location)
    if path is not None and any(path == p or path in p.parents or p in path.parents for p in protected):
        logger.warning("MLflow %s %s: its folder %s overlaps a registered version's files; kept", kind, ident, path)
        return []
    size = None if path is None else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return [Doomed(kind, ident, label, location, size)]


def _model_id(source: str | None) -> str | None:
    """`models:/m-abc` (a logged model, as MLflow 3 registers it) → `m-abc`; other sources → None."""
    if source and source.startswith("models:/") and "/" not in source.removeprefix("models:/"):
        return source.removeprefix("models:/")
    return None


def _local_path(uri: str | None) -> Path | None:
    """The folder of a local artifact URI (a plain path or file:), resolved; None for anything remote."""
    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Path(unquote(parts.path) if parts.scheme else uri).resolve()
    return None


def _pages(search: Callable[..., Any], experiments: list[str]) -> Iterator[Any]:
    """Every item of an MLflow search (`client.search_runs`, `client.search_logged_models`), page by page."""
    token = None
    while experiments:
        page = search(experiments, max_results=PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return
