"""What the service tests share: a client that waits for readiness, a real uvicorn on loopback, and a backend that
fails or stalls on marker words.

`ControlledBackend` is a test double of OUR backend (`ner_pipeline.backends`), not of a library: it wraps the real
backend of a real predictor and only raises, or waits, when a forward pass contains a marker word's token. It is
injected through the app factory's loader, as a faulty model would be.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from conftest import free_port
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ner_pipeline.serve import ModelHandle, load_handle

POISON = "poison"  # a forward pass holding this word raises
HOLD = "wait"  # a forward pass holding this word waits until the test releases it


@contextmanager
def ready_client(app: FastAPI, **options: Any) -> Iterator[TestClient]:
    """A TestClient on the real app, once `/ready` says the model (loaded in the background) is served."""
    with TestClient(app, **options) as client:
        wait_ready(client.get)
        yield client


def wait_ready(get: Callable[[str], Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while get("/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready within {timeout} s: {get('/ready').text}")
        time.sleep(0.02)


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """The app on a real uvicorn on loopback, in a thread of this process (so a test can read its state)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(lambda path: httpx.get(base + path, timeout=5))
        yield base
    finally:
        server.should_exit = True
        thread.join(20)


class ControlledBackend:
    """Our real backend, except that a pass holding `POISON` raises and one holding `HOLD` waits for `release`."""

    def __init__(self, inner: Any, tokenizer: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.poison_id = _single_token(tokenizer, POISON)
        self.hold_id = _single_token(tokenizer, HOLD)
        self.entered = threading.Event()  # a held pass has started
        self.release = threading.Event()
        self.calls = 0

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.calls += 1
        if (input_ids == self.poison_id).any():
            raise RuntimeError("the model cannot take this input")
        if (input_ids == self.hold_id).any():
            self.entered.set()
            if not self.release.wait(60):
                raise RuntimeError("never released")
        return self.inner.logits(input_ids, attention_mask)


class CountingBackend:
    """Our real backend, counting its forward passes."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.calls = inner, inner.name, 0

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.inner.logits(input_ids, attention_mask)


def count_passes(model: Path, texts: list[str]) -> int:
    """Forward passes one `Predictor.predict` call over `texts` takes on torch."""
    from ner_pipeline.predict import Predictor

    predictor = Predictor.load(model)
    predictor.backend = counting = CountingBackend(predictor.backend)
    predictor.predict(texts)
    return counting.calls


def controlled_loader(model: Path) -> tuple[Callable[[], ModelHandle], dict[str, ControlledBackend]]:
    """A loader of `model` on torch whose backend is a `ControlledBackend` (found in the dict once loaded)."""
    made: dict[str, ControlledBackend] = {}

    def loader() -> ModelHandle:
        handle = load_handle(str(model), "torch", None)
        made["backend"] = ControlledBackend(handle.predictor.backend, handle.predictor.tokenizer)
        handle.predictor.backend = made["backend"]
        return handle

    return loader, made


def _single_token(tokenizer: Any, word: str) -> int:
    pieces = tokenizer.tokenize(word)
    assert len(pieces) == 1, f"{word!r} is not one token for this tokenizer: {pieces}"
    return tokenizer.convert_tokens_to_ids(pieces[0])
