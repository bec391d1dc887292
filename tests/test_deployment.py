"""The real deployment sequence: server, work pool, `prefect deploy`, a worker, `prefect deployment run`.

Everything runs on loopback with a temporary PREFECT_HOME; the project is copied into tmp_path so the flow's
artifacts and MLflow store land there, not in the checkout. Only the processes started here are stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, free_port, wait_for_port, write_tiny_config
from team_stack import PREFECT, prefect, trigger

pytestmark = pytest.mark.slow


@pytest.fixture
def prefect_server(tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    log = tmp_path / "server.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for_port(port, proc, log)
    yield env
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def copy_project(dest: Path) -> Path:
    for name in ("flows", "tasks", "configs", "deployments"):
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def trigger_and_work(env: dict[str, str], project: Path, overrides: list[str]) -> str:
    """Trigger the nightly deployment, let one worker poll pick it up, and return the final state's name."""
    flow_run_id = trigger(env, project, "ner-training/nightly", overrides)
    prefect(env, project, "worker", "start", "--pool", "ner-process", "--run-once", timeout=600)
    code = (
        "import asyncio, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        f"        r = await c.read_flow_run('{flow_run_id}')\n"
        "        print(r.state.name)\n"
        "asyncio.run(main())\n"
    )
    state = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return state.stdout.strip()


def test_deployed_flow_runs_through_a_worker_and_a_second_run_is_served_from_cache(
    prefect_server: dict[str, str], tmp_path: Path, tiny_base_dir: Path
):
    env = prefect_server
    project = copy_project(tmp_path / "project")
    config = write_tiny_config(tmp_path, tiny_base_dir)
    prefect(env, project, "work-pool", "create", "ner-process", "--type", "process")
    out = prefect(env, project, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    assert "ner-training/nightly" in out and "ner-training-conll2003/weekly" in out
    assert deployment_facts(env, "ner-training/nightly") == {"active": [True], "required": []}
    assert deployment_facts(env, "ner-training-conll2003/weekly") == {"active": [True], "required": ["data_path"]}
    # The weekly deployment names no data folder (each machine has its own): a run without one is refused.
    refused = subprocess.run(
        [*PREFECT, "deployment", "run", "ner-training-conll2003/weekly"],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "'data_path' is a required property" in " ".join((refused.stdout + refused.stderr).split())

    # The deployment's config_path parameter is the quickstart; shrink it through overrides to the tiny config.
    overrides = [f"{k}={v}" for k, v in tiny_overrides(config).items()]
    assert trigger_and_work(env, project, overrides) == "Completed"
    artifacts = tmp_path / "artifacts"
    built = {p.parent.parent.name: p for p in artifacts.glob("*/*/manifest.json")}
    assert set(built) == {"ingest", "tokenize", "train", "evaluate", "export", "register"}
    mtimes = {stage: path.stat().st_mtime for stage, path in built.items()}

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1
    # The worker's run logged what this deployment's evaluate artifact measured, and names that artifact.
    evaluated = json.loads(built["evaluate"].read_text())
    assert runs[0].data.tags["artifact.evaluate"] == evaluated["key"]
    assert runs[0].data.metrics["test_f1"] == pytest.approx(evaluated["stats"]["test_f1"])

    assert trigger_and_work(env, project, overrides) == "Completed"
    assert {p.parent.parent.name: p.stat().st_mtime for p in artifacts.glob("*/*/manifest.json")} == mtimes
    # one run per trained model: the all-cached second run adds none
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])] == [
        runs[0].info.run_id
    ]


def deployment_facts(env: dict[str, str], name: str) -> dict[str, list]:
    """Whether each schedule of a deployment is active, and which parameters a run must be given."""
    code = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        f"        d = await c.read_deployment_by_name('{name}')\n"
        "        required = [p for p in d.parameter_openapi_schema.get('required', []) if p not in d.parameters]\n"
        "        print(json.dumps({'active': [s.active for s in d.schedules], 'required': required}))\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def tiny_overrides(config: Path) -> dict[str, object]:
    """The tiny config as dotted overrides of the quickstart (the deployment's own config file)."""
    import yaml

    from ner_pipeline.configfile import flatten

    values = yaml.safe_load(config.read_text())
    values.pop("extends")
    return {
        k: json.dumps(v) if isinstance(v, str | list) else ("null" if v is None else v)
        for k, v in flatten(values).items()
    }
