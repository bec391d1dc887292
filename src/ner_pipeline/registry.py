"""MLflow model registry: register with lineage, gated promotion by alias, rollback, audit history, comparison.

Only aliases are used (`challenger`, `production`, `previous-production`), never the deprecated stages. MLflow
keeps no history of alias moves, so every promotion, refusal and rollback is appended to an audit trail stored
as numbered tags (`audit.000001`, ...) on the registered model, one JSON record each.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, write_json_atomic
from ner_pipeline.config import RegistryConfig
from ner_pipeline.errors import RegistryError

logger = logging.getLogger(__name__)

STAGE = "register"
VERSION = "1"
CHALLENGER = "challenger"
PRODUCTION = "production"
PREVIOUS = "previous-production"
METRIC_TAG = "metric."
AUDIT_TAG = "audit."
ARTIFACT_TAG = "artifact."
TYPE_TAG = "type_f1."
MODEL_ARTIFACT_PATH = "ner_model"
# Evaluate's test metrics that are not per-entity-type scores.
NOT_TYPES = {"strict", "ci_low", "ci_high"}


@contextmanager
def mlflow_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at `tracking_uri` for a block, then restore both.

    `models:/` downloads and `register_model` read the registry URI, which does not follow the tracking URI
    passed to a single call; without this they would look in MLflow's default store.
    """
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient bound to `tracking_uri` (registry at the same URI)."""
    from mlflow import MlflowClient

    from ner_pipeline.tracking import prepare_store

    prepare_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# --- registering -------------------------------------------------------------------------------------------


def register_key(cfg: RegistryConfig, upstream: Mapping[str, str], tracking_uri: str) -> str:
    """Key of a registration: the same model, report and registry always map to the same version."""
    config = {**cfg.model_dump(mode="json"), "tracking_uri": tracking_uri}
    return artifact_key(STAGE, VERSION, config, upstream)


def version_tags(
    evaluation: Artifact, ingest: Artifact | None, upstream: Mapping[str, str], extra: Mapping[str, Any]
) -> dict[str, str]:
    """Tags that make a model version self-describing: metrics, data fingerprint, lineage keys."""
    tags: dict[str, Any] = {f"{METRIC_TAG}{k}": v for k, v in evaluation.stats.items() if _is_number(v)}
    tags.update({f"{TYPE_TAG}{t}": v for t, v in type_scores(evaluation.stats).items()})
    if ingest is not None:
        tags["data.fingerprint"] = ingest.stats.get("fingerprint")
        tags["data.test_fingerprint"] = ingest.stats.get("test_fingerprint", ingest.stats.get("fingerprint"))
    tags.update({f"{ARTIFACT_TAG}{stage}": key for stage, key in upstream.items()})
    tags.update(extra)
    return {k: str(v) for k, v in tags.items() if v is not None}


def type_scores(stats: Mapping[str, Any], prefix: str = "test_f1_") -> dict[str, float]:
    """Per-entity-type test F1 from evaluate's flat stats (`test_f1_PER` → {"PER": ...})."""
    return {
        k[len(prefix) :]: float(v)
        for k, v in stats.items()
        if k.startswith(prefix) and k[len(prefix) :] not in NOT_TYPES and _is_number(v)
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
        tags: Version tags (see `version_tags`).
        description: Version description shown in the MLflow UI.
        onnx_dir: Exported ONNX variants to ship with the model, if any.

    Returns:
        name, version, run_id and model_uri of the new version.
    """
    import mlflow

    client = client_for(tracking_uri)
    artifacts = {"model": str(model_dir)}
    if onnx_dir is not None and onnx_dir.is_dir():
        artifacts["onnx"] = str(onnx_dir)
    with mlflow_uris(tracking_uri), mlflow.start_run(run_id=run_id) as run:
        signature, example = pyfunc_signature()
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=make_pyfunc_model(),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            # Our package travels with the model, so `mlflow models serve` works where ner-pipeline is not installed.
            code_paths=[str(Path(__file__).resolve().parent)],
        )
        version = mlflow.register_model(info.model_uri, cfg.model_name, tags=dict(tags))
        run_id = run.info.run_id
    client.update_model_version(cfg.model_name, version.version, description=description)
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
    logger.info("registered %s version %s (alias %s)", cfg.model_name, version.version, CHALLENGER)
    return {"name": cfg.model_name, "version": str(version.version), "run_id": run_id, "model_uri": info.model_uri}


# What the logged model's code (ner_pipeline.predict and the modules it imports) needs at load time.
PYFUNC_REQUIREMENTS = ("torch", "transformers", "onnxruntime", "mlflow", "numpy", "regex", "pydantic", "pyyaml")


def _pip_requirements() -> list[str]:
    """Pinned to the versions that trained and exported the model (ner-pipeline itself goes in code_paths)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in PYFUNC_REQUIREMENTS]


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


