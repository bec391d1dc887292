"""Registered models: `promote`, `rollback`, `compare` and the `models list`/`models history` group."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer

from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.cli.hints import invocation
from ner_pipeline.errors import RegistryError
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
        if decision.to_version and not force:
            override = ("--model", model, "--version", str(decision.to_version), "--force", "--reason", "...")
            typer.echo(
                f"to override the gate (say why in --reason): {invocation(config, set_).command('promote', *override)}"
            )
        raise typer.Exit(2)


@app.command()
@user_errors
def rollback(
    model: Annotated[str, typer.Option(help="Registered model name.")],
    reason: Annotated[str, typer.Option(help="Why, recorded in the audit trail (required).")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Put `production` back on `previous-production` (once: a second rollback waits for another promotion)."""
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

    uri = tracking_uri(load(config, set_))
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
        for r in registry.list_versions(uri, name)
    ]
    if name and not rows:
        listing = invocation(config, set_).command("models", "list")
        raise RegistryError(f"no registered model '{name}' with versions in {uri} (all of them: {listing})")
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
        (e["at"], e["actor"], e["action"], e["from_version"] or "-", e["to_version"] or "-", e["interval"], e["reason"])
        for e in registry.history(tracking_uri(load(config, set_)), name)
    ]
    typer.echo(render_table(("when", "who", "action", "from", "to", "interval", "reason"), rows))


@app.command()
@user_errors
def compare(
    refs: Annotated[list[str], typer.Argument(help="Run ids, NAME/VERSION or models:/NAME@alias.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Params that differ and metrics, side by side, for runs or model versions; largest differences first.

    The delta column is the last column minus the first; rows are sorted by how far apart the values are.
    """
    from ner_pipeline import registry

    table = registry.compare(tracking_uri(load(config, set_)), refs)
    params = sorted(table["params"].items(), key=lambda item: (-spread(item[1]), item[0]))
    metrics = sorted(table["metrics"].items(), key=lambda item: (-spread(item[1]), item[0]))
    rows = [(f"param {k}", *(v if v is not None else "-" for v in vals), _delta(vals)) for k, vals in params]
    rows += [(f"metric {k}", *map(_metric, vals), _delta(vals)) for k, vals in metrics]
    typer.echo(render_table(("", *table["columns"], "delta"), rows))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def spread(values: list[Any]) -> float:
    """How far apart numeric values are (max - min); -1 when fewer than two are numbers, to sort them last."""
    numbers = [n for n in map(_number, values) if n is not None]
    return max(numbers) - min(numbers) if len(numbers) >= 2 else -1.0


def _delta(values: list[Any]) -> str:
    first, last = _number(values[0]), _number(values[-1])
    return f"{last - first:+.4g}" if first is not None and last is not None else "-"


def _metric(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


@models_app.command("card")
@user_errors
def models_card(
    ref: Annotated[str, typer.Argument(help="NAME/VERSION, NAME@alias or models:/...")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Print a registered version's model card (Markdown, Hugging Face layout)."""
    from ner_pipeline.registry.card import read_card

    typer.echo(read_card(tracking_uri(load(config, set_)), ref))
