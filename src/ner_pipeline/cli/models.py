"""Registered models: `promote`, `rollback`, `compare` and the `models list`/`models history` group."""

from __future__ import annotations

from typing import Annotated

import typer

from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.tables import render_table

app = typer.Typer()
models_app = typer.Typer(help="Registered models: versions, aliases, audit history.", no_args_is_help=True)


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

    cfg = load(config, set_)
    decision = registry.promote(tracking_uri(cfg), cfg.registry, model, version, force, reason)
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

    typer.echo(registry.rollback(tracking_uri(load(config, set_)), model, reason).summary())


@models_app.command("list")
@user_errors
def models_list(
    name: Annotated[str | None, typer.Argument(help="Registered model name (all when omitted).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Versions, aliases, key metrics and creation time."""
    from ner_pipeline import registry

    rows = [
        (
            r["name"],
            r["version"],
            r["aliases"] or "-",
            _metric(r["test_f1"]),
            _metric(r["test_f1_strict"]),
            r["created"],
            (r["run_id"] or "-")[:8],
        )
        for r in registry.list_versions(tracking_uri(load(config, set_)), name)
    ]
    typer.echo(render_table(("name", "version", "aliases", "test_f1", "strict_f1", "created", "run"), rows))


@models_app.command("history")
@user_errors
def models_history(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Every promotion, refusal and rollback of a registered model, oldest first."""
    from ner_pipeline import registry

    rows = [
        (e["at"], e["actor"], e["action"], e["from_version"] or "-", e["to_version"] or "-", e["reason"])
        for e in registry.history(tracking_uri(load(config, set_)), name)
    ]
    typer.echo(render_table(("when", "who", "action", "from", "to", "reason"), rows))


@app.command()
@user_errors
def compare(
    refs: Annotated[list[str], typer.Argument(help="Run ids, NAME/VERSION or models:/NAME@alias.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Params that differ and metrics, side by side, for runs or model versions."""
    from ner_pipeline import registry

    table = registry.compare(tracking_uri(load(config, set_)), refs)
    rows = [(f"param {k}", *vals) for k, vals in table["params"].items()]
    rows += [(f"metric {k}", *map(_metric, vals)) for k, vals in table["metrics"].items()]
    typer.echo(render_table(("", *table["columns"]), rows))


def _metric(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
