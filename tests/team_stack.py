"""The team stack on loopback: PostgreSQL, an S3 server (moto), an MLflow server, a Prefect server and workers.

Each server is the real one, started in a temporary folder on a free port bound to 127.0.0.1 and stopped when its
context exits; nothing here touches the user's PostgreSQL, ~/.aws, ~/.prefect or ~/.cache. Used by
tests/test_team.py and bench/team_cache.py (which puts tests/ on sys.path).

PostgreSQL is Debian's `postgresql` package (15): `initdb` and `pg_ctl` refuse to run as root, so as root they run
as the `postgres` user (`runuser`) in a folder that user owns; as any other user they run as that user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ner_pipeline.ports import free_port

logger = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("NER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PREFECT = [sys.executable, "-m", "prefect"]
# moto accepts any credentials; these only have to be present so boto3/s3fs sign requests.
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "PREFECT_CLI_PROMPT": "false",
}


def postgres_missing() -> str | None:
    """Why the PostgreSQL binaries cannot be used here (None when they can)."""
    if not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL binaries not found in {PG_BIN} (apt-get install postgresql, as .ci/run does)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


def wait_listening(port: int, proc: subprocess.Popen | None, log: Path, timeout: float = 180) -> None:
    """Wait until something listens on 127.0.0.1:`port`; raise with the end of `log` if `proc` exits or it times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{log.name}: server exited:\n{tail(log)}") from None
            time.sleep(0.3)
    raise RuntimeError(f"{log.name}: nothing listens on port {port} after {timeout} s:\n{tail(log)}")


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a process started here in its own session, and its children; kill them if they linger."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def spawn(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start `cmd` in a session of its own (so it and its children stop together), output appended to `log`."""
    with log.open("a") as handle:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


# --- PostgreSQL -------------------------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster; `url(db)` is a SQLAlchemy URL for one of its databases (user postgres, trust)."""

    folder: Path
    port: int

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_cluster(databases: tuple[str, ...] = ("mlflow", "prefect")) -> Iterator[Postgres]:
    """initdb + pg_ctl start in a temporary folder on a free loopback port; stopped and deleted on exit."""
    folder = Path(tempfile.mkdtemp(prefix="ner-team-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")  # the data folder and socket folder must be the server's
    data, log = folder / "data", folder / "postgres.log"
    port = free_port()
    # trust on loopback only: the cluster lives for one test run; no fsync: its data is thrown away.
    subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--no-sync"]),
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    started = subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        capture_output=True,
        text=True,
    )
    try:
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}\n{tail(log)}")
        cluster = Postgres(folder, port)
        for name in databases:
            cluster.create_database(name)
        yield cluster
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


# --- S3 (moto) --------------------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Bytes that crossed the S3 server: request bodies in (uploads), response bodies out (downloads)."""

    uploaded: int = 0
    downloaded: int = 0
    requests: int = 0

    def since(self, before: Traffic) -> Traffic:
        return Traffic(
            self.uploaded - before.uploaded, self.downloaded - before.downloaded, self.requests - before.requests
        )


class _CountingApp:
    """WSGI middleware in front of moto's app: counts the body bytes of every request and response."""

    def __init__(self, app, traffic: Traffic) -> None:
        self.app, self.traffic = app, traffic

    def __call__(self, environ, start_response):
        self.traffic.requests += 1
        self.traffic.uploaded += int(environ.get("CONTENT_LENGTH") or 0)
        for chunk in self.app(environ, start_response):
            self.traffic.downloaded += len(chunk)
            yield chunk


@dataclass
class S3:
    """moto's S3 server on loopback and one bucket; `env` is what a client process needs to reach it."""

    endpoint: str
    bucket: str
    traffic: Traffic = field(default_factory=Traffic)

    @property
    def env(self) -> dict[str, str]:
        return {
            **FAKE_AWS,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Every object under `prefix`: key → size."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
        return found


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": FAKE_AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": FAKE_AWS["AWS_DEFAULT_REGION"],
    }


