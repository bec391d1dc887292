"""Resolving the pipeline config inside a flow run."""

from __future__ import annotations

from prefect import task

from ner_pipeline.config import PipelineConfig, load_config


@task(name="load-config")
def load_config_task(config_path: str, overrides: list[str]) -> PipelineConfig:
    """Read the YAML config and apply `key=value` overrides; a bad config fails the run at once."""
    return load_config(config_path, overrides)
