"""Forward passes one at a time, in the order they were asked for, so no request waits behind a whole other one.

Each batch runs `Predictor.predict` in its own worker thread; the predictor's backend is wrapped so that every
forward pass first takes a ticket at the service's `PassGate`. A large request and a batch of small ones therefore
alternate pass by pass: the small ones wait at most one forward pass of the large one, and the two never run at
once (on a few cores, two passes side by side only slow each other down). A pass is skipped, and the batch stopped,
once every request it serves has stopped waiting (its deadline passed).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

# What the running worker thread works for: returns True once nobody waits for its result any more.
abandoned_var: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("abandoned", default=None)


class Abandoned(Exception):  # not a fault: nobody waits for the batch any more
    """Raised in place of a forward pass whose results nobody waits for any more."""


class PassGate:
    """A ticket lock: forward passes run one at a time, first asked, first served."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self.passes = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this caller's turn, hold it for the block, then hand it to the next caller in line."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self.passes += 1
                self._cond.notify_all()

    def wrap(self, predictor: Any) -> None:
        """Make every forward pass of `predictor` take its turn here (once; a reload wraps the new predictor)."""
        backend = getattr(predictor, "backend", None)
        if backend is not None and not isinstance(backend, GatedBackend):
            predictor.backend = GatedBackend(backend, self)


class GatedBackend:
    """A backend whose forward passes take turns at a `PassGate` and are skipped once nobody waits for them."""

    def __init__(self, inner: Any, gate: PassGate) -> None:
        self.inner = inner
        self.gate = gate
        self.name = inner.name

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        abandoned = abandoned_var.get()
        if abandoned is not None and abandoned():
            raise Abandoned
        with self.gate.turn():
            if abandoned is not None and abandoned():  # its deadline passed while it queued for the turn
                raise Abandoned
            return self.inner.logits(input_ids, attention_mask)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
