"""A temporary Prefect server for one `ner-pipeline run`, which dies with the process that started it.

Prefect starts its own temporary ("ephemeral") server as a plain subprocess when no PREFECT_API_URL is set; after
`kill -9` of its parent that server keeps running, reparented, holding its memory and port. So `run` starts the
same server app itself (UI off, the ephemeral set of services) through `python -m ner_pipeline_flows.server`, whose
watchdog thread ends the server within a second of its parent's death, and points PREFECT_API_URL at it.

The first start in a new PREFECT_HOME also migrates Prefect's database, which on two busy cores can take longer than
Prefect's default 20 s: the wait is PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (120 s unless set), and a
server that does not answer in time is stopped and started once more on a new port.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ner_pipeline.errors import NerPipelineError
from ner_pipeline.ports import free_port

logger = logging.getLogger(__name__)

TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_TIMEOUT_S = 120
ATTEMPTS = 2  # one retry
WATCH_INTERVAL_S = 0.5
LOG_NAME = "temporary-server.log"
SERVER_MODULE = "ner_pipeline_flows.server"  # this file, under its installed name


def startup_timeout(env: Mapping[str, str]) -> float:
    """Seconds to wait for the server to answer: $PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, else 120."""
    return float(env.get(TIMEOUT_VARIABLE) or DEFAULT_STARTUP_TIMEOUT_S)


@dataclass
class TemporaryServer:
    """A running server process on loopback."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(timeout: float, log_dir: Path, attempts: int = ATTEMPTS, port_for: Callable[[], int] = free_port):
    """Start a server and wait until it answers `/health`; retry on a new port when it exits or times out.

    Args:
        timeout: Seconds to wait for each attempt.
        log_dir: Where the server's output goes (`temporary-server.log`).
        attempts: Starts to try in all.
        port_for: Picks the port of each attempt.

    Raises:
        NerPipelineError: no attempt answered; says how to give it more time or use a running server.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / LOG_NAME
    for attempt in range(1, attempts + 1):
        server = _spawn(port_for(), log)
        if _wait_healthy(server, timeout):
            logger.info("temporary Prefect server on %s (pid %s)", server.api_url, server.process.pid)
            return server
        server.stop()
        logger.warning(
            "temporary Prefect server did not answer within %.0f s (attempt %d of %d)", timeout, attempt, attempts
        )
    raise NerPipelineError(
        f"the temporary Prefect server did not start within {timeout:.0f} s ({attempts} attempts; log: {log}); "
        f"set {TIMEOUT_VARIABLE} higher, or PREFECT_API_URL to a running server (prefect server start)"
    )


def _spawn(port: int, log: Path) -> TemporaryServer:
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        # what Prefect's own temporary server runs with: no UI, the services an ephemeral server needs
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", SERVER_MODULE, "--port", str(port), "--parent", str(os.getpid())]
    with log.open("ab") as handle:
        # its own session: a Ctrl-C in the terminal reaches only `run`, which then sends its last logs and stops it
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    return TemporaryServer(process, port, log)


def _wait_healthy(server: TemporaryServer, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False  # e.g. the port was taken after we picked it
            try:
                if client.get(f"{server.api_url}/health").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    return False


@contextmanager
def prefect_api() -> Iterator[str]:
    """Point Prefect at PREFECT_API_URL if set, else at a temporary server that lives as long as this block.

    Yields:
        The API URL in use.
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, get_current_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    server = start_server(startup_timeout(os.environ), Path(get_current_settings().home))
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()  # every thread, including Prefect's log and event workers, sees it
    try:
        yield server.api_url
    finally:
        _drain_workers()
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        server.stop()


def _drain_workers() -> None:
    """Send the logs and events still queued before the server goes away (as Prefect's test harness does)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:
            pass  # never started
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


def _exit_with_parent(parent: int) -> None:
    """Exit this process as soon as `parent` is gone (we are then reparented and getppid changes)."""
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Serve Prefect's API on loopback until stopped or until the parent process dies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True, help="pid of the process this server belongs to")
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, args=(args.parent,), name="parent-watchdog", daemon=True).start()

    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
