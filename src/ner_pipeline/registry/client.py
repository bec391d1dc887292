"""The MLflow client every registry call goes through, bound to one tracking URI, and the checks made before it.

Tracking and registry share the URI, and nothing here reads or sets MLflow's process-wide URIs: a client built
for its store is what lets the server's reload thread fetch a model while other code logs elsewhere.

Two builders: `client_for` may create a local store (registering is what fills one), `existing_client` is for
everything that reads or moves what is registered and refuses a store that is not there, because MLflow would
silently create an empty one at a mistyped SQLite path and `artifacts prune` would then protect nothing. Both
check first that a tracking server answers: MLflow's own client retries a refused connection for about four
minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, read from the process environment on every request, with no
per-client setting), so one probe without retries is what makes an unreachable server fail in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ner_pipeline.errors import RegistryError

SQLITE_PREFIX = "sqlite:///"
# Connect and read timeouts of the reachability probe, in seconds.
PROBE_TIMEOUT = (5.0, 10.0)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOW_TO_FIX = "fix tracking.tracking_uri (--set tracking.tracking_uri=...) or $MLFLOW_TRACKING_URI"


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient bound to `tracking_uri` (registry at the same URI); a local SQLite store is created.

    Raises:
        RegistryError: a tracking server at `tracking_uri` does not answer (marked transient).
    """
    from mlflow import MlflowClient

    from ner_pipeline.tracking import prepare_store

    require_reachable(tracking_uri)
    prepare_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def existing_client(tracking_uri: str) -> Any:
    """Like `client_for`, for commands that read or move registered versions: the store must already exist.

    Raises:
        RegistryError: no store at a SQLite or file URI, or a tracking server that does not answer.
    """
    require_existing_store(tracking_uri)
    return client_for(tracking_uri)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the working directory unless absolute), else None.

    None too for an in-memory database (`sqlite://`, `sqlite:///:memory:`).
    """
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = tracking_uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _file_store_path(tracking_uri: str) -> Path | None:
    """The folder of a file store (a plain path or `file:` URI), else None."""
    parts = urlsplit(tracking_uri)
    if parts.scheme == "file":
        return Path(parts.path)
    if parts.scheme == "" and not tracking_uri.startswith("databricks"):  # "databricks" is a URI of its own
        return Path(tracking_uri)
    return None


def canonical_uri(tracking_uri: str) -> str:
    """One spelling per store, for keys: a SQLite or file path made absolute and resolved, a server URL
    normalised (lower-case scheme and host, no default port, no trailing slash).

    So `sqlite:///mlruns/mlflow.db` run from /srv and `sqlite:////srv/mlruns/mlflow.db` are the same store.
    """
    text = tracking_uri.strip()
    db = sqlite_path(text)
    if db is not None:
        query = text.partition("?")[2]
        return f"{SQLITE_PREFIX}{db.resolve()}" + (f"?{query}" if query else "")
    folder = _file_store_path(text)
    if folder is not None:
        return folder.resolve().as_uri()
    parts = urlsplit(text)
    if parts.scheme.lower() in _DEFAULT_PORTS and parts.hostname:
        scheme = parts.scheme.lower()
        netloc = parts.netloc.rpartition("@")
        host = netloc[2].lower()
        if parts.port == _DEFAULT_PORTS[scheme]:
            host = host.rsplit(":", 1)[0]
        return urlunsplit((scheme, netloc[0] + netloc[1] + host, parts.path.rstrip("/"), parts.query, ""))
    return text.rstrip("/")


def require_existing_store(tracking_uri: str) -> None:
    """Refuse a local store that does not exist (one line: which path, how to fix); check a server answers.

    Raises:
        RegistryError: the SQLite file or file-store folder is missing, or the server does not answer.
    """
    db, folder = sqlite_path(tracking_uri), _file_store_path(tracking_uri)
    missing = db.resolve() if db is not None and not db.is_file() else None
    if folder is not None and not folder.is_dir():
        missing = folder.resolve()
    if missing is not None:
        raise RegistryError(
            f"no MLflow store at {missing} (tracking URI '{tracking_uri}'): {_HOW_TO_FIX}, "
            "or run the pipeline first to create it"
        )
    require_reachable(tracking_uri)


def require_reachable(tracking_uri: str) -> None:
    """For an http(s) tracking URI, one request without retries: does anything answer there?

    Any HTTP answer counts (even 401 or 404: something is listening), and so does a TLS failure (MLflow may be
    configured to accept a certificate this probe does not); only a refused, reset or silent connection fails.

    Raises:
        RegistryError: nothing answers within PROBE_TIMEOUT (marked transient: a server may come back).
    """
    if urlsplit(tracking_uri).scheme.lower() not in _DEFAULT_PORTS:
        return
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT, allow_redirects=False)
    except requests.exceptions.SSLError:
        return
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        error = RegistryError(f"cannot reach the MLflow tracking server at {tracking_uri} ({_why(exc)}): {_HOW_TO_FIX}")
        error.transient = True
        raise error from None


def _why(exc: BaseException) -> str:
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {PROBE_TIMEOUT[1]:.0f} s"
    seen: BaseException | None = exc
    for _ in range(8):  # requests wraps urllib3, which wraps the socket error that names the cause
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        if seen is None:
            break
        seen = seen.__cause__ or getattr(seen, "reason", None) or (seen.args[0] if seen.args else None)
        if not isinstance(seen, BaseException):
            break
    return "connection failed"
