"""Prefect task for the promotion gate (registering is a stage task in tasks/stages.py)."""

from __future__ import annotations

from prefect import task

from ner_pipeline import registry
from ner_pipeline.config import RegistryConfig


# No retries: a promotion moves aliases and appends to the audit trail, so a blind repeat after a partial
# failure could misplace `previous-production`; a refused or failed promotion is rerun by hand.
@task(name="promote")
def promote_task(tracking_uri: str, cfg: RegistryConfig, version: str) -> registry.Decision:
    """Run the promotion gate for a freshly registered version; promoted or refused, the decision is recorded."""
    return registry.promote(tracking_uri, cfg, cfg.model_name, version)
