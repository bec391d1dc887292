"""The register stage against real MLflow stores: a cached registration is used only when the registry confirms
it, registering is idempotent across crashes and concurrent runs, and registry-reading commands refuse a store
that is not there or not the one the registrations came from."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from test_registry import mlflow_server  # noqa: F401 - the fixture: a real `mlflow server` on loopback

from ner_pipeline import registry, tracking
from ner_pipeline.artifacts import Artifact, ArtifactStore
from ner_pipeline.config import PipelineConfig, RegistryConfig
from ner_pipeline.errors import RegistryError
from ner_pipeline.registry.register import REGISTER_TAG
from ner_pipeline.transient import is_transient

NAME = "ner-lineage"
CFG = RegistryConfig(model_name=NAME)
EVALUATION = {"test_f1": 0.61, "test_f1_strict": 0.58, "test_f1_PER": 0.7, "test_f1_LOC": 0.5}


def build_upstream(root: Path, model_dir: Path) -> tuple[ArtifactStore, dict[str, Artifact]]:
    """Ingest, train and evaluate artifacts as the register stage reads them, without training anything."""
    store = ArtifactStore(root)

    def train(folder: Path) -> dict:
        shutil.copytree(model_dir, folder / "model")
        return {}

    upstream = {
        "ingest": store.build("ingest", "i" * 20, lambda f: {"fingerprint": "fp", "test_fingerprint": "fp-test"}),
        "train": store.build("train", "t" * 20, train),
        "evaluate": store.build("evaluate", "e" * 20, lambda f: dict(EVALUATION)),
    }
    return store, upstream


def open_run(uri: str, tmp_path: Path) -> str:
    """A pipeline's MLflow run, its artifacts under tmp_path."""
    config = PipelineConfig.model_validate(
        {"name": "lineage", "tracking": {"tracking_uri": uri, "artifact_location": str(tmp_path / "mlartifacts")}}
    )
    return tracking.start_run(config, uri).run_id


def versions(uri: str) -> list:
    return registry.client_for(uri).search_model_versions(f"name = '{NAME}'")


def aliases(uri: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in registry.client_for(uri).get_registered_model(NAME).aliases.items()}


