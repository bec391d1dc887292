"""The service under faults: poisoned and invalid inputs, a large request, a full queue, deadlines, a dying batching
lane, a slow or failing model load, oversized bodies, and what a response may reveal.

Faults in the model are injected with `serve_support.ControlledBackend`, a wrapper of our real backend that raises
(or waits) on a marker word, passed in through the app factory's loader.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from conftest import REPO_ROOT
from fastapi.testclient import TestClient
from serve_support import HOLD, POISON, controlled_loader, count_passes, live_server, ready_client

from ner_pipeline.config import ServeConfig
from ner_pipeline.predict import Predictor
from ner_pipeline.serve import create_app, load_handle

GOOD = [f"Angela Merkel met caller {i} in Paris" for i in range(10)]


def post_all(post, bodies: list[dict]) -> list:
    """Send the bodies at once, one thread each; the responses in the same order."""
    responses: list = [None] * len(bodies)

    def call(i: int) -> None:
        responses[i] = post("/predict", content=json.dumps(bodies[i]), headers={"Content-Type": "application/json"})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return responses


def test_a_poisoned_request_fails_alone_and_its_batch_mates_get_their_own_entities(person_model: Path):
    loader, made = controlled_loader(person_model)
    app = create_app(ServeConfig(batch_wait_ms=0), loader=loader)
    bodies = [{"texts": [t]} for t in GOOD[:5]] + [{"texts": [f"a {POISON} pill"]}] + [{"texts": [t]} for t in GOOD[5:]]
    with ready_client(app, raise_server_exceptions=False) as client:
        backend, batcher = made["backend"], app.state.service.batcher
        # A held request keeps the batch lane busy, so the eleven below queue up and form the next batch together.
        holder = post_all_later(client.post, [{"texts": [HOLD]}])
        assert backend.entered.wait(30)
        responses = post_all_later(client.post, bodies)
        wait_until(lambda: batcher.small.qsize() == len(bodies))
        backend.release.set()
        assert [r.status_code for r in holder()] == [200]
        responses = responses()
        assert batcher.retried == 1, "the eleven ran as one batch, which failed and was run again request by request"
    expected = Predictor.load(person_model).predict(GOOD)
    assert [r.status_code for r in responses] == [200] * 5 + [500] + [200] * 5
    assert responses[5].json()["detail"] == "internal error"
    good = responses[:5] + responses[6:]
    assert [r.json()["entities"][0] for r in good] == [[e.model_dump() for e in ents] for ents in expected]


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.slow  # a real uvicorn on loopback
def test_a_lone_surrogate_is_rejected_at_validation_and_the_others_are_served(person_model: Path):
    """The issue's reproduction on a real server: "\\ud800" sent at once with ten good requests."""
    app = create_app(ServeConfig(batch_wait_ms=50), loader=lambda: load_handle(str(person_model), "torch", None))
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        bodies = [{"texts": [t]} for t in GOOD] + [{"texts": ["fine", "bad \ud800 text"]}]
        responses = post_all(http.post, bodies)
    assert [r.status_code for r in responses] == [200] * 10 + [422]
    detail = responses[-1].json()["detail"][0]
    assert detail["loc"] == ["body", "texts"] and "texts[1] has a lone surrogate U+D800 at character 4" in detail["msg"]
    assert "input" not in detail  # the offending input is not echoed back (it cannot even be encoded)


