"""Commands that build artifacts: `run` (the Prefect flow), `stage`, `ingest` and `evaluate`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer

from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.config import PipelineConfig

app = typer.Typer()

# The flow lives outside the library, which knows nothing of Prefect; it is imported only when `run` runs.
FLOW_MODULE = "ner_pipeline_flows.training"


@app.command()
@user_errors
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this stage (repeatable).")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Run this stage and all after it.")] = None,
) -> None:
    """Run the training flow end to end under Prefect (a temporary local server unless PREFECT_API_URL is set)."""
    load(config, set_)  # fail fast on a bad config, before Prefect starts
    run_training = importlib.import_module(FLOW_MODULE).run_training  # its temporary server dies with us
    summary = run_training(
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
        from ner_pipeline import tracking

        uri = summary.tracking_uri
        url = tracking.experiment_url(uri, tracking.experiment_of_run(uri, summary.run_id))
        if tracking.is_embedded(uri):
            lines.append(f"  MLflow UI:  mlflow ui --backend-store-uri {uri}")
        lines.append(f"  Runs:       {url}   (run {summary.run_id} holds this model)")
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

    cfg = load(config, set_)
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

    cfg = load(config, set_)
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

    cfg = load(config, set_)
    model_dir = resolve_model_dir(model, cfg)
    splits = read_evaluation_data(data, cfg.data)
    report = evaluate_model(model_dir, splits, cfg.evaluate, out)
    typer.echo(report.to_markdown() if hasattr(report, "to_markdown") else str(report))
    typer.echo(f"\nreport written to {out}")


def resolve_model_dir(model: str, cfg: PipelineConfig) -> Path:
    """A model folder, or a registered model version downloaded from MLflow."""
    if model.startswith("models:/"):
        from ner_pipeline import registry

        return registry.download_model(model, tracking_uri(cfg))
    return Path(model)
