"""What a registered model version says about itself: the alias names and the tags we write and read back.

Registration writes metrics, per-type F1, the data fingerprint and lineage keys as version tags; the promotion
gate, the version listing and the server read the numbers back from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ner_pipeline.artifacts import Artifact

CHALLENGER = "challenger"
PRODUCTION = "production"
PREVIOUS = "previous-production"
METRIC_TAG = "metric."
ARTIFACT_TAG = "artifact."
TYPE_TAG = "type_f1."
# Evaluate's test metrics that are not per-entity-type scores.
NOT_TYPES = {"strict", "ci_low", "ci_high"}
TEST_FINGERPRINT_TAG = "data.test_fingerprint"
# The version's test predictions, logged in its run: where, which sentences, which bytes (see registry.gate).
PREDICTIONS_PATH_TAG = "predictions.path"
PREDICTIONS_FINGERPRINT_TAG = "predictions.test_fingerprint"
PREDICTIONS_SHA_TAG = "predictions.sha256"
# The last gate decision about a version (the full story is the model's audit trail).
DECISION_TAG = "promotion.last_decision"
REASON_TAG = "promotion.last_reason"
ACTOR_TAG = "promotion.last_actor"
DELTA_TAG = "promotion.delta"
INTERVAL_TAG = "promotion.delta_interval"
COMPARED_TAG = "promotion.compared_to"


def version_tags(
    evaluation: Artifact, ingest: Artifact | None, upstream: Mapping[str, str], extra: Mapping[str, Any]
) -> dict[str, str]:
    """Tags that make a model version self-describing: metrics, data fingerprint, lineage keys."""
    tags: dict[str, Any] = {f"{METRIC_TAG}{k}": v for k, v in evaluation.stats.items() if _is_number(v)}
    tags.update({f"{TYPE_TAG}{t}": v for t, v in type_scores(evaluation.stats).items()})
    if ingest is not None:
        tags["data.fingerprint"] = ingest.stats.get("fingerprint")
        tags[TEST_FINGERPRINT_TAG] = ingest.stats.get("test_fingerprint", ingest.stats.get("fingerprint"))
    tags.update({f"{ARTIFACT_TAG}{stage}": key for stage, key in upstream.items()})
    tags.update(extra)
    return {k: str(v) for k, v in tags.items() if v is not None}


def type_scores(stats: Mapping[str, Any], prefix: str = "test_f1_") -> dict[str, float]:
    """Per-entity-type test F1 from evaluate's flat stats (`test_f1_PER` → {"PER": ...})."""
    return {
        k[len(prefix) :]: float(v)
        for k, v in stats.items()
        if k.startswith(prefix) and k[len(prefix) :] not in NOT_TYPES and _is_number(v)
    }


def version_metrics(version: Any, prefix: str = METRIC_TAG) -> dict[str, float]:
    """Numbers recorded as `<prefix>*` tags on a model version (`metric.*` or per-type `type_f1.*`)."""
    found: dict[str, float] = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(prefix):
            try:
                found[key[len(prefix) :]] = float(value)
            except ValueError:
                continue
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
