"""Promotion: move `production` by alias only when a version earns it, roll back once, keep an audit trail.

Only aliases are used (`challenger`, `production`, `previous-production`), never the deprecated stages. MLflow
keeps no history of alias moves, so every promotion, refusal and rollback is appended to an audit trail stored
as time-ordered tags (`audit.<ns>-<random>`) on the registered model, one JSON record each.

The gate (`registry.gate`) compares the challenger with production on the same test sentences (paired bootstrap
of the metric's difference) and promotes only when the interval's lower bound is above `min_delta` and no entity
type drops by more than `max_type_drop`; a first version needs its metric above `min_first_metric`. This module
moves the aliases and keeps the record.

Concurrency and crashes. MLflow has no compare-and-set on aliases, so:

- Promote and rollback move aliases only while holding the model's lock (`registry.lock`: a registered model
  created atomically as a mutex, which works on SQLite and through a tracking server alike). The expensive gate
  runs before the lock is taken; under the lock production is read again, and if it moved meanwhile the gate
  runs again against the new production (a few times, then the promotion is refused with an error).
- After moving, the aliases are read back; if they are not what this command set (a writer that ignores the
  lock, e.g. the MLflow UI), the command fails with an error instead of recording a promotion that did not stick.
- The two moves keep `production` on a version at every moment: a promotion sets `previous-production` first
  and `production` second; a rollback moves `production` first and removes `previous-production` second. Before
  moving, the entry is written to the audit trail as `pending` with the old `previous-production`, and marked
  `done` afterwards. The next promote or rollback (under the lock) finds a `pending` entry left by a crash and
  repairs: when `production` already moved it finishes the command, otherwise it restores `previous-production`
  and marks the entry `interrupted`. The repair never moves `production`, the alias users see.

Rollback moves `production` to `previous-production` once and removes that alias, so a second rollback is
refused until another promotion (it would otherwise bring back the version rolled back from).
"""

from __future__ import annotations

import contextlib
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
from ner_pipeline.registry import gate
from ner_pipeline.registry.client import existing_client
from ner_pipeline.registry.lock import alias_lock
from ner_pipeline.registry.tags import (
    ACTOR_TAG,
    CHALLENGER,
    COMPARED_TAG,
    DECISION_TAG,
    DELTA_TAG,
    INTERVAL_TAG,
    PREVIOUS,
    PRODUCTION,
    REASON_TAG,
)

logger = logging.getLogger(__name__)

AUDIT_TAG = "audit."
ATTEMPTS = 3  # times the gate is run again when production moves while it runs


@dataclass
class Decision:
    """The outcome of a promotion attempt, as printed and as recorded in the audit trail."""

    action: str  # promote, refuse, rollback, unchanged (never recorded)
    model: str
    to_version: str | None
    from_version: str | None
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    actor: str = field(default_factory=lambda: _actor())
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    forced: bool = False
    interval: str | None = None  # the gate's difference and its interval, e.g. "+0.0123 [+0.0040, +0.0210] 95%"

    @property
    def accepted(self) -> bool:
        """Production is (now) the requested version."""
        return self.action in ("promote", "rollback", "unchanged")

    def summary(self) -> str:
        moved = f"v{self.from_version or '-'} -> v{self.to_version or '-'}"
        return f"{self.action.upper()} {self.model} {moved}: {self.reason}"


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _number(version: Any | None) -> str | None:
    return None if version is None else str(version.version)


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
            client.get_registered_model(name)
            found = alias_version(client, name, CHALLENGER)
            if found is None:
                raise RegistryError(f"model '{name}' has no '{CHALLENGER}' alias; pass --version")
            return found
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model '{name}' version {version}: {exc.message}") from None


# --- promote and rollback ----------------------------------------------------------------------------------------


