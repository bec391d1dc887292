"""Commands that build artifacts: `run` (the Prefect flow), `stage`, `ingest` and `evaluate`."""

from __future__ import annotations

import enum
import importlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ner_pipeline import pipeline
from ner_pipeline.cli import preflight
from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.cli.console import tell_stage_story
from ner_pipeline.cli.hints import Invocation, invocation
from ner_pipeline.config import PipelineConfig, config_origin
from ner_pipeline.errors import ConfigError

app = typer.Typer()

# The flow lives outside the library, which knows nothing of Prefect; it is imported only when `run` runs.
FLOW_MODULE = "ner_pipeline_flows.training"

# Typer lists these choices in --help and refuses any other before anything loads.
StageName = enum.Enum("StageName", {s: s for s in pipeline.STAGES}, type=str)  # type: ignore[misc]
# `stage` runs without MLflow, so without the register stage.
LocalStageName = enum.Enum("LocalStageName", {s: s for s in pipeline.STAGES if s != "register"}, type=str)  # type: ignore[misc]


@app.command()
@user_errors
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
    only: Annotated[list[StageName] | None, typer.Option("--only", help="Run only this stage (repeatable).")] = None,
    from_stage: Annotated[StageName | None, typer.Option("--from", help="Run this stage and all after it.")] = None,
) -> None:
    """Run the training flow end to end under Prefect (a temporary local server unless PREFECT_API_URL is set)."""
    # Fail fast, before Prefect starts: a bad config, a base model that cannot load, a missing cached input.
    cfg = load(config, set_)
    only_names = [s.value for s in only or []]
    from_name = from_stage.value if from_stage else None
    selected = pipeline.select_stages(only_names, from_name)
    preflight.check_base_model(cfg, selected, origin(config, set_))
    uri = tracking_uri(cfg) if cfg.tracking.enabled else None
    preflight.check_cached_inputs(cfg, selected, uri, invocation(config, set_))
    tell_stage_story()
    run_training = importlib.import_module(FLOW_MODULE).run_training  # its temporary server dies with us
    summary = run_training(
        config_path=str(config),
        overrides=list(set_ or []),
        only=only_names or None,
        from_stage=from_name,
    )
    typer.echo("")
    typer.echo(summary.to_markdown())
    typer.echo("")
    typer.echo(next_steps(summary, invocation(config, set_)))


def origin(config: Path, overrides: list[str] | None) -> str:
    """How config errors name where a value came from (as `load_config` does)."""
    return config_origin(config, overrides)


def next_steps(summary: Any, invoked: Invocation) -> str:
    """The closing lines of `run`: where to look next, as commands that work as printed (the run's own flags)."""
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
        lines.append(f"  Report:     {evaluated.location}/report.md")  # the location: a remote one is not downloaded
    trained = summary.stages.get("train")
    if trained is not None:
        lines.append(f"  Model:      {trained.location}/model")
    if summary.registered:
        name, version = summary.registered["name"], summary.registered["version"]
        lines.append(f"  Registered: models:/{name}/{version} (alias challenger)")
        if summary.decision:
            lines.append(f"  Gate:       {summary.decision}")
        lines += promote_hints(summary.decision, name, version, invoked)
    if summary.onnx_dir:
        lines.append(f"  ONNX:       {summary.onnx_dir}")
    if summary.registered:
        serve_model = f"models:/{summary.registered['name']}@production"
        lines.append(f"  Serve:      {invoked.command('serve', '--model', serve_model)}")
    elif trained is not None:
        lines.append(f"  Serve:      {invoked.command('serve', '--model', str(trained.path / 'model'))}")
    return "\n".join(lines)


