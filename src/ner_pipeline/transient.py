"""Which failures are worth retrying: passing network and lock trouble, nothing else.

A retry repeats a side effect, so only errors that say "try again later" qualify: a refused or reset
connection, a timeout, an HTTP 5xx/408/429 from a tracking server, SQLite's "database is locked", and our own
errors marked `transient`. A bug, bad input, a missing file or an unknown host fails at once.

Libraries wrap these: MLflow turns a refused connection into `MlflowException("API request ... failed")` and
every SQLAlchemy `OperationalError` (locked, but also "unable to open database file") into
`TEMPORARILY_UNAVAILABLE`; requests wraps urllib3, which wraps the socket error. So the classifier walks the
chain of causes, outermost first: some links decide at once, others only suggest, and an inner link that
decides (the database file cannot be opened, the host name does not resolve) overrules a hopeful wrapper.
"""

from __future__ import annotations

import socket
import sqlite3
import ssl
from collections.abc import Iterator

from ner_pipeline.errors import NerPipelineError

# HTTP answers that mean "not now": timeout, rate limit, server-side failures.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# MLflow error codes a server (or MLflow's SQL store) uses for the same.
TRANSIENT_MLFLOW_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})
LOCKED_MARKERS = ("database is locked", "database table is locked")
MAX_LINKS = 32


def is_transient(exc: BaseException) -> bool:
    """True when retrying `exc` later may succeed (see the module docstring for what counts).

    Args:
        exc: A raised exception, e.g. what a Prefect task's failed state re-raises.

    Returns:
        True for connection refused/reset, timeouts, HTTP 5xx/408/429, SQLite "database is locked" and
        `NerPipelineError`s with `transient=True`; False for everything else.
    """
    hopeful = False
    for depth, link in enumerate(_links(exc)):
        verdict = _decide(link)
        if verdict is not None:
            return verdict
        if _suggests_transient(link):
            hopeful = True
        elif depth == 0 and not _is_wrapper(link):
            return False  # an ordinary error (a bug, bad input), whatever it was handling when raised
    return hopeful


def _links(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps, breadth first: causes, contexts, and the errors libraries keep as attributes."""
    queue, seen = [exc], set()
    while queue and len(seen) < MAX_LINKS:
        link = queue.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        inner = [link.__cause__, None if link.__suppress_context__ else link.__context__]
        inner += [getattr(link, "reason", None), getattr(link, "orig", None), *link.args]
        queue += [e for e in inner if isinstance(e, BaseException)]


def _decide(exc: BaseException) -> bool | None:
    """A verdict when this link alone settles the question, else None."""
    import requests
    import urllib3.exceptions

    if isinstance(exc, NerPipelineError):
        return exc.transient
    if _is_operational_error(exc):
        return any(marker in str(exc) for marker in LOCKED_MARKERS)
    # An unknown host or a certificate problem will be the same in ten seconds.
    unfixable = (
        socket.gaierror,
        ssl.SSLError,
        urllib3.exceptions.NameResolutionError,
        urllib3.exceptions.SSLError,
        requests.exceptions.SSLError,
        requests.exceptions.InvalidURL,
    )
    if isinstance(exc, unfixable):
        return False
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_STATUS
    if isinstance(exc, requests.exceptions.RetryError | urllib3.exceptions.ResponseError):
        return True  # retries ran out on TRANSIENT_STATUS answers
    status = _mlflow_status(exc)
    if status is not None and 400 <= status < 500 and status not in TRANSIENT_STATUS:
        return False  # the server understood and said no (not found, bad parameter, permission)
    return None


def _suggests_transient(exc: BaseException) -> bool:
    """A link that points at a passing failure unless something it wraps says otherwise."""
    import requests
    import urllib3.exceptions

    network = (
        ConnectionError,  # refused, reset, aborted, broken pipe
        TimeoutError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        urllib3.exceptions.NewConnectionError,
        urllib3.exceptions.ProtocolError,
        urllib3.exceptions.TimeoutError,
        urllib3.exceptions.MaxRetryError,
    )
    if isinstance(exc, network):
        return True
    from mlflow.exceptions import MlflowException, RestException

    if not isinstance(exc, MlflowException):
        return False
    if exc.error_code in TRANSIENT_MLFLOW_CODES:
        return True
    # Only a server's own answer counts as a 5xx: a bare MlflowException defaults to INTERNAL_ERROR (500).
    return isinstance(exc, RestException) and (_mlflow_status(exc) or 0) in TRANSIENT_STATUS


def _is_wrapper(exc: BaseException) -> bool:
    """Exceptions that carry another library's error inside (judge by what they wrap)."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException)


def _is_operational_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return True
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - sqlalchemy comes with MLflow
        return False
    return isinstance(exc, OperationalError)


def _mlflow_status(exc: BaseException) -> int | None:
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return None
    try:
        return int(exc.get_http_status_code())
    except (TypeError, ValueError):
        return None
