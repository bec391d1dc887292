"""`ner-pipeline run` over several invocations, as a user meets it: `kill -9` mid-run leaves no Prefect server and
no run RUNNING for good, and MLflow holds one run per trained model whatever the number of invocations."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_tiny_config

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).parent / "ner-pipeline")
SERVER_MODULE = "ner_pipeline_flows.server"


def children(pid: int) -> dict[int, str]:
    """Child processes of `pid` and their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = cmdline
    return found


def gone(pid: int) -> bool:
    """True when `pid` no longer runs (exited, or a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def run_statuses(db: Path) -> dict[str, str]:
    """run id -> status, read straight from the SQLite store without creating it."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return dict(conn.execute("select run_uuid, status from runs").fetchall())
    except sqlite3.OperationalError:  # not there yet, or no tables yet
        return {}


def run_tags(db: Path, run_id: str) -> dict[str, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}


def run_cli(tmp_path: Path, config: Path) -> str:
    result = subprocess.run(
        [CLI, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env_for(tmp_path),
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def kill_mid_run(tmp_path: Path, config: Path, db: Path) -> tuple[int, int, str]:
    """Start `run`, `kill -9` it once its MLflow run is open; return (cli pid, server pid, run id)."""
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            [CLI, "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env_for(tmp_path),
            cwd=REPO_ROOT,
        )
    try:
        deadline = time.monotonic() + 600
        while not (running := [r for r, s in run_statuses(db).items() if s == "RUNNING"]):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no MLflow run opened within 600 s"
            time.sleep(0.2)
        [server] = [pid for pid, cmd in children(proc.pid).items() if SERVER_MODULE in cmd]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.pid, server, running[0]


def test_kill_9_leaves_no_server_the_next_run_marks_the_run_killed_and_reruns_add_no_run(
    tmp_path: Path, tiny_base_dir: Path
):
    config = write_tiny_config(tmp_path, tiny_base_dir, export={"enabled": False})
    db = tmp_path / "mlflow.db"

    cli_pid, server_pid, killed = kill_mid_run(tmp_path, config, db)
    deadline = time.monotonic() + 10
    while not gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(server_pid), "the temporary Prefect server outlived the killed run by 10 s"
    assert run_statuses(db)[killed] == "RUNNING"
    assert run_tags(db, killed)["process.pid"] == str(cli_pid)

    out = run_cli(tmp_path, config)
    statuses = run_statuses(db)
    assert statuses.pop(killed) == "KILLED"
    [(model_run, status)] = statuses.items()  # the model (trained by the killed run) now has its finished run
    assert status == "FINISHED"
    assert f"MLflow run `{model_run}`" in out
    experiment = (
        sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        .execute("select experiment_id from runs where run_uuid = ?", (model_run,))
        .fetchone()[0]
    )
    url = f"http://127.0.0.1:5000/#/experiments/{experiment}?workflowType=machine_learning"
    assert f"Runs:       {url}   (run {model_run} holds this model)" in out

    again = run_cli(tmp_path, config)  # everything cached
    assert "| train | cache hit |" in again and "| register | cache hit |" in again
    assert run_statuses(db) == {killed: "KILLED", model_run: "FINISHED"}  # no run for a rerun that computed nothing
    assert f"MLflow run `{model_run}` at `sqlite:///{db}` holds this model (trained earlier)." in again
    assert url in again
