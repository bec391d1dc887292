"""The `ner-pipeline` command line.

Every command loads the config through `config.load_config` (file + `--set key=value` overrides) and calls the
same library functions as the Prefect flow. Errors a user can act on are printed as one line, without a
traceback, and exit with status 1.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ner_pipeline.artifacts import ArtifactStore, folder_size
from ner_pipeline.config import PipelineConfig, dump_config, load_config
from ner_pipeline.errors import NerPipelineError

app = typer.Typer(
    help="Train, evaluate, register, export and serve NER models.", no_args_is_help=True, add_completion=False
)
artifacts_app = typer.Typer(help="Inspect and prune the artifact cache.", no_args_is_help=True)
config_app = typer.Typer(help="Show the resolved config.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models: versions, aliases, audit history.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")

logger = logging.getLogger("ner_pipeline.cli")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config value: key=value (repeatable).")
]
DEFAULT_CONFIG = Path("configs/quickstart.yaml")
F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; library modules only emit records, the CLI decides where they go."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "urllib3", "alembic", "filelock", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors(func: F) -> F:
    """Turn a NerPipelineError into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NerPipelineError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def offline_defaults() -> None:
    """Environment defaults for the run: Prefect state inside the project, no telemetry."""
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ner_pipeline")
    # Library logs outside a flow run (e.g. `ner-pipeline stage`) go to the console only, without a warning each.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    setup_logging(verbose)
    offline_defaults()


def _load(config: Path, overrides: list[str] | None) -> PipelineConfig:
    """The config file with overrides; outside a project (no configs/quickstart.yaml) the built-in defaults."""
    if config == DEFAULT_CONFIG and not config.is_file():
        return load_config(None, overrides or [])
    return load_config(config, overrides or [])


@app.command()
@user_errors
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this stage (repeatable).")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Run this stage and all after it.")] = None,
) -> None:
    """Run the training flow end to end under Prefect (a temporary local server unless PREFECT_API_URL is set)."""
    _load(config, set_)  # fail fast on a bad config, before Prefect starts
    # The flow lives outside the library (which knows nothing of Prefect); import it only for this command.
    from flows.training import training_flow

    summary = training_flow(
        config_path=str(config),
        overrides=list(set_ or []),
        only=list(only or []) or None,
        from_stage=from_stage,
    )
    typer.echo("")
    typer.echo(summary.to_markdown())
    typer.echo("")
    typer.echo(next_steps(summary))


def next_steps(summary: Any) -> str:
    """The closing lines of `run`: where to look next."""
    lines = ["Where to look next:"]
    if summary.run_id:
        lines.append(f"  MLflow UI:  mlflow ui --backend-store-uri {summary.tracking_uri}   (run {summary.run_id})")
    evaluated = summary.stages.get("evaluate")
    if evaluated is not None:
        lines.append(f"  Report:     {evaluated.path / 'report.md'}")
    trained = summary.stages.get("train")
    if trained is not None:
        lines.append(f"  Model:      {trained.path / 'model'}")
    if summary.registered:
        name, version = summary.registered["name"], summary.registered["version"]
        lines.append(f"  Registered: models:/{name}/{version} (alias challenger)")
        if summary.decision:
            lines.append(f"  Gate:       {summary.decision}")
        lines.append(
            f"  Promote:    ner-pipeline promote --model {name} --version {version}   (see: models history {name})"
        )
    if summary.onnx_dir:
        lines.append(f"  ONNX:       {summary.onnx_dir}")
    if summary.registered:
        lines.append(f"  Serve:      ner-pipeline serve --model models:/{summary.registered['name']}@production")
    elif trained is not None:
        lines.append(f"  Serve:      ner-pipeline serve --model {trained.path / 'model'}")
    return "\n".join(lines)


