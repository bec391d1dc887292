"""Resolving the pipeline config inside a flow run, and the checks made on it before any stage runs."""

from __future__ import annotations

import logging
import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from ner_pipeline import modelref
from ner_pipeline.config import PipelineConfig, config_origin, load_config


def show_library_logs() -> None:
    """Let the library's INFO lines (stage cache hits and misses, a resumed training) reach the flow run's logs.

    `PREFECT_LOGGING_EXTRA_LOGGERS=ner_pipeline` attaches Prefect's handlers to the library's logger but sets no
    level, so in a worker's flow run it stays at the root's WARNING. A more verbose level (the CLI's) is kept.
    """
    library = logging.getLogger("ner_pipeline")
    if library.getEffectiveLevel() > logging.INFO:
        library.setLevel(logging.INFO)


@task(name="load-config")
def load_config_task(config_path: str, overrides: list[str]) -> PipelineConfig:
    """Read the YAML config and apply `key=value` overrides; a bad config fails the run at once."""
    return load_config(config_path, overrides)


# Never cached: the check is about the machine now (a folder deleted, a package uninstalled, the Hub offline).
@task(name="check-model", cache_policy=NO_CACHE)
def check_model_task(config: PipelineConfig, stages: list[str], config_path: str, overrides: list[str]) -> None:
    """The base-model check `ner-pipeline run` makes (`modelref.check_base_model`): a reference that cannot load
    fails the run in one line before any stage runs."""
    modelref.check_base_model(config, stages, config_origin(config_path, overrides), os.environ)