def promote(
    tracking_uri: str,
    cfg: RegistryConfig,
    name: str,
    version: str | None = None,
    force: bool = False,
    reason: str | None = None,
) -> Decision:
    """Move alias `production` to a version if the gate passes (or when forced, with a reason).

    The version losing `production` gets `previous-production`. Every outcome but "already production" (a no-op,
    accepted) is appended to the audit trail and recorded on the candidate version.

    Raises:
        RegistryError: the model or version does not exist, --force without --reason, the lock could not be
            taken, production kept moving, or another writer moved the aliases at the same time.
    """
    if force and not (reason or "").strip():
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    client = existing_client(tracking_uri)
    candidate = get_version(client, name, version)
    for _ in range(ATTEMPTS):
        current = alias_version(client, name, PRODUCTION)
        if _number(current) == _number(candidate):
            return Decision("unchanged", name, _number(candidate), _number(current), "already production")
        verdict = gate.judge(client, tracking_uri, cfg, candidate, current)  # slow: outside the lock
        with alias_lock(client, name, _actor()):
            repair(client, name)
            if _number(alias_version(client, name, PRODUCTION)) != _number(current):
                logger.info("production of %s moved while the gate ran; judging version %s again", name, version)
                continue
            decision = _decide(name, candidate, current, verdict, force, reason)
            if decision.action == "promote":
                moves = ([(PREVIOUS, _number(current))] if current is not None else []) + [
                    (PRODUCTION, _number(candidate))
                ]
                _apply(client, decision, moves)
            else:
                _write_entry(client, decision.model, _entry_key(), {**asdict(decision), "state": "done"})
            _tag_version(client, decision, decision.to_version)
            logger.info(decision.summary())
            return decision
    raise RegistryError(f"production of '{name}' moved {ATTEMPTS} times while the gate ran; try again")


def _decide(
    name: str, candidate: Any, current: Any | None, verdict: gate.Verdict, force: bool, reason: str | None
) -> Decision:
    to_version, from_version = _number(candidate), _number(current)
    interval = verdict.comparison.interval() if verdict.comparison else None
    if verdict.passed:
        return Decision("promote", name, to_version, from_version, verdict.reason, verdict.numbers, interval=interval)
    if force:
        text = f"forced: {reason} (gate: {verdict.reason})"
        return Decision(
            "promote", name, to_version, from_version, text, verdict.numbers, forced=True, interval=interval
        )
    return Decision("refuse", name, to_version, from_version, verdict.reason, verdict.numbers, interval=interval)


def rollback(tracking_uri: str, name: str, reason: str | None) -> Decision:
    """Put `production` back on `previous-production` and remove that alias (a second rollback is refused).

    Raises:
        RegistryError: no reason, an unknown model, nothing to roll back to (including right after a rollback).
    """
    from mlflow.exceptions import MlflowException

    if not (reason or "").strip():
        raise RegistryError("rollback needs --reason: say why production is rolled back")
    client = existing_client(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}': {exc.message}") from None
    with alias_lock(client, name, _actor()):
        repair(client, name)
        previous = alias_version(client, name, PREVIOUS)
        current = alias_version(client, name, PRODUCTION)
        if previous is None:
            raise RegistryError(_nothing_to_roll_back(client, name))
        decision = Decision("rollback", name, _number(previous), _number(current), str(reason))
        _apply(client, decision, [(PRODUCTION, _number(previous)), (PREVIOUS, None)])
        _tag_version(client, decision, decision.to_version)
        if current is not None:
            client.set_model_version_tag(name, current.version, DECISION_TAG, "rolled back")
    logger.info(decision.summary())
    return decision


def _nothing_to_roll_back(client: Any, name: str) -> str:
    done = [e for _, e in _entries(client, name) if e.get("state", "done") == "done"]
    moves = [e for e in done if e["action"] in ("promote", "rollback")]
    if moves and moves[-1]["action"] == "rollback":
        last = moves[-1]
        return (
            f"model '{name}': production v{last['to_version']} is already a rollback from v{last['from_version']} "
            f"({last['at']} by {last['actor']}: {last['reason']}); rolling back again would restore the version "
            "rolled back from, so it is refused until another version is promoted"
        )
    return f"model '{name}' has no '{PREVIOUS}' alias: nothing to roll back to"


# --- moving aliases, the journal and its repair ------------------------------------------------------------------


def _apply(client: Any, decision: Decision, moves: list[tuple[str, str | None]]) -> None:
    """Journal the decision as pending, make the moves in order, verify them, and mark the entry done."""
    name = decision.model
    key = _entry_key()
    previous_before = _number(alias_version(client, name, PREVIOUS))
    record = {**asdict(decision), "state": "pending", "previous_before": previous_before}
    _write_entry(client, name, key, record)
    for alias, number in moves:
        _set_alias(client, name, alias, number)
    expected = {PREVIOUS: previous_before, **dict(moves)}
    found = {alias: _number(alias_version(client, name, alias)) for alias in expected}
    if found != expected:
        _write_entry(client, name, key, {**record, "state": "conflict"})
        raise RegistryError(
            f"model '{name}': aliases changed during the {decision.action} (expected {expected}, found {found}); "
            f"another writer moved them without the promotion lock; its audit trail: `models history {name}` with your "
            "--config and --set flags"
        )
    _write_entry(client, name, key, {**record, "state": "done"})


