"""`ner-pipeline artifacts`: list and prune the artifact cache."""

from __future__ import annotations

from typing import Annotated

import typer

from ner_pipeline.artifacts import ArtifactStore, folder_size
from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.config import PipelineConfig
from ner_pipeline.tables import render_table

app = typer.Typer(help="Inspect and prune the artifact cache.", no_args_is_help=True)


@app.command("list")
@user_errors
def artifacts_list(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Show what is cached: stage, key, size, created, inputs."""
    cfg = load(config, set_)
    rows = []
    for a in ArtifactStore(cfg.artifacts_root).list():
        inputs = ", ".join(f"{k}={v[:8]}" for k, v in a.inputs.items()) or "-"
        rows.append((a.stage, a.key, human_size(folder_size(a.path)), a.created, inputs))
    typer.echo(render_table(("stage", "key", "size", "created", "inputs"), rows))


@app.command("prune")
@user_errors
def artifacts_prune(
    keep_last: Annotated[int, typer.Option(help="Artifacts to keep per stage, newest first.")] = 3,
    dry_run: Annotated[bool, typer.Option(help="Only list what would go.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Free disk, never touching what registered model versions point to (or their lineage)."""
    cfg = load(config, set_)
    protected = registered_artifact_keys(cfg)
    removed = ArtifactStore(cfg.artifacts_root).prune(keep_last, protected, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for a in removed:
        typer.echo(f"{verb} {a.stage}/{a.key}")
    typer.echo(f"{verb} {len(removed)} artifact(s); {len(protected)} key(s) protected by the model registry")


def registered_artifact_keys(cfg: PipelineConfig) -> set[str]:
    """Artifact keys recorded on registered model versions."""
    from ner_pipeline import registry

    records = registry.register_records(ArtifactStore(cfg.artifacts_root))
    return registry.protected_artifact_keys(tracking_uri(cfg), records)


def human_size(size: int) -> str:
    """A byte count as B, KB, MB or GB."""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