@pytest.mark.slow  # a real uvicorn on loopback
def test_a_large_request_does_not_hold_small_ones_behind_it(person_model: Path):
    """8 texts x 20,000 characters ran for seconds while every other request waited; now they take turns by pass."""
    settings = ServeConfig(max_request_chars=200_000, batch_wait_ms=2)
    app = create_app(settings, loader=lambda: load_handle(str(person_model), "torch", None))
    big = ["Angela Merkel met Emmanuel Macron in Paris . " * 444] * 8
    assert max(len(t) for t in big) <= settings.max_chars
    timings: dict[str, float] = {}
    with live_server(app) as base, httpx.Client(base_url=base, timeout=300) as http:
        gate = app.state.service.gate

        def send_big() -> None:
            started = time.perf_counter()
            assert http.post("/predict", json={"texts": big}).status_code == 200
            timings["big_end"] = time.perf_counter()
            timings["big"] = timings["big_end"] - started

        thread = threading.Thread(target=send_big)
        thread.start()
        passes = gate.passes
        while gate.passes < passes + 3:  # the large request is running its forward passes
            time.sleep(0.005)
        small: list[float] = []
        for _ in range(3):
            started = time.perf_counter()
            assert http.post("/predict", json={"texts": ["Paris"]}).status_code == 200
            small.append(time.perf_counter() - started)
        small_end, passes_then = time.perf_counter(), gate.passes
        thread.join()
        passes_after = gate.passes
    assert passes_then < passes_after - 10, "the small requests were answered while the large one ran its passes"
    assert small_end < timings["big_end"]
    assert max(small) < timings["big"] / 5, (small, timings["big"])


def test_a_full_queue_answers_503_with_retry_after_at_once(person_model: Path):
    loader, made = controlled_loader(person_model)
    app = create_app(ServeConfig(max_queue=2, batch_wait_ms=0), loader=loader)
    with ready_client(app) as client:
        backend = made["backend"]
        first = post_all_later(client.post, [{"texts": [HOLD]}])
        assert backend.entered.wait(30)
        second = post_all_later(client.post, [{"texts": ["Paris"]}])
        wait_until(lambda: app.state.service.batcher.pending == 2)
        started = time.perf_counter()
        refused = client.post("/predict", json={"texts": ["Berlin"]})
        assert time.perf_counter() - started < 1.0
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "2 requests waiting or running; the limit is 2" in refused.json()["detail"]
        backend.release.set()
        assert [r.status_code for r in first() + second()] == [200, 200]
        assert client.post("/predict", json={"texts": ["Berlin"]}).status_code == 200


def post_all_later(post, bodies: list[dict]):
    """Start sending the bodies; returns a function that waits for and returns the responses."""
    result: list = []
    thread = threading.Thread(target=lambda: result.extend(post_all(post, bodies)))
    thread.start()

    def join() -> list:
        thread.join()
        return result

    return join


def test_a_request_past_its_deadline_gets_504_and_its_remaining_passes_are_skipped(person_model: Path):
    loader, made = controlled_loader(person_model)
    app = create_app(ServeConfig(request_timeout_s=1, batch_wait_ms=0), loader=loader)
    # The held word's short window goes first; the long texts need more passes, which nobody waits for after 1 s.
    texts = [HOLD] + [" ".join(["Angela Merkel met Emmanuel Macron in Paris"] * 4)] * 16
    assert count_passes(person_model, texts) >= 2
    with ready_client(app) as client:
        backend, gate = made["backend"], app.state.service.gate
        passes = gate.passes
        started = time.perf_counter()
        late = client.post("/predict", json={"texts": texts})
        assert late.status_code == 504 and late.json()["detail"] == "no answer within 1 s"
        assert time.perf_counter() - started < 5
        calls = backend.calls
        backend.release.set()
        assert client.post("/predict", json={"texts": ["Paris"]}).status_code == 200
        assert gate.passes - passes == 2, "the held pass, then the next request's: the rest was skipped"
        assert backend.calls == calls + 1


def test_a_dead_batching_lane_is_restarted_and_ready_says_so_meanwhile(person_model: Path, caplog):
    app = create_app(ServeConfig(), loader=lambda: load_handle(str(person_model), "torch", None))
    with ready_client(app) as client, caplog.at_level(logging.INFO, logger="ner_pipeline.serve.batcher"):
        batcher = app.state.service.batcher
        batcher.restart_delay = 1.0
        client.portal.call(batcher.small.put_nowait, object())  # a bug in the lane: it cannot serve this item
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503 and not_ready.json()["detail"] == "the batching loop is restarting"
        assert client.post("/predict", json={"texts": ["Paris"]}).status_code == 503
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ready").status_code == 200
        assert client.post("/predict", json={"texts": ["Paris"]}).json()["entities"][0][0]["text"] == "Paris"
        assert batcher.restarts == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "the batch lane died; restarting it in 1.0 s" in messages and "the batch lane restarted" in messages