# --- promotion -----------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """The outcome of a promotion attempt, as printed and as recorded in the audit trail."""

    action: str  # promote, refuse, rollback
    model: str
    to_version: str | None
    from_version: str | None
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    actor: str = field(default_factory=lambda: _actor())
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    forced: bool = False

    @property
    def accepted(self) -> bool:
        return self.action in ("promote", "rollback")

    def summary(self) -> str:
        numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items())
        moved = f"v{self.from_version or '-'} -> v{self.to_version or '-'}"
        return f"{self.action.upper()} {self.model} {moved}: {self.reason}" + (f" [{numbers}]" if numbers else "")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def version_metrics(version: Any, prefix: str = METRIC_TAG) -> dict[str, float]:
    """Numbers recorded as `<prefix>*` tags on a model version (`metric.*` or per-type `type_f1.*`)."""
    found: dict[str, float] = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(prefix):
            try:
                found[key[len(prefix) :]] = float(value)
            except ValueError:
                continue
    return found


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    """The model version behind an alias, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(client: Any, name: str, version: str | None) -> Any:
    """A model version by number, or the `challenger` when no number is given."""
    from mlflow.exceptions import MlflowException

    try:
        if version is None:
            found = alias_version(client, name, CHALLENGER)
            if found is None:
                raise RegistryError(f"model '{name}' has no '{CHALLENGER}' alias; pass --version")
            return found
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model '{name}' version {version}: {exc.message}") from None


def gate(candidate: Any, current: Any | None, cfg: RegistryConfig) -> tuple[bool, str, dict[str, Any]]:
    """Decide whether `candidate` may replace `current` as production.

    The candidate must have the configured metric, be measured on the same test-set fingerprint as production,
    beat it by at least `min_delta`, and lose no more than `max_type_drop` F1 on any entity type.

    Returns:
        (passed, reason, numbers)
    """
    metric = cfg.metric
    cand = version_metrics(candidate)
    if metric not in cand:
        return False, f"version {candidate.version} has no '{metric}' metric", {}
    if current is None:
        return True, "no production version yet", {metric: cand[metric]}
    prod = version_metrics(current)
    numbers: dict[str, Any] = {f"candidate_{metric}": cand[metric]}
    if metric not in prod:
        return False, f"production version {current.version} has no '{metric}' metric to compare", numbers
    numbers[f"production_{metric}"] = prod[metric]
    numbers["delta"] = round(cand[metric] - prod[metric], 6)
    cand_fp = candidate.tags.get("data.test_fingerprint")
    prod_fp = current.tags.get("data.test_fingerprint")
    if not cand_fp or cand_fp != prod_fp:
        return (
            False,
            f"test sets differ (fingerprint {str(cand_fp)[:12]} vs production {str(prod_fp)[:12]}): "
            "the numbers are not comparable",
            numbers,
        )
    if cand[metric] - prod[metric] < cfg.min_delta or (cfg.min_delta == 0 and cand[metric] <= prod[metric]):
        return (
            False,
            f"{metric} {cand[metric]:.4f} does not beat production {prod[metric]:.4f} by {cfg.min_delta}",
            numbers,
        )
    cand_types, prod_types = version_metrics(candidate, TYPE_TAG), version_metrics(current, TYPE_TAG)
    for entity in sorted(prod_types):
        drop = prod_types[entity] - cand_types.get(entity, 0.0)
        if drop > cfg.max_type_drop:
            numbers[f"drop_{entity}"] = round(drop, 6)
            return False, f"{entity} F1 falls by {drop * 100:.1f} points (limit {cfg.max_type_drop * 100:.1f})", numbers
    return True, f"{metric} improves by {cand[metric] - prod[metric]:.4f}", numbers


def promote(
    tracking_uri: str,
    cfg: RegistryConfig,
    name: str,
    version: str | None = None,
    force: bool = False,
    reason: str | None = None,
) -> Decision:
    """Move alias `production` to a version if the gate passes (or when forced, with a reason).

    The version losing `production` gets `previous-production`. Every outcome is appended to the audit trail and
    recorded on the candidate version.

    Raises:
        RegistryError: the model or version does not exist, or --force without --reason.
    """
    if force and not reason:
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    client = client_for(tracking_uri)
    candidate = get_version(client, name, version)
    current = alias_version(client, name, PRODUCTION)
    if current is not None and current.version == candidate.version:
        decision = Decision("refuse", name, str(candidate.version), str(current.version), "already production")
        _record(client, decision, candidate.version)
        return decision
    passed, why, numbers = gate(candidate, current, cfg)
    from_version = str(current.version) if current is not None else None
    to_version = str(candidate.version)
    if passed or force:
        text = f"forced: {reason} (gate: {why})" if force and not passed else why
        decision = Decision("promote", name, to_version, from_version, text, numbers, forced=force and not passed)
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, current.version)
        client.set_registered_model_alias(name, PRODUCTION, candidate.version)
    else:
        decision = Decision("refuse", name, to_version, from_version, why, numbers)
    _record(client, decision, candidate.version)
    logger.info(decision.summary())
    return decision


def rollback(tracking_uri: str, name: str, reason: str | None = None) -> Decision:
    """Put `production` back on `previous-production` (which then points at the version rolled back from)."""
    client = client_for(tracking_uri)
    previous = alias_version(client, name, PREVIOUS)
    current = alias_version(client, name, PRODUCTION)
    if previous is None:
        raise RegistryError(f"model '{name}' has no '{PREVIOUS}' alias: nothing to roll back to")
    client.set_registered_model_alias(name, PRODUCTION, previous.version)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    decision = Decision(
        "rollback",
        name,
        str(previous.version),
        str(current.version) if current else None,
        reason or "rollback requested",
    )
    _record(client, decision, previous.version)
    logger.info(decision.summary())
    return decision


def _record(client: Any, decision: Decision, version: str | None) -> None:
    """Append the decision to the model's audit trail and tag the version it concerns."""
    # A time-ordered key with a random tail: two decisions recorded at once cannot overwrite each other's entry,
    # as numbering by counting the existing entries could.
    entry = f"{AUDIT_TAG}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    record = asdict(decision)
    record["reason"] = _clip(decision.reason)  # a tag value is bounded; a pasted essay must not fail the promotion
    client.set_registered_model_tag(decision.model, entry, json.dumps(record))
    if version is not None:
        client.set_model_version_tag(decision.model, version, "promotion.last_decision", decision.action)
        client.set_model_version_tag(decision.model, version, "promotion.last_reason", _clip(decision.reason))
        client.set_model_version_tag(decision.model, version, "promotion.last_actor", decision.actor)


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """The audit trail of a registered model, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        model = client_for(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}': {exc.message}") from None
    entries = sorted((k, v) for k, v in (model.tags or {}).items() if k.startswith(AUDIT_TAG))
    return [json.loads(v) for _, v in entries]


# --- inspection ----------------------------------------------------------------------------------------------


def list_versions(tracking_uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with aliases, key metrics and creation time, newest first."""
    client = client_for(tracking_uri)
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


