"""The register stage: log the trained model as a pyfunc in the pipeline's MLflow run and register a version.

A registration is cached like any stage: the same model, report and registry map to the same key, so an
unchanged rerun registers nothing new. The new version gets the alias `challenger`; moving `production` is the
promotion gate's job (`registry.promotion`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, write_json_atomic
from ner_pipeline.config import RegistryConfig
from ner_pipeline.registry.client import client_for
from ner_pipeline.registry.pyfunc import PACKAGE_DIR, make_pyfunc_model, pip_requirements, pyfunc_signature
from ner_pipeline.registry.tags import CHALLENGER, version_tags

logger = logging.getLogger(__name__)

STAGE = "register"
VERSION = "1"
MODEL_ARTIFACT_PATH = "ner_model"


def register_key(cfg: RegistryConfig, upstream: Mapping[str, str], tracking_uri: str) -> str:
    """Key of a registration: the same model, report and registry always map to the same version."""
    config = {**cfg.model_dump(mode="json"), "tracking_uri": tracking_uri}
    return artifact_key(STAGE, VERSION, config, upstream)


def log_and_register(
    cfg: RegistryConfig,
    model_dir: Path,
    tracking_uri: str,
    run_id: str | None,
    tags: Mapping[str, str],
    description: str,
    onnx_dir: Path | None = None,
) -> dict[str, Any]:
    """Log the model as a pyfunc in the MLflow run and register a new version with alias `challenger`.

    Args:
        cfg: Registry config (model name).
        model_dir: The fine-tuned model folder (weights, tokenizer, preprocessing.json).
        tracking_uri: MLflow tracking and registry URI.
        run_id: The pipeline's MLflow run; None starts a run of its own.
        tags: Version tags (see `registry.tags.version_tags`).
        description: Version description shown in the MLflow UI.
        onnx_dir: Exported ONNX variants to ship with the model, if any.

    Returns:
        name, version, run_id and model_uri of the new version.
    """
    client = client_for(tracking_uri)
    artifacts = {"model": str(model_dir)}
    if onnx_dir is not None and onnx_dir.is_dir():
        artifacts["onnx"] = str(onnx_dir)
    model_uri, version, run_id = _log_and_create_version(cfg.model_name, artifacts, tracking_uri, run_id, tags)
    client.update_model_version(cfg.model_name, version, description=description)
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    logger.info("registered %s version %s (alias %s)", cfg.model_name, version, CHALLENGER)
    return {"name": cfg.model_name, "version": version, "run_id": run_id, "model_uri": model_uri}


def _log_and_create_version(
    name: str, artifacts: Mapping[str, str], tracking_uri: str, run_id: str | None, tags: Mapping[str, str]
) -> tuple[str, str, str]:
    """Log the pyfunc model in run `run_id` (or a new run) and register it: (model_uri, version, run_id).

    The only place that points MLflow's process-wide URIs anywhere, because MLflow 3 leaves no other way:
    `start_run` and `pyfunc.log_model` take no tracking URI, and registering a `models:/<model id>` source makes
    the SQL store look the logged model up through a client on the global URI. Everything else, and above all
    the download path of the server's reload thread, uses a client bound to its URI (`client_for`).
    """
    import mlflow

    with _fluent_uris(tracking_uri), mlflow.start_run(run_id=run_id) as run:
        signature, example = pyfunc_signature()
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=make_pyfunc_model(),
            artifacts=dict(artifacts),
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            code_paths=[str(PACKAGE_DIR)],
        )
        version = mlflow.register_model(info.model_uri, name, tags=dict(tags))
    return info.model_uri, str(version.version), run.info.run_id


# MLflow mirrors the URIs it is given into these variables (for subprocesses); they are put back too.
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def _fluent_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at `tracking_uri` for a block, then restore both.

    Only `_log_and_create_version` uses this; see its docstring for why it cannot do without.
    """
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    variables = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
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

    Args:
        upstream: Artifacts by stage; needs `train` and `evaluate`, uses `ingest` and `export` when present.
    """
    keys = {stage: a.key for stage, a in upstream.items()}
    key = register_key(cfg, keys, tracking_uri)

    def produce(folder: Path) -> dict[str, Any]:
        train, evaluation = upstream["train"], upstream["evaluate"]
        export = upstream.get("export")
        # The register artifact's own key too: it records this registration, and pruning it would make an
        # unchanged rerun register the same model again.
        tags = version_tags(evaluation, upstream.get("ingest"), {**keys, STAGE: key}, extra_tags or {})
        record = log_and_register(
            cfg,
            train.path / "model",
            tracking_uri,
            run_id,
            tags,
            description=describe(evaluation.stats, tags),
            onnx_dir=export.path if export is not None else None,
        )
        write_json_atomic(folder / "registration.json", record)
        return record

    return store.build(STAGE, key, produce, inputs=keys, config=cfg)


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
