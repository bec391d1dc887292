"""The `ner-pipeline` command line.

Every command loads the config through `config.load_config` (file + `--set key=value` overrides) and calls the
same library functions as the Prefect flow. Errors a user can act on are printed as one line, without a
traceback, and exit with status 1.

The commands live by subject: `training` (run, ingest, stage, evaluate), `models` (promote, rollback, compare,
models ...), `serving` (predict, serve) and `cache` (artifacts ...); `common` holds what they share.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ner_pipeline.cli import batch, cache, models, serving, sweep, training
from ner_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    SetOpt,
    load,
    offline_defaults,
    setup_logging,
    user_errors,
)
from ner_pipeline.config import dump_config

app = typer.Typer(
    help="Train, evaluate, register, export and serve NER models.", no_args_is_help=True, add_completion=False
)
config_app = typer.Typer(help="Show the resolved config.", no_args_is_help=True)
for commands in (training.app, models.app, serving.app, sweep.app, batch.app):
    app.add_typer(commands)
app.add_typer(cache.app, name="artifacts")
app.add_typer(config_app, name="config")
app.add_typer(models.models_app, name="models")


def show_version(value: bool) -> None:
    if value:
        from ner_pipeline import __version__

        typer.echo(f"ner-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging, third-party libraries' INFO lines included.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    setup_logging(verbose)
    offline_defaults()


@config_app.command("show")
@user_errors
def config_show(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Print the config after `extends` and overrides."""
    typer.echo(dump_config(load(config, set_)))