@app.command()
@user_errors
def ingest(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Read and normalise the data set; print the artifact path and a stats table."""
    from ner_pipeline.ingest import run_ingest, stats_table

    cfg = _load(config, set_)
    artifact = run_ingest(cfg.data, ArtifactStore(cfg.artifacts_root))
    typer.echo(f"ingest artifact: {artifact.path}{' (cached)' if artifact.cached else ''}")
    typer.echo(stats_table(artifact.stats))


@app.command()
@user_errors
def stage(
    name: Annotated[str, typer.Argument(help="ingest, tokenize, train or evaluate.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Run one stage and what it needs, without Prefect or MLflow (upstream stages come from the cache)."""
    from ner_pipeline import pipeline

    cfg = _load(config, set_)
    index = pipeline.STAGES.index(pipeline.check_stage(name))
    done = pipeline.run_pipeline(cfg, ArtifactStore(cfg.artifacts_root), stages=pipeline.STAGES[: index + 1])
    typer.echo(f"{name} artifact: {done[name].path}{' (cached)' if done[name].cached else ''}")


@app.command()
@user_errors
def evaluate(
    model: Annotated[str, typer.Option(help="Model folder or models:/NAME@alias.")],
    data: Annotated[str, typer.Option(help="A CoNLL file, or a folder/JSONL/hub id with --set data.source=...")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option(help="Where to write the report.")] = Path("evaluation"),
) -> None:
    """Score a trained or registered model on a test set."""
    from ner_pipeline.evaluate import evaluate_model
    from ner_pipeline.ingest import read_evaluation_data

    cfg = _load(config, set_)
    model_dir = resolve_model_dir(model, cfg)
    splits = read_evaluation_data(data, cfg.data)
    report = evaluate_model(model_dir, splits, cfg.evaluate, out)
    typer.echo(report.to_markdown() if hasattr(report, "to_markdown") else str(report))
    typer.echo(f"\nreport written to {out}")


def resolve_model_dir(model: str, cfg: PipelineConfig) -> Path:
    """A model folder, or a registered model version downloaded from MLflow."""
    if model.startswith("models:/"):
        from ner_pipeline import registry, tracking

        uri = tracking.resolve_tracking_uri(cfg.tracking, os.environ)
        return registry.download_model(model, uri)
    return Path(model)


@artifacts_app.command("list")
@user_errors
def artifacts_list(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Show what is cached: stage, key, size, created, inputs."""
    cfg = _load(config, set_)
    rows = [("stage", "key", "size", "created", "inputs")]
    for a in ArtifactStore(cfg.artifacts_root).list():
        inputs = ", ".join(f"{k}={v[:8]}" for k, v in a.inputs.items()) or "-"
        rows.append((a.stage, a.key, human_size(folder_size(a.path)), a.created, inputs))
    typer.echo(format_table(rows))


@artifacts_app.command("prune")
@user_errors
def artifacts_prune(
    keep_last: Annotated[int, typer.Option(help="Artifacts to keep per stage, newest first.")] = 3,
    dry_run: Annotated[bool, typer.Option(help="Only list what would go.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Free disk, never touching what registered model versions point to (or their lineage)."""
    cfg = _load(config, set_)
    protected = registered_artifact_keys(cfg)
    removed = ArtifactStore(cfg.artifacts_root).prune(keep_last, protected, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for a in removed:
        typer.echo(f"{verb} {a.stage}/{a.key}")
    typer.echo(f"{verb} {len(removed)} artifact(s); {len(protected)} key(s) protected by the model registry")


def registered_artifact_keys(cfg: PipelineConfig) -> set[str]:
    """Artifact keys recorded on registered model versions."""
    from ner_pipeline import registry, tracking

    return registry.protected_artifact_keys(tracking.resolve_tracking_uri(cfg.tracking, os.environ))


def _tracking_uri(config: Path, overrides: list[str] | None) -> str:
    from ner_pipeline import tracking

    return tracking.resolve_tracking_uri(_load(config, overrides).tracking, os.environ)


@app.command()
@user_errors
def promote(
    model: Annotated[str, typer.Option(help="Registered model name.")],
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the challenger).")] = None,
    force: Annotated[bool, typer.Option(help="Override the gate (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why, recorded in the audit trail.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Move alias `production` to a version if it beats production on the configured metric."""
    from ner_pipeline import registry

    cfg = _load(config, set_)
    decision = registry.promote(_tracking_uri(config, set_), cfg.registry, model, version, force, reason)
    typer.echo(decision.summary())
    if not decision.accepted:
        raise typer.Exit(2)


@app.command()
@user_errors
def rollback(
    model: Annotated[str, typer.Option(help="Registered model name.")],
    reason: Annotated[str | None, typer.Option(help="Why, recorded in the audit trail.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Put `production` back on `previous-production`."""
    from ner_pipeline import registry

    typer.echo(registry.rollback(_tracking_uri(config, set_), model, reason).summary())


@models_app.command("list")
@user_errors
def models_list(
    name: Annotated[str | None, typer.Argument(help="Registered model name (all when omitted).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Versions, aliases, key metrics and creation time."""
    from ner_pipeline import registry

    rows = [("name", "version", "aliases", "test_f1", "strict_f1", "created", "run")]
    for r in registry.list_versions(_tracking_uri(config, set_), name):
        f1, strict = r["test_f1"], r["test_f1_strict"]
        rows.append(
            (
                r["name"],
                r["version"],
                r["aliases"] or "-",
                f"{f1:.4f}" if f1 is not None else "-",
                f"{strict:.4f}" if strict is not None else "-",
                r["created"],
                (r["run_id"] or "-")[:8],
            )
        )
    typer.echo(format_table(rows))


@models_app.command("history")
@user_errors
def models_history(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Every promotion, refusal and rollback of a registered model, oldest first."""
    from ner_pipeline import registry

    rows = [("when", "who", "action", "from", "to", "reason")]
    for e in registry.history(_tracking_uri(config, set_), name):
        rows.append(
            (e["at"], e["actor"], e["action"], str(e["from_version"] or "-"), str(e["to_version"] or "-"), e["reason"])
        )
    typer.echo(format_table(rows))


@app.command()
@user_errors
def compare(
    refs: Annotated[list[str], typer.Argument(help="Run ids, NAME/VERSION or models:/NAME@alias.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Params that differ and metrics, side by side, for runs or model versions."""
    from ner_pipeline import registry

    table = registry.compare(_tracking_uri(config, set_), refs)
    header = ("", *table["columns"])
    rows: list[tuple[str, ...]] = [header]
    rows += [(f"param {k}", *(str(v) for v in vals)) for k, vals in table["params"].items()]
    rows += [
        (f"metric {k}", *(f"{v:.4f}" if v is not None else "-" for v in vals)) for k, vals in table["metrics"].items()
    ]
    typer.echo(format_table(rows))


ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model folder or models:/NAME@alias (default: registry production).")
]
BackendOpt = Annotated[str | None, typer.Option(help="auto, torch, onnx or onnx-int8.")]
OnnxOpt = Annotated[str | None, typer.Option(help="Export folder for a model folder (ONNX backends).")]


def model_source(cfg: PipelineConfig, model: str | None) -> str:
    """The model to load: --model, else serve.model_uri, else the registry's production alias."""
    return model or cfg.serve.model_uri or f"models:/{cfg.registry.model_name}@production"


@app.command()
@user_errors
def predict(
    text: Annotated[list[str] | None, typer.Argument(help="Text(s) to tag.")] = None,
    file: Annotated[Path | None, typer.Option(help="A text file: one text per non-empty line.")] = None,
    jsonl: Annotated[Path | None, typer.Option(help='JSON Lines with {"text": ...} per line.')] = None,
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    onnx: OnnxOpt = None,
    aggregation: Annotated[str, typer.Option(help="first, average or max.")] = "first",
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Tag raw text; prints one JSON line per text with its entities and character offsets."""
    import json

    from ner_pipeline import tracking
    from ner_pipeline.errors import PredictError
    from ner_pipeline.serve import load_handle

    cfg = _load(config, set_)
    texts = list(text or [])
    if file is not None:
        texts += [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if jsonl is not None:
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PredictError(f'{jsonl} line {number}: expected {{"text": "..."}}') from None
    if not texts:
        raise PredictError("nothing to tag: give text arguments, --file or --jsonl")
    uri = tracking.resolve_tracking_uri(cfg.tracking, os.environ)
    handle = load_handle(model_source(cfg, model), backend or cfg.serve.backend, uri, onnx, cfg.serve.threads)
    try:
        results = handle.predictor.predict(texts, aggregation=aggregation)
    finally:
        handle.close()
    for original, entities in zip(texts, results, strict=True):
        typer.echo(json.dumps({"text": original, "entities": [e.model_dump() for e in entities]}, ensure_ascii=False))


@app.command()
@user_errors
def serve(
    model: ModelOpt = None,
    backend: BackendOpt = None,
    onnx: OnnxOpt = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Serve the model over HTTP (FastAPI + uvicorn): POST /predict, /health, /ready, /model, docs at /docs."""
    import uvicorn

    from ner_pipeline import tracking
    from ner_pipeline.serve import RequestIdFilter, build_app

    cfg = _load(config, set_)
    settings = cfg.serve.model_copy(update={k: v for k, v in {"backend": backend}.items() if v is not None})
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    api_key = os.environ.get(settings.api_key_env) or None
    uri = tracking.resolve_tracking_uri(cfg.tracking, os.environ)
    application = build_app(settings, model_source(cfg, model), uri, api_key, onnx)
    logger.info("API key %s", f"required (${settings.api_key_env})" if api_key else "not required")
    # Our middleware logs every request with its id, so uvicorn's own access log would only repeat it.
    uvicorn.run(application, host=host or settings.host, port=port or settings.port, log_config=None, access_log=False)


@config_app.command("show")
@user_errors
def config_show(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Print the config after `extends` and overrides."""
    typer.echo(dump_config(_load(config, set_)))


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Align rows of strings into columns (the first row is the header)."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    app()
