"""The team set-up end to end, on real servers on loopback (see tests/team_stack.py): PostgreSQL, moto's S3 server,
`mlflow server` (PostgreSQL + S3), `prefect server` (PostgreSQL), two process workers with their own checkouts and
cache folders, the deployment of deployments/team.yaml with configs/team.yaml, and `ner-pipeline serve` in a third
folder. Only the model and the data are shrunk (tiny random model, 300 sentences).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, free_port, wait_for_port, write_tiny_config
from serve_support import wait_ready
from team_stack import (
    DEPLOYMENT,
    TeamStack,
    Worker,
    deploy_team,
    new_worker,
    postgres_missing,
    run_deployment,
    run_summary,
    team_stack,
    trigger,
    wait_for_state,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(postgres_missing() is not None, reason=postgres_missing() or ""),
]

MODEL = "ner-team"  # registry.model_name in configs/team.yaml
STAGES = {"ingest", "tokenize", "train", "evaluate", "export", "register"}


def completed_checkpoints(stack: TeamStack) -> set[tuple[str, int]]:
    """(train key, step) of every complete checkpoint in the shared store."""
    pattern = re.compile(r"train/\.work-([0-9a-f]+)/.*checkpoint-(\d+)/_complete\.json")  # uploaded last
    return {(m.group(1), int(m.group(2))) for key in store_objects(stack) if (m := pattern.fullmatch(key))}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamStack]:
    with team_stack(tmp_path_factory.mktemp("team")) as running:
        yield running


@pytest.fixture(scope="module")
def workers(stack: TeamStack) -> Iterator[tuple[Worker, Worker]]:
    """Workers A and B (not started: a test decides who polls), after the pool and the team deployment exist."""
    deploy_team(stack, REPO_ROOT)
    a, b = new_worker(stack, "worker-a", REPO_ROOT), new_worker(stack, "worker-b", REPO_ROOT)
    yield a, b
    a.stop()
    b.stop()


def tiny_overrides(folder: Path, base_model: Path) -> list[str]:
    """configs/team.yaml shrunk to seconds: the tiny config's model, data and training values; the store and the
    tracking server stay the team config's."""
    import yaml

    from ner_pipeline.configfile import flatten

    values = flatten(yaml.safe_load(write_tiny_config(folder, base_model).read_text()))
    kept = {k: v for k, v in values.items() if k.split(".")[0] in {"data", "model", "tokenize", "train", "export"}}
    kept |= {"evaluate.bootstrap_samples": 20, "registry.min_first_metric": 0.0}
    return [f"{k}={json.dumps(v)}" for k, v in kept.items()]


PREFIX = "artifacts/"  # configs/team.yaml: artifacts_root s3://ner-pipeline/artifacts (the stack's bucket)


def store_objects(stack: TeamStack) -> dict[str, int]:
    """Every object of the shared artifact store: key below the root → size."""
    return {key.removeprefix(PREFIX): size for key, size in stack.s3.keys(PREFIX).items()}


def read_store_json(stack: TeamStack, relative: str) -> dict:
    return json.loads(stack.s3.client().get_object(Bucket=stack.s3.bucket, Key=PREFIX + relative)["Body"].read())


def model_versions(stack: TeamStack) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)  # whatever was set before
    return sorted(v.version for v in client.search_model_versions(f"name='{MODEL}'"))