def protected_artifact_keys(tracking_uri: str) -> set[str]:
    """Artifact keys recorded on any registered model version (pruning must keep these)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client_for(tracking_uri).search_model_versions("")
    except MlflowException as exc:  # no registry reachable: refuse to guess what is safe to delete
        raise RegistryError(f"cannot read the model registry at {tracking_uri}: {exc.message}") from None
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
    client = client_for(tracking_uri)
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
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(model_uri)
    client = client_for(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{model_uri}: {exc.message}") from None


def fetch_model(model_uri: str, tracking_uri: str, dest: Path | None = None) -> FetchedModel:
    """Download a registered version (`models:/NAME@alias` or `/VERSION`): its model folder and ONNX files."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, alias = parse_model_uri(model_uri)
    version = resolve_version(tracking_uri, model_uri)
    pinned = f"models:/{name}/{version.version}"  # the alias may move while we download
    try:
        with mlflow_uris(tracking_uri):
            local = mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(dest) if dest else None)
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


# --- the logged model ------------------------------------------------------------------------------------------


def pyfunc_signature() -> tuple[Any, Any]:
    """Input schema (a `text` column of strings) and an example for the logged model."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": ["Angela Merkel met Emmanuel Macron in Paris ."]})
    return infer_signature(example), example


def make_pyfunc_model() -> Any:
    """An MLflow PythonModel that serves raw text through our predictor (so `models:/...` predicts like we do)."""
    import mlflow.pyfunc

    class NerPyfuncModel(mlflow.pyfunc.PythonModel):
        """Raw text in, entities with character offsets out; runs `ner_pipeline.predict.Predictor`."""

        def load_context(self, context: Any) -> None:
            from ner_pipeline.predict import Predictor

            self.predictor = Predictor.load(Path(context.artifacts["model"]), backend="torch")

        # No type hints here: MLflow would try to derive a schema from them; the signature is given explicitly.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
            aggregation = (params or {}).get("aggregation", "first")
            return [[e.model_dump() for e in ents] for ents in self.predictor.predict(texts, aggregation=aggregation)]

    return NerPyfuncModel()