@pytest.fixture
def lineage(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    return build_upstream(tmp_path / "artifacts", tiny_model_dir)


def register(store: ArtifactStore, upstream: dict[str, Artifact], uri: str, tmp_path: Path) -> Artifact:
    return registry.run_register(CFG, upstream, store, uri, open_run(uri, tmp_path))


REGISTER_SCRIPT = """
import json, os, sys
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import RegistryConfig
from ner_pipeline.registry import run_register

root, uri, keys, name, mode = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
if mode == "kill-after-create":
    create = SqlAlchemyStore.create_model_version

    def create_then_die(self, *args, **kwargs):
        version = create(self, *args, **kwargs)
        print("created version", version.version, flush=True)
        os._exit(9)  # killed after the version exists and before its record is written

    SqlAlchemyStore.create_model_version = create_then_die
store = ArtifactStore(root)
upstream = {stage: store.require(stage, key) for stage, key in keys.items()}
print(json.dumps(run_register(RegistryConfig(model_name=name), upstream, store, uri, None).stats))
"""


def register_in_another_process(
    store: ArtifactStore, upstream: dict[str, Artifact], uri: str, mode: str = "normal"
) -> subprocess.CompletedProcess[str]:
    """An earlier pipeline run: a process of its own, so this one holds no connection to its store."""
    keys = json.dumps({stage: a.key for stage, a in upstream.items()})
    return subprocess.run(
        [sys.executable, "-c", REGISTER_SCRIPT, str(store.root), uri, keys, NAME, mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path.cwd(),
    )


@pytest.mark.slow
def test_registration_cached_for_a_deleted_store_is_registered_again(
    lineage, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    store, upstream = lineage
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    earlier = register_in_another_process(store, upstream, uri)
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    first = store.require("register", registry.register_key(CFG, {s: a.key for s, a in upstream.items()}, uri))
    assert first.stats == json.loads(earlier.stdout.splitlines()[-1]) and first.stats["version"] == "1"

    (tmp_path / "mlflow.db").unlink()  # the user removes mlruns/ but keeps artifacts/
    # and the fresh store's version 1 is someone else's model
    client = registry.client_for(uri)
    client.create_registered_model(NAME)
    client.create_model_version(NAME, source=str(tmp_path), tags={"note": "not ours"})

    with caplog.at_level(logging.WARNING, logger="ner_pipeline.registry.register"):
        second = register(store, upstream, uri, tmp_path)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and "carries register key" in r.getMessage()]
    assert f"{NAME} version 1 carries register key (none), not {first.key}" in warning.getMessage()
    assert second.key == first.key and not second.cached and second.stats["version"] == "2"
    on_disk = json.loads((second.path / "registration.json").read_text())
    assert on_disk["version"] == "2" and on_disk["run_id"] == second.stats["run_id"] != first.stats["run_id"]
    listed = [(r["version"], r["aliases"]) for r in registry.list_versions(uri, NAME)]
    assert listed == [("2", "challenger"), ("1", "")]
    assert versions(uri)[0].tags[REGISTER_TAG] == first.key

    third = register(store, upstream, uri, tmp_path)  # confirmed now: a plain cache hit
    assert third.cached and third.stats == second.stats and len(versions(uri)) == 2


@pytest.mark.slow
def test_registration_whose_version_was_deleted_on_a_tracking_server_is_registered_again(
    lineage,
    mlflow_server: str,  # noqa: F811 - the fixture imported from test_registry
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):
    store, upstream = lineage
    first = register(store, upstream, mlflow_server, tmp_path)
    registry.client_for(mlflow_server).delete_model_version(NAME, first.stats["version"])  # as in the MLflow UI

    with caplog.at_level(logging.WARNING, logger="ner_pipeline.registry.register"):
        second = register(store, upstream, mlflow_server, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{NAME} version 1 does not exist in the registry" in w for w in warnings), warnings
    assert second.stats["version"] == "2" and not second.cached
    assert [(r["version"], r["aliases"]) for r in registry.list_versions(mlflow_server, NAME)] == [("2", "challenger")]


@pytest.mark.slow
def test_relative_and_absolute_sqlite_uris_to_one_store_register_once(lineage, tmp_path: Path):
    store, upstream = lineage
    relative, absolute = "sqlite:///mlflow.db", f"sqlite:///{tmp_path.resolve()}/mlflow.db"  # cwd is tmp_path
    keys = {stage: a.key for stage, a in upstream.items()}
    assert registry.register_key(CFG, keys, relative) == registry.register_key(CFG, keys, absolute)

    first = registry.run_register(CFG, upstream, store, relative, None)
    again = registry.run_register(CFG, upstream, store, absolute, None)
    assert again.cached and again.stats["version"] == first.stats["version"] == "1"
    assert len(versions(absolute)) == 1


def test_canonical_uri_spells_one_store_one_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    absolute = f"sqlite:///{tmp_path.resolve()}/real/mlflow.db"
    assert registry.canonical_uri("sqlite:///real/mlflow.db") == absolute
    assert registry.canonical_uri("sqlite:///./link/../real/mlflow.db") == absolute
    assert registry.canonical_uri("sqlite:///link/mlflow.db") == absolute
    assert registry.canonical_uri(absolute) == absolute
    assert registry.canonical_uri("HTTP://MLflow.Example.com:80/") == "http://mlflow.example.com"
    assert registry.canonical_uri("https://user@host:8443/mlflow/") == "https://user@host:8443/mlflow"
    assert registry.canonical_uri("http://127.0.0.1:5000") != registry.canonical_uri("http://127.0.0.1:5001")
    assert registry.canonical_uri("databricks") == "databricks"


@pytest.mark.slow
def test_register_killed_after_creating_the_version_then_rerun_leaves_one_version(lineage, tmp_path: Path):
    store, upstream = lineage
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    killed = register_in_another_process(store, upstream, uri, "kill-after-create")
    assert killed.returncode == 9, killed.stderr[-3000:]
    assert "created version 1" in killed.stdout
    key = registry.register_key(CFG, {stage: a.key for stage, a in upstream.items()}, uri)
    assert store.get("register", key) is None and len(versions(uri)) == 1  # created, but no record

    rerun = registry.run_register(CFG, upstream, store, uri, open_run(uri, tmp_path))
    [only] = versions(uri)
    assert str(only.version) == "1" and only.tags[REGISTER_TAG] == key
    assert rerun.stats["version"] == "1" and rerun.stats["run_id"] == only.run_id  # the killed run's version
    assert aliases(uri) == {"challenger": "1"}


@pytest.mark.slow
def test_a_concurrent_registration_of_the_same_key_wins_and_ours_is_withdrawn(
    lineage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ner_pipeline.registry import register as register_module

    store, upstream = lineage
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    key = registry.register_key(CFG, {stage: a.key for stage, a in upstream.items()}, uri)
    real = register_module._log_and_create_version

    def other_run_registers_first(name, artifacts, tracking_uri, run_id, tags):
        # Another run passed its look-up at the same moment as ours and creates its version first.
        client = registry.client_for(tracking_uri)
        client.create_registered_model(name)
        client.create_model_version(name, source=str(tmp_path), tags={REGISTER_TAG: key})
        return real(name, artifacts, tracking_uri, run_id, tags)

    monkeypatch.setattr(register_module, "_log_and_create_version", other_run_registers_first)
    record = registry.run_register(CFG, upstream, store, uri, None)
    [only] = versions(uri)
    assert str(only.version) == "1" and record.stats["version"] == "1"
    assert aliases(uri) == {"challenger": "1"}


def fake_record(store: ArtifactStore, key: str, version: str = "1") -> Artifact:
    """A register artifact as run_register leaves it, for a registration made elsewhere."""
    return store.build("register", key, lambda f: {"name": NAME, "version": version, "run_id": "r", "model_uri": "m"})


def test_reading_a_mistyped_sqlite_store_is_an_error_and_creates_nothing(tmp_path: Path):
    missing = tmp_path / "mlruns" / "mlfow.db"
    uri = f"sqlite:///{missing}"
    record = fake_record(ArtifactStore(tmp_path / "artifacts"), "k" * 20)
    calls = {
        "protected keys": lambda: registry.protected_artifact_keys(uri, [record]),
        "list": lambda: registry.list_versions(uri),
        "compare": lambda: registry.compare(uri, ["a", "b"]),
        "fetch": lambda: registry.fetch_model(f"models:/{NAME}@production", uri),
        "resolve": lambda: registry.resolve_version(uri, f"models:/{NAME}/1"),
    }
    for what, call in calls.items():
        with pytest.raises(RegistryError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"no MLflow store at {missing} "), what
        assert "tracking.tracking_uri" in message and "\n" not in message, what
    assert not missing.parent.exists()


def test_prune_protection_refuses_a_registry_holding_none_of_our_registrations(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry.client_for(uri)
    client.create_registered_model(NAME)
    client.create_model_version(NAME, source=str(tmp_path), tags={REGISTER_TAG: "b" * 20, "artifact.train": "t1"})
    store = ArtifactStore(tmp_path / "artifacts")
    ours = fake_record(store, "a" * 20)
    with pytest.raises(RegistryError, match=r"holds none of the 1 version\(s\) registered from here"):
        registry.protected_artifact_keys(uri, registry.register_records(store))

    client.create_model_version(NAME, source=str(tmp_path), tags={REGISTER_TAG: ours.key, "artifact.train": "t2"})
    protected = registry.protected_artifact_keys(uri, registry.register_records(store))
    assert protected == {"b" * 20, "t1", ours.key, "t2"}
    assert registry.protected_artifact_keys(uri, []) == protected  # nothing registered from here: no claim to check


def test_an_unreachable_tracking_server_fails_in_seconds_with_one_line(tmp_path: Path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    record = fake_record(ArtifactStore(tmp_path / "artifacts"), "k" * 20)
    for call in (lambda: registry.list_versions(uri, NAME), lambda: registry.protected_artifact_keys(uri, [record])):
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            call()
        assert time.monotonic() - started < 15
        assert str(caught.value).startswith(f"cannot reach the MLflow tracking server at {uri} (connection refused)")
        assert "\n" not in str(caught.value) and is_transient(caught.value)


@pytest.mark.slow
def test_a_tracking_server_that_accepts_but_never_answers_fails_in_seconds(tmp_path: Path):
    with socket.socket() as silent:  # the kernel accepts connections into the backlog; nobody ever reads them
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(RegistryError, match="no answer within 10 s"):
            registry.list_versions(uri)
        assert time.monotonic() - started < 15
