"""`ner-pipeline sweep`: run or resume the config's hyperparameter sweep (see `ner_pipeline.sweep`)."""

from __future__ import annotations

from typing import Annotated

import typer

from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, user_errors

app = typer.Typer()


@app.command()
@user_errors
def sweep(
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", "-n", min=1, help="Add this many trials (default: resume up to sweep.trials)."),
    ] = None,
) -> None:
    """Search hyperparameters with Optuna, then evaluate, export, register and gate the best trial.

    Trials run in this process, one after another; the `ner-sweep` Prefect flow runs them as concurrent tasks.
    """
    from ner_pipeline import pipeline
    from ner_pipeline.cli.preflight import check_base_model
    from ner_pipeline.config import config_origin
    from ner_pipeline.sweep import run_sweep

    cfg = load(config, set_)
    check_base_model(cfg, pipeline.STAGES, config_origin(config, set_))
    result = run_sweep(cfg, trials)
    typer.echo(result.to_markdown())
