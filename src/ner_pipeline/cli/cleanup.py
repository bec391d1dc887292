"""`artifacts prune --mlflow`: the MLflow half of pruning (see `ner_pipeline.registry.cleanup`)."""

from __future__ import annotations

from collections.abc import Set

import typer

from ner_pipeline.cli.common import tracking_uri
from ner_pipeline.config import PipelineConfig


def prune_mlflow(cfg: PipelineConfig, kept_keys: Set[str], dry_run: bool) -> None:
    """List the MLflow runs and logged models no registered version and no kept artifact needs; delete them
    unless `dry_run`."""
    from ner_pipeline.cli.cache import human_size
    from ner_pipeline.registry.cleanup import apply_cleanup, plan_cleanup

    plan = plan_cleanup(tracking_uri(cfg), kept_keys)
    verb = "would delete" if dry_run else "deleted"
    if not dry_run:
        apply_cleanup(plan)
    for doomed in plan.doomed:
        size = human_size(doomed.size) if doomed.size is not None else "remote"
        typer.echo(f"{verb} MLflow {doomed.kind} {doomed.id}: {doomed.label}, {size}")
    typer.echo(
        f"{verb} {len(plan.doomed)} MLflow run(s) and logged model(s), {human_size(plan.size)} of local files; "
        f"kept {plan.kept_runs} model run(s) and {plan.kept_models} logged model(s) that registered versions or "
        f"kept artifacts need ({plan.tracking_uri})"
    )