def test_health_answers_while_the_model_loads_and_ready_waits_for_it(person_model: Path):
    loaded = threading.Event()

    def slow_loader():
        assert loaded.wait(30)
        return load_handle(str(person_model), "torch", None)

    app = create_app(ServeConfig(), loader=slow_loader)
    with TestClient(app) as client:
        try:
            assert client.get("/health").json() == {"status": "loading"}
            assert client.get("/ready").status_code == 503
            assert client.get("/ready").json()["detail"] == "model not loaded yet"
            assert client.post("/predict", json={"texts": ["Paris"]}).status_code == 503
        finally:
            loaded.set()
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "ok"}
        assert client.post("/predict", json={"texts": ["Paris"]}).status_code == 200


def test_a_model_that_cannot_load_fails_health_and_a_passing_failure_is_retried(tmp_path: Path, person_model: Path):
    missing = tmp_path / "no-model"
    app = create_app(ServeConfig(), loader=lambda: load_handle(str(missing), "torch", None))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "failed"}
        assert client.get("/ready").json()["detail"] == "model failed to load (see the service log)"
    attempts = {"n": 0}

    def flaky_loader():
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise OSError("registry unreachable")
        return load_handle(str(person_model), "torch", None)

    with ready_client(create_app(ServeConfig(), loader=flaky_loader)) as client:
        assert client.get("/health").json() == {"status": "ok"} and attempts["n"] == 2


def raw_request(base: str, head: str) -> bytes:
    """Send only a request's head (no body) and return what the server answers within 5 s."""
    url = urlparse(base)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _content_length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _content_length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.slow  # a real uvicorn on loopback
def test_a_body_over_the_limit_is_refused_from_its_content_length_without_reading_it(person_model: Path):
    settings = ServeConfig(max_body_bytes=10_000)
    app = create_app(settings, loader=lambda: load_handle(str(person_model), "torch", None), api_key="k3y")
    # 200 MB announced, none sent: a server that read the body would wait for it and never answer.
    head = "POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 200000000\r\n"
    with live_server(app) as base:
        no_key = raw_request(base, head + "\r\n")
        too_big = raw_request(base, head + "X-API-Key: k3y\r\n\r\n")
        with httpx.Client(base_url=base, headers={"X-API-Key": "k3y", "Content-Type": "application/json"}) as http:
            chunked = http.post("/predict", content=iter([b'{"texts": ["', b"x" * 20_000, b'"]}']))
            small = http.post("/predict", content=iter([b'{"texts": ["Paris"]}']))
    assert no_key.startswith(b"HTTP/1.1 401 ") and b"missing or wrong API key" in no_key
    assert too_big.startswith(b"HTTP/1.1 413 ") and b"request body of 200000000 bytes; the limit is 10000" in too_big
    assert chunked.status_code == 413 and chunked.json()["detail"] == "request body over 10000 bytes"
    assert small.status_code == 200 and small.json()["entities"][0][0]["text"] == "Paris"


def test_no_response_carries_an_absolute_filesystem_path(person_model: Path):
    loader, _ = controlled_loader(person_model)
    app = create_app(ServeConfig(max_texts=2), loader=loader)
    forbidden = {str(person_model), str(person_model.parent), str(REPO_ROOT), sys.prefix, tempfile.gettempdir() + "/"}
    forbidden |= {os.getcwd(), str(Path.home())}
    with ready_client(app, raise_server_exceptions=False) as client:
        responses = [
            client.get(path) for path in ("/", "/docs", "/openapi.json", "/model", "/health", "/ready", "/nope")
        ]
        responses += [
            client.post("/predict", json={"texts": ["Angela Merkel"]}),
            client.post("/predict", json={"texts": [f"a {POISON}"]}),  # 500
            client.post("/predict", json={"texts": ["a", "b", "c"]}),  # 413
            client.post("/predict", json={"texts": "x"}),  # 422
            client.post("/admin/reload"),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 200, 404, 200, 500, 413, 422, 200]
    for response in responses:
        text = response.text + json.dumps(dict(response.headers))
        leaked = [path for path in forbidden if path in text]
        assert not leaked, f"{response.request.url.path} answers with {leaked}"
