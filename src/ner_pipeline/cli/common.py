"""What every command shares: the config options and loader, one-line user errors, logging and environment set-up."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ner_pipeline.cli.console import setup_logging as setup_logging  # re-exported for the app callback
from ner_pipeline.config import PipelineConfig, load_config
from ner_pipeline.errors import NerPipelineError

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config value: key=value (repeatable).")
]
DEFAULT_CONFIG = Path("configs/quickstart.yaml")
F = TypeVar("F", bound=Callable[..., Any])


def offline_defaults() -> None:
    """Environment defaults for the run: Prefect state inside the project, no telemetry."""
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ner_pipeline")
    # Library logs outside a flow run (e.g. `ner-pipeline stage`) go to the console only, without a warning each.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # Prefect's 20 s is too short for a first start (database migration) on two busy cores; `run` retries once too.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One bar for training (and one for evaluation), not one per saved dataset split or downloaded artifact.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


def load(config: Path, overrides: list[str] | None) -> PipelineConfig:
    """The config file with overrides; outside a project (no configs/quickstart.yaml) the built-in defaults."""
    if config == DEFAULT_CONFIG and not config.is_file():
        return load_config(None, overrides or [])
    return load_config(config, overrides or [])


def tracking_uri(cfg: PipelineConfig) -> str:
    """The MLflow tracking URI: the config's, else $MLFLOW_TRACKING_URI, else the embedded store."""
    from ner_pipeline import tracking

    return tracking.resolve_tracking_uri(cfg.tracking, os.environ)
