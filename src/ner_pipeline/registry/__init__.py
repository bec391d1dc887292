"""MLflow model registry: register with lineage, gated promotion by alias, rollback, audit history, comparison.

One job per module:

- `register`: the register stage (log the pyfunc model in the run, new version with alias `challenger`).
- `promotion`: the gate, promote, rollback and the audit trail.
- `catalog`: list and compare versions, resolve `models:/` URIs, download a version.
- `pyfunc`: the MLflow pyfunc wrapper around our predictor: the variant it serves, the files it ships, its signature
  and requirements.
- `tags`: alias names and the tags a version carries (written at registration, read by the gate and listing).
- `client`: the MlflowClient bound to one tracking URI that all of them use, and the checks before it (the store
  exists, the server answers) and the canonical spelling of a tracking URI.

The names below are what the CLI, pipeline, server and tasks call (`from ner_pipeline import registry;
registry.promote(...)`); everything else is reached through its module.
"""

from ner_pipeline.registry.catalog import (
    FetchedModel,
    compare,
    download_model,
    fetch_model,
    list_versions,
    protected_artifact_keys,
    resolve_version,
)
from ner_pipeline.registry.client import canonical_uri, client_for, existing_client, require_existing_store
from ner_pipeline.registry.promotion import Decision, history, promote, rollback
from ner_pipeline.registry.register import log_and_register, register_key, register_records, run_register
from ner_pipeline.registry.tags import CHALLENGER, PREVIOUS, PRODUCTION

__all__ = [
    "CHALLENGER",
    "PREVIOUS",
    "PRODUCTION",
    "Decision",
    "FetchedModel",
    "canonical_uri",
    "client_for",
    "compare",
    "download_model",
    "existing_client",
    "fetch_model",
    "history",
    "list_versions",
    "log_and_register",
    "promote",
    "protected_artifact_keys",
    "register_key",
    "register_records",
    "require_existing_store",
    "resolve_version",
    "rollback",
    "run_register",
]
