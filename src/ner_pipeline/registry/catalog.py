"""Reading the registry: list versions, compare runs side by side, resolve `models:/` URIs and download models.

Every call takes the tracking URI and goes through a client bound to it (`existing_client`), never through
MLflow's process-wide URIs, so the server's reload thread can fetch a model without touching anyone else's state.
None of them acts on a store that is not there: a mistyped SQLite path is an error, not a new empty registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact
from ner_pipeline.errors import RegistryError
from ner_pipeline.registry.client import existing_client
from ner_pipeline.registry.register import REGISTER_TAG
from ner_pipeline.registry.tags import ARTIFACT_TAG, version_metrics


def list_versions(tracking_uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with aliases, key metrics and creation time, newest first."""
    client = existing_client(tracking_uri)
    query = f"name = '{name}'" if name else ""
    versions = client.search_model_versions(query)
    aliases: dict[tuple[str, str], list[str]] = {}
    for model_name in {v.name for v in versions}:  # search results carry no aliases; the model does
        for alias, number in (client.get_registered_model(model_name).aliases or {}).items():
            aliases.setdefault((model_name, str(number)), []).append(alias)
    rows = []
    for v in versions:
        metrics = version_metrics(v)
        rows.append(
            {
                "name": v.name,
                "version": str(v.version),
                "aliases": ",".join(sorted(aliases.get((v.name, str(v.version)), []))),
                "test_f1": metrics.get("test_f1"),
                "test_f1_strict": metrics.get("test_f1_strict"),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "run_id": v.run_id,
            }
        )
    return sorted(rows, key=lambda r: (r["name"], -int(r["version"])))


def protected_artifact_keys(tracking_uri: str, records: Sequence[Artifact]) -> set[str]:
    """Artifact keys recorded on any registered model version (pruning must keep these).

    Args:
        tracking_uri: The registry to ask.
        records: The register artifacts on disk (`register.register_records(store)`): what was registered from
            here. If the registry holds none of them, it is most likely the wrong registry (a mistyped URI, a
            fresh server) and its answer would protect nothing, so it is refused.

    Raises:
        RegistryError: the store does not exist or cannot be read, or it holds none of `records`' versions.
    """
    from mlflow.exceptions import MlflowException

    try:
        versions = existing_client(tracking_uri).search_model_versions("")
    except MlflowException as exc:  # no registry reachable: refuse to guess what is safe to delete
        raise RegistryError(f"cannot read the model registry at {tracking_uri}: {exc.message}") from None
    registered = {(mv.tags or {}).get(REGISTER_TAG) for mv in versions}
    if records and not any(r.key in registered for r in records):
        example = records[-1]
        raise RegistryError(
            f"the registry at {tracking_uri} holds none of the {len(records)} version(s) registered from here "
            f"(e.g. {example.stats.get('name')} v{example.stats.get('version')}), so it would protect nothing: "
            f"check the tracking URI, or if those registrations are gone for good delete {example.path.parent}"
        )
    return {v for mv in versions for k, v in (mv.tags or {}).items() if k.startswith(ARTIFACT_TAG)}


def resolve_run(client: Any, ref: str) -> tuple[str, Any]:
    """A run id, `NAME/VERSION` or `models:/NAME/VERSION` → (label, run)."""
    from mlflow.exceptions import MlflowException

    text = ref.removeprefix("models:/")
    try:
        if "/" in text or "@" in text:
            name, sep, rest = text.partition("@") if "@" in text else text.partition("/")
            mv = client.get_model_version_by_alias(name, rest) if sep == "@" else client.get_model_version(name, rest)
            return f"{name} v{mv.version}", client.get_run(mv.run_id)
        return ref[:8], client.get_run(ref)
    except MlflowException as exc:
        raise RegistryError(f"'{ref}': not a run id or registered model version ({exc.message})") from None


def compare(tracking_uri: str, refs: list[str]) -> dict[str, Any]:
    """Params that differ and all metrics of several runs or model versions, side by side.

    Returns:
        {"columns": [labels], "params": {name: [values]}, "metrics": {name: [values]}}
    """
    if len(refs) < 2:
        raise RegistryError("compare needs at least two runs or model versions")
    client = existing_client(tracking_uri)
    resolved = [resolve_run(client, r) for r in refs]
    labels = [label for label, _ in resolved]
    params = sorted({k for _, run in resolved for k in run.data.params})
    metrics = sorted({k for _, run in resolved for k in run.data.metrics})
    differing = {
        k: [run.data.params.get(k) for _, run in resolved]
        for k in params
        if len({run.data.params.get(k) for _, run in resolved}) > 1
    }
    return {
        "columns": labels,
        "params": differing,
        "metrics": {k: [run.data.metrics.get(k) for _, run in resolved] for k in metrics},
    }


@dataclass
class FetchedModel:
    """A registered model version downloaded to local folders."""

    model_dir: Path
    onnx_dir: Path | None
    name: str
    version: str
    alias: str | None
    metrics: dict[str, float]


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@alias` → (NAME, None, alias); `models:/NAME/3` → (NAME, "3", None)."""
    body = model_uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    name, _, version = body.partition("/")
    if not version:
        raise RegistryError(f"{model_uri}: expected models:/NAME@alias or models:/NAME/VERSION")
    return name, version, None


def resolve_version(tracking_uri: str, model_uri: str) -> Any:
    """The ModelVersion a `models:/` URI points at now."""
    return _resolve_version(existing_client(tracking_uri), model_uri)


def _resolve_version(client: Any, model_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(model_uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{model_uri}: {exc.message}") from None


def fetch_model(model_uri: str, tracking_uri: str, dest: Path | None = None) -> FetchedModel:
    """Download a registered version (`models:/NAME@alias` or `/VERSION`): its model folder and ONNX files."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, alias = parse_model_uri(model_uri)
    client = existing_client(tracking_uri)
    version = _resolve_version(client, model_uri)
    try:
        # The version's own storage, not `models:/...`: MLflow resolves that scheme through the process-wide
        # registry URI whatever client or argument is given. Pinned to the number, as the alias may move meanwhile.
        source = client.get_model_version_download_uri(name, version.version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dest) if dest else None, tracking_uri=tracking_uri
        )
    except MlflowException as exc:
        raise RegistryError(f"{model_uri}: {exc.message}") from None
    paths = logged_artifact_paths(Path(local))
    if "model" not in paths or not paths["model"].is_dir():
        raise RegistryError(f"{model_uri}: no model folder inside the logged model ({local})")
    return FetchedModel(
        model_dir=paths["model"],
        onnx_dir=paths.get("onnx"),
        name=name,
        version=str(version.version),
        alias=alias,
        metrics=version_metrics(version),
    )


def logged_artifact_paths(folder: Path) -> dict[str, Path]:
    """Where a downloaded pyfunc model keeps each of its named artifacts (MLflow names files by their source)."""
    import yaml

    mlmodel = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    return {name: folder / entry["path"] for name, entry in artifacts.items()}


def download_model(model_uri: str, tracking_uri: str, dest: Path | None = None) -> Path:
    """Fetch the model folder of `models:/NAME@alias` (or `/VERSION`) and return its local path."""
    return fetch_model(model_uri, tracking_uri, dest).model_dir