@contextlib.contextmanager
def s3_server(bucket: str = "ner-team") -> Iterator[S3]:
    """moto's threaded S3 server on a free port of 127.0.0.1 (it binds every interface unless told), one bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3(f"http://127.0.0.1:{port}", bucket)
    # The server object is moto's; only its WSGI app is wrapped, to count what crosses it (bench/team_cache.py).
    server._server.app = _CountingApp(server._server.app, s3.traffic)
    try:
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()


# --- MLflow and Prefect servers ---------------------------------------------------------------------------------


@dataclass
class TeamStack:
    """The running servers: PostgreSQL, S3, MLflow (tracking URI) and Prefect (the environment a client needs)."""

    folder: Path
    pg: Postgres
    s3: S3
    mlflow_uri: str
    prefect_env: dict[str, str]

    def client_env(self) -> dict[str, str]:
        """What a worker, the CLI or `ner-pipeline serve` needs: Prefect's API, MLflow's server, S3 (fake keys)."""
        return {**self.prefect_env, **self.s3.env, "MLFLOW_TRACKING_URI": self.mlflow_uri}


@contextlib.contextmanager
def team_stack(folder: Path, bucket: str = "ner-pipeline") -> Iterator[TeamStack]:
    """PostgreSQL, moto's S3 with `bucket`, `mlflow server` (PostgreSQL + s3://bucket/mlflow) and `prefect server`
    (PostgreSQL), all on loopback; the two servers start side by side (each migrates its database first)."""
    with postgres_cluster() as pg, s3_server(bucket) as s3, contextlib.ExitStack() as stack:
        mlflow_port, prefect_port = free_port(), free_port()
        mlflow_log, prefect_log = folder / "mlflow-server.log", folder / "prefect-server.log"
        mlflow_cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", pg.url("mlflow", "postgresql+psycopg2"),
            "--artifacts-destination", f"s3://{s3.bucket}/mlflow",
            "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        ]  # fmt: skip
        mlflow_proc = spawn(mlflow_cmd, {**os.environ, **QUIET, **s3.env}, folder, mlflow_log)
        stack.callback(stop_process, mlflow_proc)
        prefect_env = {
            **os.environ,
            **QUIET,
            "PREFECT_HOME": str(folder / "prefect-home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        }
        server_env = {
            **prefect_env,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(prefect_port),
            "PREFECT_API_DATABASE_CONNECTION_URL": pg.url("prefect", "postgresql+asyncpg"),
        }
        cmd = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
        prefect_proc = spawn(cmd, server_env, folder, prefect_log)
        stack.callback(stop_process, prefect_proc)
        wait_listening(mlflow_port, mlflow_proc, mlflow_log)
        wait_listening(prefect_port, prefect_proc, prefect_log)
        _wait_healthy(prefect_env["PREFECT_API_URL"], prefect_proc, prefect_log)
        # Clients (CLI, workers, flow runs) never see the servers' database URLs.
        yield TeamStack(folder, pg, s3, f"http://127.0.0.1:{mlflow_port}", prefect_env)


def _wait_healthy(api_url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=5).status_code == 200:
                return
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{tail(log)}")
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout} s:\n{tail(log)}")


def prefect(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> str:
    """Run a `prefect` CLI command; raise with its output if it fails."""
    result = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


# --- workers ----------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """A `prefect worker start --type process` in a folder of its own (a checkout of the project, its own
    XDG_CACHE_HOME), as a second machine would have. `start()` / `stop()` so a test decides who polls."""

    name: str
    folder: Path
    pool: str
    env: dict[str, str]
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def cache_home(self) -> Path:
        return Path(self.env["XDG_CACHE_HOME"])

    def start(self) -> None:
        cmd = [*PREFECT, "worker", "start", "--pool", self.pool, "--type", "process", "--name", self.name]
        self.proc = spawn(cmd, self.env, self.folder / "project", self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill_flow_run(self, flow_run_id: str) -> int:
        """SIGKILL the process group running `flow_run_id` under this worker, as a lost machine would; the worker
        itself lives on and reports the run crashed. Returns how many processes carried the run's id."""
        wanted = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if wanted in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
        worker_group = os.getpgid(self.proc.pid) if self.proc is not None else None
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(pid)
                # Prefect may start the run in the worker's own process group: then only the run's process goes.
                if group == worker_group:
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.killpg(group, signal.SIGKILL)
        return len(pids)


def make_worker(name: str, root: Path, pool: str, base_env: dict[str, str], project_files: list[Path]) -> Worker:
    """A worker folder with its own copy of the project and an empty cache home."""
    folder = root / name
    project = folder / "project"
    project.mkdir(parents=True)
    for source in project_files:
        target = project / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    env = {
        **base_env,
        "XDG_CACHE_HOME": str(folder / "cache"),
        "NER_PIPELINE_HOME": str(project),  # the deployment's pull step: where this machine's checkout is
        "PREFECT_HOME": str(folder / "prefect-home"),
    }
    return Worker(name, folder, pool, env)