def _set_alias(client: Any, name: str, alias: str, number: str | None) -> None:
    from mlflow.exceptions import MlflowException

    if number is not None:
        client.set_registered_model_alias(name, alias, number)
        return
    with contextlib.suppress(MlflowException):  # not set: nothing to remove
        client.delete_registered_model_alias(name, alias)


def repair(client: Any, name: str) -> None:
    """Finish or undo a promotion or rollback that crashed between its two alias moves (caller holds the lock).

    Never moves `production`: when it already moved, the rest of the command is done; when it did not, the old
    `previous-production` is put back.
    """
    pending = [(k, e) for k, e in _entries(client, name) if e.get("state") == "pending"]
    production = _number(alias_version(client, name, PRODUCTION))
    previous = _number(alias_version(client, name, PREVIOUS))
    for key, entry in pending[:-1]:  # older crashes were already overtaken by the last one's state
        _write_entry(client, name, key, {**entry, "state": "interrupted"})
    if pending:
        key, entry = pending[-1]
        if production == entry["to_version"]:
            if entry["action"] == "rollback":
                _set_alias(client, name, PREVIOUS, None)
            state, note = "done", "finished by the next command after an interruption"
        else:
            _set_alias(client, name, PREVIOUS, entry.get("previous_before"))
            state, note = "interrupted", "interrupted before production moved; previous-production restored"
        logger.warning(
            "model %s: %s %s -> %s was %s", name, entry["action"], entry["from_version"], entry["to_version"], note
        )
        _write_entry(client, name, key, {**entry, "state": state, "reason": f"{entry['reason']} [{note}]"})
    elif production is not None and previous == production:
        # Only a writer outside this module leaves this (ours journal first): a rollback to it would change nothing.
        _set_alias(client, name, PREVIOUS, None)
        why = f"previous-production equalled production v{production} with no journal entry; alias removed"
        logger.warning("model %s: %s", name, why)
        repaired = Decision("repair", name, production, production, why)
        _write_entry(client, name, _entry_key(), {**asdict(repaired), "state": "done"})


# --- the audit trail ---------------------------------------------------------------------------------------------


def _entry_key() -> str:
    # Time-ordered with a random tail: two entries written at once cannot overwrite each other.
    return f"{AUDIT_TAG}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def _write_entry(client: Any, name: str, key: str, record: dict[str, Any]) -> None:
    record = {**record, "reason": _clip(record["reason"])}  # a tag value is bounded; an essay must not fail it
    client.set_registered_model_tag(name, key, json.dumps(record))


def _entries(client: Any, name: str) -> list[tuple[str, dict[str, Any]]]:
    model = client.get_registered_model(name)
    return [(k, json.loads(v)) for k, v in sorted((model.tags or {}).items()) if k.startswith(AUDIT_TAG)]


def _tag_version(client: Any, decision: Decision, version: str | None) -> None:
    """Record the decision on the version it concerns: action, reason, who, and the gate's difference."""
    if version is None:
        return
    tags = {DECISION_TAG: decision.action, REASON_TAG: _clip(decision.reason), ACTOR_TAG: decision.actor}
    if "delta" in decision.numbers:
        tags[DELTA_TAG] = str(decision.numbers["delta"])
        tags[INTERVAL_TAG] = str(decision.interval)
        tags[COMPARED_TAG] = str(decision.numbers.get("compared_to"))
    for key, value in tags.items():
        client.set_model_version_tag(decision.model, version, key, value)


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """The audit trail of a registered model, oldest first; each entry has `interval` ("-" without a comparison)."""
    from mlflow.exceptions import MlflowException

    try:
        entries = _entries(existing_client(tracking_uri), name)
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}': {exc.message}") from None
    return [{**e, "interval": e.get("interval") or "-", "state": e.get("state", "done")} for _, e in entries]
