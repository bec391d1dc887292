"""A lock on a registered model's aliases, made of the one atomic operation MLflow has: creating a model.

MLflow offers no compare-and-set on aliases or tags, but `create_registered_model` fails when the name exists,
and both the SQL store (a unique name in one transaction) and a tracking server (the same store behind REST)
decide that atomically. So the lock is a registered model named `<name>.promotion-lock`, created to acquire and
deleted to release; its tags say who holds it (host, pid, user, a random token).

A holder that dies leaves its lock behind. A waiter takes it over at once when the holder ran on this host and
its process is gone, and otherwise once the lock is older than `STALE_AFTER` (the lock is held only while
aliases and audit tags are written, seconds, never while a model runs). Taking over is check-then-delete, not
atomic: two waiters breaking the same stale lock at the same millisecond could both go ahead. That needs a crash
plus a race; promotion re-reads the aliases after moving them and refuses on a mismatch, so even then nothing is
lost silently.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ner_pipeline.errors import RegistryError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".promotion-lock"
STALE_AFTER = 120.0  # seconds
WAIT = 180.0  # seconds a promotion waits for another one before giving up


def lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


@contextmanager
def alias_lock(client: Any, name: str, actor: str, wait: float = WAIT) -> Iterator[None]:
    """Hold the promotion lock of registered model `name` for the block.

    Raises:
        RegistryError: another holder kept it for longer than `wait` seconds.
    """
    lock = lock_name(name)
    token = uuid.uuid4().hex
    holder = {"lock.token": token, "lock.host": socket.gethostname(), "lock.pid": str(os.getpid()), "lock.user": actor}
    deadline = time.monotonic() + wait
    while not _try_create(client, lock, holder):
        if _break_if_stale(client, lock):
            continue
        if time.monotonic() > deadline:
            raise RegistryError(
                f"another promotion or rollback of '{name}' holds the lock {describe_holder(client, lock)}; "
                f"if it is not running, delete registered model '{lock}' and try again"
            )
        time.sleep(0.05 + random.random() * 0.2)  # jittered, so waiters do not retry in lockstep
    try:
        yield
    finally:
        _release(client, lock, token)


def _try_create(client: Any, lock: str, holder: dict[str, str]) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            lock, tags=holder, description="Held while a promotion or rollback moves aliases; see ner-pipeline."
        )
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS" or "database is locked" in str(exc):
            return False
        raise


def _holder(client: Any, lock: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lock)
    except MlflowException:
        return None


def describe_holder(client: Any, lock: str) -> str:
    model = _holder(client, lock)
    if model is None:
        return "(released meanwhile)"
    tags = model.tags or {}
    age = time.time() - model.creation_timestamp / 1000
    return f"({tags.get('lock.user')} on {tags.get('lock.host')}, pid {tags.get('lock.pid')}, for {age:.0f} s)"


def _break_if_stale(client: Any, lock: str) -> bool:
    """Delete the lock if its holder is gone; True when the caller should try to acquire again at once."""
    model = _holder(client, lock)
    if model is None:
        return True  # released between our attempt and this look
    tags = model.tags or {}
    age = time.time() - model.creation_timestamp / 1000
    dead = tags.get("lock.host") == socket.gethostname() and not _alive(tags.get("lock.pid"))
    if not dead and age < STALE_AFTER:
        return False
    again = _holder(client, lock)  # narrow the window: only delete the lock we judged
    if again is None or (again.tags or {}).get("lock.token") != tags.get("lock.token"):
        return True
    logger.warning("taking over the stale promotion lock %s %s", lock, describe_holder(client, lock))
    _delete(client, lock)
    return True


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid or ""), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _release(client: Any, lock: str, token: str) -> None:
    model = _holder(client, lock)
    if model is not None and (model.tags or {}).get("lock.token") == token:
        _delete(client, lock)
    else:
        logger.warning("promotion lock %s was taken over while held (a holder judged it stale)", lock)


def _delete(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