def test_worker_b_reuses_worker_a_artifacts_from_s3_and_a_third_folder_serves_the_model(
    stack: TeamStack, workers: tuple[Worker, Worker], tiny_base_dir: Path, tmp_path: Path
):
    a, b = workers
    env = stack.client_env()
    overrides = tiny_overrides(tmp_path, tiny_base_dir)

    first, _ = run_deployment(a, stack, overrides)
    a.stop()
    assert run_summary(env, first) == dict.fromkeys(STAGES, "computed")
    built = store_objects(stack)
    assert {key.split("/")[0] for key in built if key.endswith("/manifest.json")} >= STAGES
    versions = model_versions(stack)
    assert len(versions) == 1
    # Nothing of worker B's is on disk yet: whatever it reuses must come from S3.
    assert not b.cache_home.exists() or not any(b.cache_home.rglob("*"))

    second, _ = run_deployment(b, stack, overrides)
    b.stop()
    assert run_summary(env, second) == dict.fromkeys(STAGES, "cache hit")
    # ...and it fetched only manifests: no artifact file reached its local cache (cache.local_dir's default, made
    # when a stage first reads a file).
    local = b.cache_home / "ner-pipeline" / "artifacts"
    assert not [p for p in local.rglob("*") if p.is_file() and p.stat().st_size and p.name != "manifest.json"]
    assert model_versions(stack) == versions, "worker B's all-cached run registered another version"
    assert store_objects(stack) == built, "worker B's all-cached run wrote to the artifact store"

    served = serve_and_predict(stack, tmp_path / "third", ["Angela Merkel visited Paris"])
    info, answer = served["info"], served["answer"]
    assert (info["name"], info["version"], info["alias"]) == (MODEL, versions[0], "production")
    assert answer["model"] == f"{MODEL}/{versions[0]}"
    assert len(answer["entities"]) == 1 and isinstance(answer["entities"][0], list)


def serve_and_predict(stack: TeamStack, folder: Path, texts: list[str]) -> dict:
    """`ner-pipeline serve` of models:/ner-team@production from an empty folder; /model and /predict over HTTP."""
    folder.mkdir()
    port = free_port()
    env = {**stack.client_env(), "XDG_CACHE_HOME": str(folder / "cache"), "HOME": str(folder)}
    log = folder / "serve.log"
    cmd = [str(Path(sys.executable).parent / "ner-pipeline"), "serve", "--model", f"models:/{MODEL}@production"]
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, proc, log, timeout=180)
        base = f"http://127.0.0.1:{port}"
        wait_ready(lambda path: httpx.get(base + path, timeout=5), timeout=180)
        model = httpx.get(f"{base}/model", timeout=30).json()
        answer = httpx.post(f"{base}/predict", json={"texts": texts}, timeout=60)
        assert answer.status_code == 200, answer.text
        return {"info": model, "answer": answer.json()}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_a_run_killed_during_training_on_worker_a_is_resumed_by_worker_b_from_the_uploaded_checkpoint(
    stack: TeamStack, workers: tuple[Worker, Worker], tiny_base_dir: Path, tmp_path: Path
):
    a, b = workers
    env = stack.client_env()
    # Another seed: a train key no run has built. Enough steps to be killed between two checkpoints.
    overrides = [*tiny_overrides(tmp_path, tiny_base_dir), "train.seed=7", "train.max_steps=80", "train.save_steps=10"]
    a.start()
    flow_run_id = trigger(env, a.folder / "project", DEPLOYMENT, overrides)
    wait_for_checkpoint(stack, a, timeout=240)
    assert a.kill_flow_run(flow_run_id), f"no process of worker A runs flow run {flow_run_id}"
    assert wait_for_state(env, flow_run_id, {"CRASHED", "FAILED"}, 60, (a,)) in {"CRASHED", "FAILED"}
    a.stop()
    checkpoints = completed_checkpoints(stack)
    uploaded, killed_keys = {step for _, step in checkpoints}, {key for key, _ in checkpoints}
    assert uploaded, "the kill left no checkpoint in the store"

    resumed, _ = run_deployment(b, stack, overrides)
    b.stop()
    assert run_summary(env, resumed)["train"] == "computed"
    # The train artifact B published records where its Trainer started: a checkpoint A uploaded before the kill.
    manifests = [
        read_store_json(stack, k) for k in store_objects(stack) if re.fullmatch(r"train/[^/]+/manifest.json", k)
    ]
    resumed_from = [m["stats"].get("resumed_from_step", 0) for m in manifests if m["key"] in killed_keys]
    assert resumed_from and resumed_from[0] in uploaded, f"B resumed from {resumed_from}, A uploaded {uploaded}"
    # ...and says so in the flow run's output (the library's INFO lines reach a worker's flow run).
    assert f"(step {resumed_from[0]})" in b.log.read_text(), b.log.read_text()[-4000:]


def wait_for_checkpoint(stack: TeamStack, worker: Worker, timeout: float) -> None:
    """Wait until a complete training checkpoint is in the shared store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if completed_checkpoints(stack):
            return
        if worker.proc is not None and worker.proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"no checkpoint reached the store within {timeout} s\n{worker.log.read_text()[-4000:]}")
