"""The register stage: log the trained model as a pyfunc in the pipeline's MLflow run and register a version.

A registration is cached like any stage: the same model, report and registry map to the same key, so an
unchanged rerun registers nothing new. But the registry can change behind the cache (a store deleted, a version
removed in the UI, a fresh server at the same address), so a cached record is used only once the registry
confirms it: its version exists and carries this register key and run. Otherwise the record is discarded and
the model registered again, with a warning saying why.

Creating a version is a side effect a retry must not repeat: the version carries its register key as a tag,
and registering first looks for a version with that tag, so a retried, resumed or concurrent registration of
the same key ends with one version. The new version gets the alias `challenger`; moving `production` is the
promotion gate's job (`registry.promotion`).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, write_json_atomic
from ner_pipeline.config import RegistryConfig
from ner_pipeline.predictions import PREDICTIONS_FILE
from ner_pipeline.registry.card import write_version_card
from ner_pipeline.registry.client import canonical_uri, client_for
from ner_pipeline.registry.gate import prediction_tags, predictions_folder
from ner_pipeline.registry.pyfunc import (
    PACKAGE_DIR,
    make_pyfunc_model,
    pip_requirements,
    pyfunc_signature,
    stage_model_files,
)
from ner_pipeline.registry.tags import ARTIFACT_TAG, CHALLENGER, version_tags

logger = logging.getLogger(__name__)

STAGE = "register"
VERSION = "1"
MODEL_ARTIFACT_PATH = "ner_model"
# The version tag naming the register artifact's key: what a registration is looked up and confirmed by.
REGISTER_TAG = f"{ARTIFACT_TAG}{STAGE}"


def register_key(cfg: RegistryConfig, upstream: Mapping[str, str], tracking_uri: str) -> str:
    """Key of a registration: the same model, report and registry always map to the same version.

    The registry enters as its canonical URI, so two spellings of one store (a relative and an absolute SQLite
    path, a server URL with a trailing slash) do not register the same model twice.
    """
    config = {**cfg.model_dump(mode="json"), "tracking_uri": canonical_uri(tracking_uri)}
    return artifact_key(STAGE, VERSION, config, upstream)


def log_and_register(
    cfg: RegistryConfig,
    model_dir: Path,
    tracking_uri: str,
    run_id: str | None,
    tags: Mapping[str, str],
    description: str,
    onnx_dir: Path | None = None,
    run_files: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Log the model as a pyfunc in the MLflow run and register a new version with alias `challenger`.

    When `tags` carry a register key (`artifact.register`) and a version with that key exists, nothing is logged
    or created: that version is the registration (a retry after a crash, or a concurrent run, finds it).

    Args:
        cfg: Registry config (model name).
        model_dir: The fine-tuned model folder (weights, tokenizer, preprocessing.json).
        tracking_uri: MLflow tracking and registry URI.
        run_id: The pipeline's MLflow run; None starts a run of its own.
        tags: Version tags (see `registry.tags.version_tags`).
        description: Version description shown in the MLflow UI.
        onnx_dir: The export folder; the variant its parity check made the serving default is logged with the
            model (only that one: see `registry.pyfunc`).
        run_files: Files to log in the run beside the model, by folder in the run (the test predictions).

    Returns:
        name, version, run_id and model_uri of the version.
    """
    client = client_for(tracking_uri)
    name, key = cfg.model_name, tags.get(REGISTER_TAG)
    found = find_registered(client, name, key)
    if found is not None:
        logger.info("%s version %s already carries register key %s: registering nothing", name, found.version, key)
        model_uri, version, run_id = found.source, str(found.version), found.run_id
    else:
        sources = {"model": str(model_dir)}
        if onnx_dir is not None and onnx_dir.is_dir():
            sources["onnx"] = str(onnx_dir)
        model_uri, version, run_id = _log_and_create_version(name, sources, tracking_uri, run_id, tags)
        first = _first_of_concurrent(client, name, key, version)
        if first is not None:
            model_uri, version, run_id = first.source, str(first.version), first.run_id
    for folder, path in (run_files or {}).items() if run_id else ():  # every time: a retry uploads them again
        client.log_artifact(run_id, str(path), folder)
    client.update_model_version(name, version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version)
    logger.info("%s version %s is the registration (alias %s)", name, version, CHALLENGER)
    return {"name": name, "version": version, "run_id": run_id, "model_uri": model_uri}


