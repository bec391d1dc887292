"""The retry classifier on real failures: refused and reset connections, timeouts, HTTP answers from a loopback
server, a locked and an unopenable SQLite database, MLflow's wrappers around them, and plain bugs."""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import free_port

from ner_pipeline.errors import DataError, RegistryError, SourceUnavailableError
from ner_pipeline.transient import is_transient


def raised(call: Callable[[], object]) -> BaseException:
    """The exception `call` raises (it must raise)."""
    try:
        call()
    except BaseException as exc:
        return exc
    pytest.fail(f"{call} raised nothing")


@pytest.fixture
def answering() -> Iterator[tuple[str, dict]]:
    """A loopback HTTP server answering every request with the status and JSON body in the returned dict."""
    reply = {"status": 200, "body": {}}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = json.dumps(reply["body"]).encode()
            self.send_response(reply["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", reply
    server.shutdown()
    server.server_close()


def mlflow_client(uri: str, monkeypatch: pytest.MonkeyPatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one attempt: the test is about the verdict
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_refused_connection_is_transient_raw_and_through_mlflow(monkeypatch: pytest.MonkeyPatch):
    closed = f"http://127.0.0.1:{free_port()}"
    assert is_transient(raised(lambda: requests.get(closed, timeout=5)))
    wrapped = raised(lambda: mlflow_client(closed, monkeypatch).get_registered_model("m"))
    assert type(wrapped).__name__ == "MlflowException" and is_transient(wrapped)


def test_a_reset_connection_is_transient():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def reset_first_connection() -> None:
            conn, _ = listener.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            conn.close()

        thread = threading.Thread(target=reset_first_connection, daemon=True)
        thread.start()
        exc = raised(lambda: requests.get(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5))
        thread.join(5)
    assert isinstance(exc, requests.exceptions.ConnectionError) and is_transient(exc)


def test_a_timeout_is_transient():
    with socket.socket() as silent:  # accepts into the backlog, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        exc = raised(lambda: requests.get(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3))
    assert isinstance(exc, requests.exceptions.ReadTimeout) and is_transient(exc)


@pytest.mark.parametrize(("status", "expected"), [(503, True), (502, True), (500, True), (429, True), (404, False)])
def test_http_errors_are_transient_only_for_server_trouble_and_rate_limits(answering, status: int, expected: bool):
    url, reply = answering
    reply["status"] = status
    exc = raised(lambda: requests.get(url, timeout=5).raise_for_status())
    assert isinstance(exc, requests.exceptions.HTTPError) and is_transient(exc) is expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "TEMPORARILY_UNAVAILABLE", True),
        (429, "REQUEST_LIMIT_EXCEEDED", True),
        (500, "INTERNAL_ERROR", True),
        (404, "RESOURCE_DOES_NOT_EXIST", False),
        (400, "INVALID_PARAMETER_VALUE", False),
        (403, "PERMISSION_DENIED", False),
    ],
)
def test_a_tracking_servers_answer_decides_through_mlflows_client(
    answering, monkeypatch: pytest.MonkeyPatch, status: int, code: str, expected: bool
):
    from mlflow.exceptions import MlflowException

    url, reply = answering
    reply.update(status=status, body={"error_code": code, "message": "from the test server"})
    exc = raised(lambda: mlflow_client(url, monkeypatch).get_registered_model("m"))
    assert isinstance(exc, MlflowException) and is_transient(exc) is expected


def test_mlflow_errors_built_from_codes(tmp_path: Path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException, RestException

    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert not is_transient(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "gone"}))
    assert not is_transient(MlflowException("a bug somewhere"))  # INTERNAL_ERROR by default, but not a server's 5xx
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    missing = raised(lambda: MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("nope", "1"))
    assert isinstance(missing, MlflowException) and not is_transient(missing)


def test_a_locked_sqlite_database_is_transient_and_an_unopenable_one_is_not(tmp_path: Path):
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    path = tmp_path / "store.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("create table t (x int)")
    holder.execute("begin exclusive")  # another process in the middle of a write
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
        with engine.connect() as conn:
            locked = raised(lambda: conn.execute(sqlalchemy.text("select * from t")))
        assert "database is locked" in str(locked) and is_transient(locked)
        assert is_transient(raised(lambda: sqlite3.connect(path, timeout=0.1).execute("select * from t")))
    finally:
        holder.execute("rollback")
        holder.close()

    nowhere = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/no/such/dir/store.db")
    unopenable = raised(nowhere.connect)
    assert "unable to open database file" in str(unopenable) and not is_transient(unopenable)

    def mlflow_wraps(exc: BaseException) -> None:
        # What MLflow's SQL store does with every OperationalError (mlflow/store/db/utils.py).
        raise MlflowException(message=exc, error_code="TEMPORARILY_UNAVAILABLE") from exc

    assert not is_transient(raised(lambda: mlflow_wraps(unopenable)))
    assert is_transient(raised(lambda: mlflow_wraps(locked)))


def test_an_unknown_host_is_not_transient():
    exc = raised(lambda: requests.get("http://no-such-host.invalid/", timeout=5))
    assert isinstance(exc, requests.exceptions.ConnectionError) and not is_transient(exc)


def test_our_errors_say_themselves_and_bugs_are_never_transient():
    assert not is_transient(DataError("data/train.conll line 3: 2 tokens but 1 tag"))
    assert is_transient(SourceUnavailableError("the Hub did not answer"))
    marked = RegistryError("cannot reach the server")
    marked.transient = True
    assert is_transient(marked)
    assert not is_transient(ValueError("bad"))

    def bug_while_handling_a_network_error() -> None:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            {}["missing"]

    assert not is_transient(raised(bug_while_handling_a_network_error))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(TimeoutError("timed out"))
