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
    TeamStack,
    Worker,
    make_worker,
    postgres_missing,
    prefect,
    run_summary,
    team_stack,
    trigger,
    wait_for_state,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(postgres_missing() is not None, reason=postgres_missing() or ""),
]

POOL = "ner-team"
DEPLOYMENT = "ner-training/team-nightly"
MODEL = "ner-team"  # registry.model_name in configs/team.yaml
STAGES = {"ingest", "tokenize", "train", "evaluate", "export", "register"}
PROJECT_FILES = ["flows", "tasks", "configs", "deployments", "pyproject.toml"]


# A complete checkpoint of the train stage in the store (the key it trains, the step): on S3 `_complete.json` is
# uploaded after the checkpoint's files, in a local store the Trainer writes trainer_state.json last.
def completed_checkpoints(stack: TeamStack) -> set[tuple[str, int]]:
    """(train key, step) of every complete checkpoint in the shared store."""
    done = "_complete" if artifacts_root(stack).startswith("s3:") else "trainer_state"
    pattern = re.compile(rf"train/\.work-([0-9a-f]+)/.*checkpoint-(\d+)/{done}\.json")
    return {(m.group(1), int(m.group(2))) for key in store_objects(stack) if (m := pattern.fullmatch(key))}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamStack]:
    with team_stack(tmp_path_factory.mktemp("team")) as running:
        yield running


@pytest.fixture(scope="module")
def workers(stack: TeamStack, tiny_base_dir: Path) -> Iterator[tuple[Worker, Worker]]:
    """Workers A and B (not started), the pool and the deployment created from worker A's checkout."""
    env = stack.client_env()
    a, b = (
        make_worker(name, stack.folder, POOL, env, [REPO_ROOT / f for f in PROJECT_FILES])
        for name in ("worker-a", "worker-b")
    )
    prefect(env, a.folder / "project", "work-pool", "create", POOL, "--type", "process")
    # Deployed from a shell where NER_PIPELINE_HOME is not set: the pull step keeps its placeholder for the workers.
    deploy_env = {k: v for k, v in env.items() if k != "NER_PIPELINE_HOME"}
    out = prefect(deploy_env, a.folder / "project", "--no-prompt", "deploy", "--all", "--prefect-file",
                  "deployments/team.yaml")  # fmt: skip
    assert DEPLOYMENT in out
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
    if SHARED_ROOT:
        kept["artifacts_root"] = SHARED_ROOT
    return [f"{k}={json.dumps(v)}" for k, v in kept.items()]


# configs/team.yaml's store. Until the S3 store lands, a local folder both workers share stands in for it.
SHARED_ROOT = os.environ.get("NER_TEST_TEAM_ROOT")


def artifacts_root(stack: TeamStack) -> str:
    return SHARED_ROOT or "s3://ner-pipeline/artifacts"


def s3_options(stack: TeamStack, root: str) -> dict[str, str]:
    """This test process reads the store with the same fake keys the workers get from their environment."""
    if not root.startswith("s3:"):
        return {}
    env = stack.s3.env
    return {"endpoint_url": stack.s3.endpoint, "key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"]}


def store_objects(stack: TeamStack) -> dict[str, int]:
    """Every file of the shared artifact store: path relative to the root → size."""
    import fsspec

    root = artifacts_root(stack)
    fs, path = fsspec.core.url_to_fs(root, **s3_options(stack, root))
    return {name[len(path.rstrip("/")) + 1 :]: info["size"] for name, info in fs.find(path, detail=True).items()}


def read_store_json(stack: TeamStack, relative: str) -> dict:
    import fsspec

    root = artifacts_root(stack)
    with fsspec.open(f"{root.rstrip('/')}/{relative}", "r", **s3_options(stack, root)) as handle:
        return json.load(handle)


def model_versions(stack: TeamStack) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    return sorted(v.version for v in client.search_model_versions(f"name='{MODEL}'"))


def run_on(worker: Worker, stack: TeamStack, overrides: list[str], timeout: float = 300) -> str:
    """Trigger the team deployment and let `worker` (the only one polling) run it to the end; return the run id."""
    env = stack.client_env()
    worker.start()
    flow_run_id = trigger(env, worker.folder / "project", DEPLOYMENT, overrides)
    state = wait_for_state(env, flow_run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout, (worker,))
    assert state == "COMPLETED", f"{worker.name}: {state}\n{worker.log.read_text()[-4000:]}"
    return flow_run_id


def test_worker_b_reuses_worker_a_artifacts_from_s3_and_a_third_folder_serves_the_model(
    stack: TeamStack, workers: tuple[Worker, Worker], tiny_base_dir: Path, tmp_path: Path
):
    a, b = workers
    env = stack.client_env()
    overrides = tiny_overrides(tmp_path, tiny_base_dir)

    started = time.monotonic()
    first = run_on(a, stack, overrides)
    a.stop()
    seconds_a = time.monotonic() - started
    assert run_summary(env, first) == dict.fromkeys(STAGES, "computed")
    built = store_objects(stack)
    assert {key.split("/")[0] for key in built if key.endswith("/manifest.json")} >= STAGES
    versions = model_versions(stack)
    assert len(versions) == 1
    # Nothing of worker B's is on disk yet: whatever it reuses must come from S3.
    assert not b.cache_home.exists() or not any(b.cache_home.rglob("*"))

    started = time.monotonic()
    second = run_on(b, stack, overrides)
    b.stop()
    seconds_b = time.monotonic() - started
    assert run_summary(env, second) == dict.fromkeys(STAGES, "cache hit")
    # ...and it fetched only manifests: no artifact file reached its local cache.
    assert not [p for p in b.cache_home.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".onnx", ".arrow"}]
    assert model_versions(stack) == versions, "worker B's all-cached run registered another version"
    assert store_objects(stack) == built, "worker B's all-cached run wrote to the artifact store"
    print(f"worker A full run {seconds_a:.1f} s, worker B cached run {seconds_b:.1f} s")

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
    pids = a.flow_run_pids(flow_run_id)
    assert pids, f"no process of worker A runs flow run {flow_run_id}"
    for pid in pids:
        os.killpg(os.getpgid(pid), signal.SIGKILL) if os.getpgid(pid) != a.proc.pid else os.kill(pid, signal.SIGKILL)
    assert wait_for_state(env, flow_run_id, {"CRASHED", "FAILED"}, 60, (a,)) in {"CRASHED", "FAILED"}
    a.stop()
    checkpoints = completed_checkpoints(stack)
    uploaded, killed_keys = {step for _, step in checkpoints}, {key for key, _ in checkpoints}
    assert uploaded, "the kill left no checkpoint in the store"

    resumed = run_on(b, stack, overrides)
    b.stop()
    assert run_summary(env, resumed)["train"] == "computed"
    # The train artifact B published records where its Trainer started: a checkpoint A uploaded before the kill.
    manifests = [
        read_store_json(stack, k) for k in store_objects(stack) if re.fullmatch(r"train/[^/]+/manifest.json", k)
    ]
    resumed_from = [m["stats"].get("resumed_from_step", 0) for m in manifests if m["key"] in killed_keys]
    assert resumed_from and resumed_from[0] in uploaded, f"B resumed from {resumed_from}, A uploaded {uploaded}"


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