def promote_hints(decision: str | None, name: str, version: str, invoked: Invocation) -> list[str]:
    """What to run about a registered version: promote it, or override the gate that refused it; its history."""
    lines = []
    if decision is None:  # no auto-promotion, or the version was registered and gated by an earlier run
        promote = invoked.command("promote", "--model", name, "--version", version)
        lines.append(f"  Promote:    {promote}   (runs the promotion gate)")
    elif decision.startswith("REFUSE"):
        force = invoked.command("promote", "--model", name, "--version", version, "--force", "--reason", "...")
        lines.append(f"  Override:   {force}   (the gate refused: say why in --reason)")
    return [*lines, f"  History:    {invoked.command('models', 'history', name)}"]


@app.command()
@user_errors
def ingest(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Read and normalise the data set; print the artifact path and a stats table."""
    from ner_pipeline.ingest import run_ingest, stats_table
    from ner_pipeline.pipeline import open_store

    cfg = load(config, set_)
    artifact = run_ingest(cfg.data, open_store(cfg))
    typer.echo(f"ingest artifact: {artifact.location}{' (cached)' if artifact.cached else ''}")
    typer.echo(stats_table(artifact.stats))


@app.command()
@user_errors
def stage(
    name: Annotated[
        LocalStageName,
        typer.Argument(help=f"One of {', '.join(LocalStageName.__members__)} (register needs `run`, with MLflow)."),
    ],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Run one stage and what it needs, without Prefect or MLflow (upstream stages come from the cache)."""
    name = name.value
    cfg = load(config, set_)
    if not pipeline.enabled(name, cfg):
        raise ConfigError(f"{origin(config, set_)}: the {name} stage is switched off ({name}.enabled: false)")
    stages = pipeline.STAGES[: pipeline.STAGES.index(name) + 1]
    preflight.check_base_model(cfg, stages, origin(config, set_))
    tell_stage_story()
    done = pipeline.run_pipeline(cfg, pipeline.open_store(cfg), stages=stages)
    typer.echo(f"{name} artifact: {done[name].location}{' (cached)' if done[name].cached else ''}")


@app.command()
@user_errors
def evaluate(
    model: Annotated[str, typer.Option(help="Model folder or models:/NAME@alias.")],
    data: Annotated[str, typer.Option(help="A CoNLL file, or a folder/JSONL/hub id with --set data.source=...")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the report.", show_default="<artifacts_root>/evaluations/<model>-<UTC time>"),
    ] = None,
) -> None:
    """Score a trained or registered model on a test set."""
    from ner_pipeline.evaluate import evaluate_model
    from ner_pipeline.ingest import read_evaluation_data

    cfg = load(config, set_)
    out = out or default_evaluation_dir(cfg, model)
    model_dir, backend, onnx_dir = resolve_model(model, cfg)
    splits = read_evaluation_data(data, cfg.data)
    report = evaluate_model(model_dir, splits, cfg.evaluate, out, backend, onnx_dir)
    typer.echo(report.to_markdown() if hasattr(report, "to_markdown") else str(report))
    typer.echo(f"\nreport written to {out}")


def default_evaluation_dir(cfg: PipelineConfig, model: str) -> Path:
    """`<artifacts_root>/evaluations/<model>-<UTC time>`: `ner-quickstart@production`, or a train key."""
    if model.startswith("models:/"):
        label = model.removeprefix("models:/").replace("/", "-v")
    else:
        folder = Path(model)
        label = folder.parent.name if folder.name == "model" and folder.parent.name else folder.name
    label = re.sub(r"[^\w.@-]+", "-", label).strip("-") or "model"
    return Path(cfg.artifacts_root) / "evaluations" / f"{label}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def resolve_model(model: str, cfg: PipelineConfig) -> tuple[Path, str, Path | None]:
    """(model folder, backend, ONNX folder): a folder runs on PyTorch; a registered version, downloaded from
    MLflow, on the variant it serves (all it ships: see `registry.pyfunc`)."""
    if model.startswith("models:/"):
        from ner_pipeline import registry
        from ner_pipeline.registry.pyfunc import served_variant

        fetched = registry.fetch_model(model, tracking_uri(cfg))
        return fetched.model_dir, served_variant(fetched.onnx_dir).backend, fetched.onnx_dir
    return Path(model), "torch", None
