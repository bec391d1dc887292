"""`ner-pipeline artifacts`: list, verify and prune the artifact cache."""

from __future__ import annotations

from typing import Annotated

import typer

from ner_pipeline.artifacts import Artifact, folder_size
from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.cli.hints import invocation
from ner_pipeline.config import PipelineConfig
from ner_pipeline.integrity import NO_RECORDS, VerifyMode
from ner_pipeline.pipeline import open_store
from ner_pipeline.pruning import staleness
from ner_pipeline.tables import render_table

app = typer.Typer(help="Inspect, verify and prune the artifact cache.", no_args_is_help=True)


@app.command("list")
@user_errors
def artifacts_list(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Show what is cached: stage, key, size, created, inputs, and whether the installed code and libraries
    would still build it (stale: why not)."""
    cfg = load(config, set_)
    artifacts = open_store(cfg).list()
    stale = staleness(artifacts)
    rows = []
    for a in artifacts:
        inputs = ", ".join(f"{k}={v[:8]}" for k, v in a.inputs.items()) or "-"
        status = f"stale: {'; '.join(stale[a.key])}" if stale[a.key] else "current"
        rows.append((a.stage, a.key, human_size(artifact_size(a)), a.created, inputs, status))
    typer.echo(render_table(("stage", "key", "size", "created", "inputs", "status"), rows))
    if any(stale.values()):
        prune = invocation(config, set_).command("artifacts", "prune", "--stale")
        typer.echo(f"{sum(map(bool, stale.values()))} stale artifact(s): {prune}")


@app.command("verify")
@user_errors
def artifacts_verify(
    size_only: Annotated[bool, typer.Option("--size-only", help="Compare sizes only, without hashing.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Check every artifact's files against its manifest; one line per damaged file, exit 1 on any damage.

    Nothing is removed: the next run rebuilds what is damaged.
    """
    cfg = load(config, set_)
    mode: VerifyMode = "size" if size_only else "sha256"
    store = open_store(cfg)
    artifacts = store.list()
    damaged, unverifiable = 0, 0
    for artifact in artifacts:
        problems = store.damage(artifact, mode)
        if problems == [NO_RECORDS]:
            unverifiable += 1
            typer.echo(f"unverifiable {artifact.stage}/{artifact.key}: {NO_RECORDS}")
            continue
        damaged += bool(problems)
        for problem in problems:
            typer.echo(f"damaged {artifact.stage}/{artifact.key}: {problem}")
    typer.echo(
        f"{len(artifacts) - damaged - unverifiable} intact, {damaged} damaged, {unverifiable} unverifiable "
        f"artifact(s) ({mode}); the next run rebuilds damaged and unverifiable ones"
    )
    if damaged:
        raise typer.Exit(1)


@app.command("prune")
@user_errors
def artifacts_prune(
    keep_last: Annotated[int, typer.Option(help="Artifacts to keep per stage, newest first.")] = 3,
    stale: Annotated[
        bool, typer.Option("--stale", help="Remove only what the installed code and libraries would not build again.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Only list what would go.")] = False,
    mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow",
            help="Also delete the MLflow runs and logged models that no registered version and no kept artifact needs.",
        ),
    ] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Free disk, never touching what registered model versions point to (or their lineage)."""
    cfg = load(config, set_)
    protected = registered_artifact_keys(cfg)
    store = open_store(cfg)
    if stale:
        removed = store.prune_stale(protected, dry_run=dry_run)
    else:
        removed = store.prune(keep_last, protected, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for a in removed:
        typer.echo(f"{verb} {a.stage}/{a.key}")
    typer.echo(f"{verb} {len(removed)} artifact(s); {len(protected)} key(s) protected by the model registry")
    if mlflow:
        from ner_pipeline.cli.cleanup import prune_mlflow

        prune_mlflow(cfg, {a.key for a in store.list()} - {a.key for a in removed}, dry_run)


def registered_artifact_keys(cfg: PipelineConfig) -> set[str]:
    """Artifact keys recorded on registered model versions."""
    from ner_pipeline import registry

    records = registry.register_records(open_store(cfg))
    return registry.protected_artifact_keys(tracking_uri(cfg), records)


def artifact_size(artifact: Artifact) -> int:
    """Bytes on disk of a local artifact; of a remote one, what its manifest records (nothing is downloaded)."""
    if artifact.copies is None:
        return folder_size(artifact.path)
    return sum(r["size"] for r in (artifact.manifest.get("files") or {}).values())


def human_size(size: int) -> str:
    """A byte count as B, KB, MB or GB."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