def find_registered(client: Any, name: str, key: str | None) -> Any | None:
    """The first (lowest-numbered) version of `name` tagged with register key `key`, or None."""
    if not key:
        return None
    found = client.search_model_versions(f"name = '{name}' and tags.`{REGISTER_TAG}` = '{key}'")
    usable = [v for v in found if str(v.status) != "FAILED_REGISTRATION"]
    return min(usable, key=lambda v: int(v.version)) if usable else None


def _first_of_concurrent(client: Any, name: str, key: str | None, version: str) -> Any | None:
    """When another run registered the same key between our look-up and our creation, keep only the first.

    Returns:
        The earlier version (ours is deleted), or None when ours is the first.
    """
    first = find_registered(client, name, key)
    if first is None or str(first.version) == version:
        return None
    logger.warning(
        "%s: version %s duplicates version %s (same register key %s, registered concurrently): deleting it",
        name,
        version,
        first.version,
        key,
    )
    client.delete_model_version(name, version)
    return first


def _log_and_create_version(
    name: str, sources: Mapping[str, str], tracking_uri: str, run_id: str | None, tags: Mapping[str, str]
) -> tuple[str, str, str]:
    """Log the pyfunc model in run `run_id` (or a new run) and register it: (model_uri, version, run_id).

    `sources` names the model folder (`model`) and the export folder (`onnx`, if any). Only the files of the
    variant the export's parity check made the serving default are logged (`pyfunc.stage_model_files`), and the
    variant is recorded in the MLmodel metadata (`served_backend`, `served_onnx_file`), shown by the MLflow UI.

    The only place that points MLflow's process-wide URIs anywhere, because MLflow 3 leaves no other way:
    `start_run` and `pyfunc.log_model` take no tracking URI, and registering a `models:/<model id>` source makes
    the SQL store look the logged model up through a client on the global URI. Everything else, and above all
    the download path of the server's reload thread, uses a client bound to its URI (`client_for`).
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="ner-logged-model-") as staging:
        onnx_dir = Path(sources["onnx"]) if "onnx" in sources else None
        variant, artifacts = stage_model_files(Path(sources["model"]), onnx_dir, Path(staging))
        served = {"served_backend": variant.backend}
        if variant.onnx_file is not None:
            served["served_onnx_file"] = variant.onnx_file.name
        with fluent_uris(tracking_uri), mlflow.start_run(run_id=run_id) as run, mlflow_prints_to_log():
            signature, example = pyfunc_signature()
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_PATH,
                python_model=make_pyfunc_model(),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(variant.backend),
                code_paths=[str(PACKAGE_DIR)],
                metadata=served,
            )
            version = mlflow.register_model(info.model_uri, name, tags=dict(tags))
    return info.model_uri, str(version.version), run.info.run_id


# Our pyfunc model is a Python object on purpose (`pyfunc.make_pyfunc_model`): MLflow warns about pickling it on
# every registration.
EXPECTED_MLFLOW_WARNINGS = ("Passing a Python object as `python_model`",)


@contextmanager
def mlflow_prints_to_log() -> Iterator[None]:
    """Send what MLflow prints to stderr in a block ("Successfully registered model", "Created version") to our
    log at INFO instead of the console: `register_model` prints them, bypassing logging, on every registration.

    MLflow's print helper and its own log handler write to whatever `sys.stderr` is at the time, so redirecting it
    catches both; a line MLflow logged at WARNING or above is logged at WARNING, unless it is one we expect
    (`EXPECTED_MLFLOW_WARNINGS`).
    """

    original, state = sys.stderr, threading.local()

    class _ToLog(io.TextIOBase):
        def write(self, text: str) -> int:
            if getattr(state, "busy", False):  # a log handler reporting its own failure: to the real stderr
                return original.write(text)
            state.busy = True
            try:
                for line in filter(None, (part.strip() for part in text.splitlines())):
                    serious = any(f" {level} " in f" {line} " for level in ("WARNING", "ERROR", "CRITICAL"))
                    serious = serious and not any(expected in line for expected in EXPECTED_MLFLOW_WARNINGS)
                    logger.log(logging.WARNING if serious else logging.INFO, "mlflow: %s", line)
            finally:
                state.busy = False
            return len(text)

    with redirect_stderr(_ToLog()):
        yield


# MLflow mirrors the URIs it is given into these variables (for subprocesses); they are put back too.
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def fluent_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at `tracking_uri` for a block, then restore both.

    Only `_log_and_create_version` uses this in the library; see its docstring for why it cannot do without.
    Tests that load `models:/` URIs through MLflow's own loaders use it too.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # The values as set, not as resolved: get_registry_uri() returns the tracking URI when none was set, and
    # restoring that would pin every later client's registry to this block's store.
    previous = tracking_utils._tracking_uri, registry_utils._registry_uri
    variables = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = previous
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_register(
    cfg: RegistryConfig,
    upstream: Mapping[str, Artifact],
    store: ArtifactStore,
    tracking_uri: str,
    run_id: str | None,
    extra_tags: Mapping[str, Any] | None = None,
) -> Artifact:
    """Register the trained model once per (model, report, registry): a rerun with nothing changed is a cache hit.

    A cached registration is used only when the registry confirms it (`unconfirmed_reason`); otherwise it is
    discarded and the model registered again, with a warning saying why.

    Args:
        upstream: Artifacts by stage; needs `train` and `evaluate`, uses `ingest` and `export` when present.
    """
    keys = {stage: a.key for stage, a in upstream.items()}
    key = register_key(cfg, keys, tracking_uri)
    cached = store.get(STAGE, key)
    if cached is not None:
        reason = unconfirmed_reason(client_for(tracking_uri), cached)
        if reason is None:
            logger.info("%s: cache hit %s, confirmed by the registry (%s)", STAGE, key, tracking_uri)
            return cached
        logger.warning("%s: cached registration %s does not hold: %s; registering again", STAGE, key, reason)
        store.discard(cached)

    def produce(folder: Path) -> dict[str, Any]:
        train, evaluation = upstream["train"], upstream["evaluate"]
        export = upstream.get("export")
        # The register artifact's own key too: registration is looked up and confirmed by it, and pruning its
        # artifact would otherwise go unnoticed.
        tags = version_tags(evaluation, upstream.get("ingest"), {**keys, STAGE: key}, extra_tags or {})
        predictions = evaluation.path / PREDICTIONS_FILE
        logged = {}
        if predictions.is_file():  # for the promotion gate
            folder_in_run = predictions_folder(evaluation.key)
            tags.update(prediction_tags(predictions, f"{folder_in_run}/{PREDICTIONS_FILE}"))
            logged[folder_in_run] = predictions
        record = log_and_register(
            cfg,
            train.path / "model",
            tracking_uri,
            run_id,
            tags,
            description=describe(evaluation.stats, tags),
            onnx_dir=export.path if export is not None else None,
            run_files=logged,
        )
        summary = describe(evaluation.stats, tags)
        write_version_card(client_for(tracking_uri), record, upstream, tags.get("model.base"), summary)
        write_json_atomic(folder / "registration.json", record)
        return record

    return store.build(STAGE, key, produce, inputs=keys, config=cfg)


def unconfirmed_reason(client: Any, record: Artifact) -> str | None:
    """Why the registry does not confirm a register artifact's record, or None when it does.

    Confirmed means: the recorded version exists under the recorded name, carries this artifact's register key,
    and belongs to the recorded MLflow run.

    Raises:
        MlflowException: the registry could not be asked (unreachable, locked): no verdict either way.
    """
    from mlflow.exceptions import MlflowException

    name, version, run_id = (record.stats.get(k) for k in ("name", "version", "run_id"))
    if not name or not version:
        return "its record names no model version"
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return f"{name} version {version} does not exist in the registry"
        raise
    carried = (found.tags or {}).get(REGISTER_TAG)
    if carried != record.key:
        return f"{name} version {version} carries register key {carried or '(none)'}, not {record.key}"
    if found.run_id != run_id:
        return f"{name} version {version} belongs to run {found.run_id}, not {run_id}"
    if str(found.status) == "FAILED_REGISTRATION":
        return f"{name} version {version} failed to register"
    return None


def register_records(store: ArtifactStore) -> list[Artifact]:
    """The register artifacts under `store`: what this machine believes is registered (see
    `catalog.protected_artifact_keys`)."""
    return [a for a in store.list() if a.stage == STAGE]


def describe(stats: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """A one-paragraph version description for the MLflow UI."""
    f1 = stats.get("test_f1")
    strict = stats.get("test_f1_strict")
    parts = [f"NER model fine-tuned from {tags.get('model.base', 'a base model')}."]
    if f1 is not None:
        parts.append(f"Test F1 {f1:.4f} (conlleval), {strict:.4f} strict." if strict is not None else f"Test F1 {f1}.")
    if "data.fingerprint" in tags:
        parts.append(f"Data fingerprint {tags['data.fingerprint'][:12]}.")
    return " ".join(parts)
