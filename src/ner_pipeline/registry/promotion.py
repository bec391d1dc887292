"""The promotion gate: move `production` by alias only when a version earns it, roll back, and keep an audit trail.

Only aliases are used (`challenger`, `production`, `previous-production`), never the deprecated stages. MLflow
keeps no history of alias moves, so every promotion, refusal and rollback is appended to an audit trail stored
as time-ordered tags (`audit.<ns>-<random>`) on the registered model, one JSON record each.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ner_pipeline.config import RegistryConfig
from ner_pipeline.errors import RegistryError
from ner_pipeline.registry.client import client_for
from ner_pipeline.registry.tags import CHALLENGER, PREVIOUS, PRODUCTION, TYPE_TAG, version_metrics

logger = logging.getLogger(__name__)

AUDIT_TAG = "audit."


@dataclass
class Decision:
    """The outcome of a promotion attempt, as printed and as recorded in the audit trail."""

    action: str  # promote, refuse, rollback
    model: str
    to_version: str | None
    from_version: str | None
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    actor: str = field(default_factory=lambda: _actor())
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    forced: bool = False

    @property
    def accepted(self) -> bool:
        return self.action in ("promote", "rollback")

    def summary(self) -> str:
        numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items())
        moved = f"v{self.from_version or '-'} -> v{self.to_version or '-'}"
        return f"{self.action.upper()} {self.model} {moved}: {self.reason}" + (f" [{numbers}]" if numbers else "")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    """The model version behind an alias, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(client: Any, name: str, version: str | None) -> Any:
    """A model version by number, or the `challenger` when no number is given."""
    from mlflow.exceptions import MlflowException

    try:
        if version is None:
            found = alias_version(client, name, CHALLENGER)
            if found is None:
                raise RegistryError(f"model '{name}' has no '{CHALLENGER}' alias; pass --version")
            return found
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model '{name}' version {version}: {exc.message}") from None


def gate(candidate: Any, current: Any | None, cfg: RegistryConfig) -> tuple[bool, str, dict[str, Any]]:
    """Decide whether `candidate` may replace `current` as production.

    The candidate must have the configured metric, be measured on the same test-set fingerprint as production,
    beat it by at least `min_delta`, and lose no more than `max_type_drop` F1 on any entity type.

    Returns:
        (passed, reason, numbers)
    """
    metric = cfg.metric
    cand = version_metrics(candidate)
    if metric not in cand:
        return False, f"version {candidate.version} has no '{metric}' metric", {}
    if current is None:
        return True, "no production version yet", {metric: cand[metric]}
    prod = version_metrics(current)
    numbers: dict[str, Any] = {f"candidate_{metric}": cand[metric]}
    if metric not in prod:
        return False, f"production version {current.version} has no '{metric}' metric to compare", numbers
    numbers[f"production_{metric}"] = prod[metric]
    numbers["delta"] = round(cand[metric] - prod[metric], 6)
    cand_fp = candidate.tags.get("data.test_fingerprint")
    prod_fp = current.tags.get("data.test_fingerprint")
    if not cand_fp or cand_fp != prod_fp:
        return (
            False,
            f"test sets differ (fingerprint {str(cand_fp)[:12]} vs production {str(prod_fp)[:12]}): "
            "the numbers are not comparable",
            numbers,
        )
    if cand[metric] - prod[metric] < cfg.min_delta or (cfg.min_delta == 0 and cand[metric] <= prod[metric]):
        return (
            False,
            f"{metric} {cand[metric]:.4f} does not beat production {prod[metric]:.4f} by {cfg.min_delta}",
            numbers,
        )
    cand_types, prod_types = version_metrics(candidate, TYPE_TAG), version_metrics(current, TYPE_TAG)
    for entity in sorted(prod_types):
        drop = prod_types[entity] - cand_types.get(entity, 0.0)
        if drop > cfg.max_type_drop:
            numbers[f"drop_{entity}"] = round(drop, 6)
            return False, f"{entity} F1 falls by {drop * 100:.1f} points (limit {cfg.max_type_drop * 100:.1f})", numbers
    return True, f"{metric} improves by {cand[metric] - prod[metric]:.4f}", numbers


def promote(
    tracking_uri: str,
    cfg: RegistryConfig,
    name: str,
    version: str | None = None,
    force: bool = False,
    reason: str | None = None,
) -> Decision:
    """Move alias `production` to a version if the gate passes (or when forced, with a reason).

    The version losing `production` gets `previous-production`. Every outcome is appended to the audit trail and
    recorded on the candidate version.

    Raises:
        RegistryError: the model or version does not exist, or --force without --reason.
    """
    if force and not reason:
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    client = client_for(tracking_uri)
    candidate = get_version(client, name, version)
    current = alias_version(client, name, PRODUCTION)
    if current is not None and current.version == candidate.version:
        decision = Decision("refuse", name, str(candidate.version), str(current.version), "already production")
        _record(client, decision, candidate.version)
        return decision
    passed, why, numbers = gate(candidate, current, cfg)
    from_version = str(current.version) if current is not None else None
    to_version = str(candidate.version)
    if passed or force:
        text = f"forced: {reason} (gate: {why})" if force and not passed else why
        decision = Decision("promote", name, to_version, from_version, text, numbers, forced=force and not passed)
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, current.version)
        client.set_registered_model_alias(name, PRODUCTION, candidate.version)
    else:
        decision = Decision("refuse", name, to_version, from_version, why, numbers)
    _record(client, decision, candidate.version)
    logger.info(decision.summary())
    return decision


def rollback(tracking_uri: str, name: str, reason: str | None = None) -> Decision:
    """Put `production` back on `previous-production` (which then points at the version rolled back from)."""
    client = client_for(tracking_uri)
    previous = alias_version(client, name, PREVIOUS)
    current = alias_version(client, name, PRODUCTION)
    if previous is None:
        raise RegistryError(f"model '{name}' has no '{PREVIOUS}' alias: nothing to roll back to")
    client.set_registered_model_alias(name, PRODUCTION, previous.version)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    decision = Decision(
        "rollback",
        name,
        str(previous.version),
        str(current.version) if current else None,
        reason or "rollback requested",
    )
    _record(client, decision, previous.version)
    logger.info(decision.summary())
    return decision


def _record(client: Any, decision: Decision, version: str | None) -> None:
    """Append the decision to the model's audit trail and tag the version it concerns."""
    # A time-ordered key with a random tail: two decisions recorded at once cannot overwrite each other's entry,
    # as numbering by counting the existing entries could.
    entry = f"{AUDIT_TAG}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    record = asdict(decision)
    record["reason"] = _clip(decision.reason)  # a tag value is bounded; a pasted essay must not fail the promotion
    client.set_registered_model_tag(decision.model, entry, json.dumps(record))
    if version is not None:
        client.set_model_version_tag(decision.model, version, "promotion.last_decision", decision.action)
        client.set_model_version_tag(decision.model, version, "promotion.last_reason", _clip(decision.reason))
        client.set_model_version_tag(decision.model, version, "promotion.last_actor", decision.actor)


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """The audit trail of a registered model, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        model = client_for(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}': {exc.message}") from None
    entries = sorted((k, v) for k, v in (model.tags or {}).items() if k.startswith(AUDIT_TAG))
    return [json.loads(v) for _, v in entries]