# --- deployments and flow runs (Prefect's REST API) --------------------------------------------------------------


def trigger(env: dict[str, str], cwd: Path, deployment: str, overrides: list[str], **parameters: object) -> str:
    """`prefect deployment run DEPLOYMENT --param overrides=[...]` (and other parameters); returns the flow run id."""
    import json

    params = [f"{k}={json.dumps(v)}" for k, v in {"overrides": overrides, **parameters}.items()]
    out = prefect(env, cwd, "deployment", "run", deployment, *(a for p in params for a in ("--param", p)))
    return next(line.split()[-1] for line in out.splitlines() if "UUID" in line)


def _api(env: dict[str, str], method: str, path: str, body: dict | None = None):
    import httpx

    response = httpx.request(method, f"{env['PREFECT_API_URL']}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def flow_run_state(env: dict[str, str], flow_run_id: str) -> str:
    """The flow run's state type: SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CRASHED..."""
    return _api(env, "GET", f"/flow_runs/{flow_run_id}")["state"]["type"]


def wait_for_state(
    env: dict[str, str], flow_run_id: str, states: set[str], timeout: float, workers: tuple[Worker, ...] = ()
) -> str:
    """Wait until the flow run reaches one of `states`; raise with the workers' logs if it takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = flow_run_state(env, flow_run_id)
        if state in states:
            return state
        time.sleep(1)
    logs = "\n".join(f"--- {w.name}\n{tail(w.log)}" for w in workers)
    raise RuntimeError(f"flow run {flow_run_id} still {state} after {timeout} s\n{logs}")


def run_summary(env: dict[str, str], flow_run_id: str) -> dict[str, str]:
    """Stage → "computed" or "cache hit", from the run's `ner-training-summary` Markdown artifact."""
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["ner-training-summary"]}}}
    found = _api(env, "POST", "/artifacts/filter", body)
    if not found:
        raise RuntimeError(f"flow run {flow_run_id} published no ner-training-summary artifact")
    rows = [line.split("|") for line in found[0]["data"].splitlines() if line.startswith("| ")]
    return {cells[1].strip(): cells[2].strip() for cells in rows if cells[2].strip() in ("computed", "cache hit")}


# --- the team deployment ------------------------------------------------------------------------------------------

POOL = "ner-team"
DEPLOYMENT = "ner-training/team-nightly"  # deployments/team.yaml
PROJECT_FILES = ("flows", "tasks", "configs", "deployments", "pyproject.toml")


def deploy_team(stack: TeamStack, repo: Path) -> Path:
    """Create the process pool and deploy deployments/team.yaml from a checkout of `repo`; returns that checkout.

    Deployed from a shell without NER_PIPELINE_HOME: the pull step keeps its placeholder, each worker fills it in.
    """
    env = {k: v for k, v in stack.client_env().items() if k != "NER_PIPELINE_HOME"}
    deployer = make_worker("deployer", stack.folder, POOL, env, [repo / name for name in PROJECT_FILES])
    project = deployer.folder / "project"
    prefect(env, project, "work-pool", "create", POOL, "--type", "process")
    out = prefect(env, project, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/team.yaml")
    if DEPLOYMENT not in out:
        raise RuntimeError(f"prefect deploy did not create {DEPLOYMENT}:\n{out}")
    return project


def new_worker(stack: TeamStack, name: str, repo: Path) -> Worker:
    """A worker machine: its own checkout of `repo`, an empty cache home, the team's environment."""
    return make_worker(name, stack.folder, POOL, stack.client_env(), [repo / name for name in PROJECT_FILES])


def run_deployment(
    worker: Worker, stack: TeamStack, overrides: list[str], timeout: float = 600, **parameters: object
) -> tuple[str, float]:
    """Start `worker` (it must be the only one polling), trigger the team deployment and wait until the run ends.

    Returns the flow run id and the seconds from trigger to the end. Raises with the worker's log unless the run
    completed. The worker keeps running: stop it before another worker is meant to take the next run.
    """
    env = stack.client_env()
    if worker.proc is None:
        worker.start()
    started = time.monotonic()
    flow_run_id = trigger(env, worker.folder / "project", DEPLOYMENT, overrides, **parameters)
    state = wait_for_state(env, flow_run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout, (worker,))
    if state != "COMPLETED":
        raise RuntimeError(f"{worker.name}: flow run {flow_run_id} ended {state}\n{tail(worker.log)}")
    return flow_run_id, time.monotonic() - started
