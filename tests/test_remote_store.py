"""The artifact store on object storage, against moto's S3 server on loopback: publishing with a conditional put,
lookups that read only manifests, verified local copies in a bounded cache, the CLI, and training resumed by
another worker from a published checkpoint."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import free_port
from mlflow import MlflowClient

from ner_pipeline import pipeline
from ner_pipeline.artifacts import ArtifactStore, artifact_key
from ner_pipeline.config import PipelineConfig, load_config
from ner_pipeline.errors import ArtifactError, ConfigError
from ner_pipeline.localcache import GB
from ner_pipeline.remote import RemoteArtifactStore

BUCKET_COUNT = iter(range(1_000_000))


class RequestLog(logging.Handler):
    """The S3 requests moto's server answered (werkzeug logs one line per request)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def object_gets(self, bucket: str) -> list[str]:
        """Keys of the objects read (GET of an object, not a listing)."""
        found = []
        for line in self.lines:
            if f'"GET /{bucket}/' in line:
                target = line.split('"GET ', 1)[1].split(" ", 1)[0]
                if "?" not in target:
                    found.append(target.removeprefix(f"/{bucket}/"))
        return found


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """A fresh bucket; the endpoint and fake credentials only in the environment, as a worker gets them."""
    import s3fs

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"bucket-{next(BUCKET_COUNT)}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    requests = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)
    yield bucket, requests
    werkzeug.removeHandler(requests)


def config_for(root: str, local: Path, **cache: object) -> PipelineConfig:
    return PipelineConfig(artifacts_root=root, cache={"local_dir": str(local), **cache})


def write_value(value: str, size: int = 0):
    def producer(folder: Path) -> dict:
        (folder / "value.txt").write_text(value)
        (folder / "sub").mkdir()
        (folder / "sub" / "pad.bin").write_bytes(b"x" * size)
        return {"value": value}

    return producer


def keys_below(bucket: str, prefix: str = "") -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_a_path_root_is_the_local_store_and_a_url_is_not_resolved_against_the_project(tmp_path: Path, s3):
    bucket, _ = s3
    (tmp_path / "pyproject.toml").write_text("")
    config_file = tmp_path / "configs" / "team.yaml"
    config_file.parent.mkdir()
    config_file.write_text(yaml.safe_dump({"artifacts_root": f"s3://{bucket}/cache/"}))
    remote = load_config(config_file)
    assert remote.artifacts_root == f"s3://{bucket}/cache"  # as written, not made a path under the project
    store = pipeline.open_store(remote)
    assert isinstance(store, RemoteArtifactStore) and store.root == f"s3://{bucket}/cache"
    local = pipeline.open_store(load_config(config_file, ["artifacts_root=artifacts"]))
    assert type(local) is ArtifactStore and local.root == tmp_path / "artifacts"


def test_credentials_in_config_are_refused_in_one_line_that_does_not_repeat_them(tmp_path: Path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump({"artifacts_root": "s3://AKIDEXAMPLE:hunter2@bucket/cache"}))
    with pytest.raises(ConfigError) as url_error:
        load_config(config_file)
    assert "artifacts_root: credentials do not belong in the URL" in str(url_error.value)
    assert "hunter2" not in str(url_error.value) and "\n" not in str(url_error.value)
    config_file.write_text(yaml.safe_dump({"cache": {"storage_options": {"client_kwargs": {"secret": "hunter2"}}}}))
    with pytest.raises(ConfigError) as option_error:
        load_config(config_file)
    assert "cache.storage_options: client_kwargs.secret: credentials do not belong" in str(option_error.value)
    assert "hunter2" not in str(option_error.value)


def test_a_build_uploads_its_files_then_the_manifest_and_a_lookup_reads_only_the_manifest(tmp_path: Path, s3):
    bucket, requests = s3
    root = f"s3://{bucket}/team"
    worker_a = pipeline.open_store(config_for(root, tmp_path / "a"))
    built = worker_a.build("tokenize", "k1", write_value("hello", 5000), inputs={"ingest": "i0"})
    assert not built.cached and built.location == f"{root}/tokenize/k1"
    upload = built.manifest["upload"]
    assert keys_below(bucket) == sorted(
        ["team/tokenize/k1/manifest.json", *(f"team/tokenize/k1/{upload}/{f}" for f in ("sub/pad.bin", "value.txt"))]
    )
    # The builder keeps what it built as its local copy: reading it downloads nothing.
    requests.lines.clear()
    assert (built.path / "value.txt").read_text() == "hello"
    assert requests.object_gets(bucket) == []

    worker_b = pipeline.open_store(config_for(root, tmp_path / "b"))
    requests.lines.clear()
    found = worker_b.build("tokenize", "k1", write_value("never built"))
    assert found.cached and found.stats == {"value": "hello"} and found.inputs == {"ingest": "i0"}
    assert requests.object_gets(bucket) == ["team/tokenize/k1/manifest.json"]
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").rglob("value.txt"))

    assert (found.path / "value.txt").read_text() == "hello"  # first read: downloaded and verified
    assert sorted(requests.object_gets(bucket)[1:]) == [
        f"team/tokenize/k1/{upload}/{f}" for f in ("sub/pad.bin", "value.txt")
    ]
    requests.lines.clear()
    assert (found.path / "sub" / "pad.bin").stat().st_size == 5000
    assert requests.object_gets(bucket) == []


def test_two_workers_building_one_key_at_once_end_with_one_artifact(tmp_path: Path, s3, caplog):
    bucket, _ = s3
    root = f"s3://{bucket}/team"
    both_building = threading.Barrier(2)
    results = {}

    def work(name: str) -> None:
        store = pipeline.open_store(config_for(root, tmp_path / name))  # no local lock shared: only S3 decides

        def producer(folder: Path) -> dict:
            both_building.wait(timeout=30)
            (folder / "who.txt").write_text(name)
            return {"who": name}

        results[name] = store.build("train", key, producer)

    key = artifact_key("train", "1", {})  # computed first: ast.parse (code fingerprints) is not thread-safe
    caplog.set_level(logging.INFO, logger="ner_pipeline.remote")
    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    a, b = results["a"], results["b"]
    assert a.created == b.created and a.manifest == b.manifest
    winner = a.stats["who"]
    assert {a.cached, b.cached} == {False, True}
    assert "published first by another worker" in caplog.text
    upload = a.manifest["upload"]
    assert keys_below(bucket) == sorted([f"team/train/{key}/manifest.json", f"team/train/{key}/{upload}/who.txt"])
    assert (results["b"].path / "who.txt").read_text() == winner == (results["a"].path / "who.txt").read_text()


def test_a_damaged_remote_file_is_named_and_rebuilt(tmp_path: Path, s3, caplog):
    bucket, _ = s3
    root = f"s3://{bucket}/team"
    built = pipeline.open_store(config_for(root, tmp_path / "a")).build("evaluate", "k", write_value("good", 100))
    key = f"team/evaluate/k/{built.manifest['upload']}/sub/pad.bin"
    client = boto3.client("s3")

    client.put_object(Bucket=bucket, Key=key, Body=b"y" * 10)  # truncated: a lookup's listing sees it
    fresh = pipeline.open_store(config_for(root, tmp_path / "b"))
    with caplog.at_level(logging.WARNING, logger="ner_pipeline.artifacts"):
        assert fresh.get("evaluate", "k") is None
    assert f"s3://{bucket}/{key}: 10 bytes, the manifest says 100" in caplog.text
    assert keys_below(bucket) == [], "the damaged artifact is removed so the next build makes a new one"
    rebuilt = fresh.build("evaluate", "k", write_value("good", 100))
    assert not rebuilt.cached

    same_size = f"team/evaluate/k/{rebuilt.manifest['upload']}/sub/pad.bin"
    client.put_object(Bucket=bucket, Key=same_size, Body=b"z" * 100)  # same size: caught on download
    third = pipeline.open_store(config_for(root, tmp_path / "c")).get("evaluate", "k")
    assert third is not None
    with pytest.raises(ArtifactError) as damaged:
        _ = third.path
    message = str(damaged.value)
    assert message.startswith(f"s3://{bucket}/{same_size}: sha256 differs from the manifest")
    assert "run again to rebuild it" in message and "\n" not in message
    assert keys_below(bucket, "team/evaluate/k/manifest.json") == []


MATERIALISE = """
import sys
from ner_pipeline import pipeline
from ner_pipeline.config import PipelineConfig
store = pipeline.open_store(PipelineConfig.model_validate_json(sys.argv[1]))
for key in sys.argv[2:]:
    store.get("ingest", key).path
"""


def test_the_local_cache_evicts_least_recently_used_copies_but_not_those_in_use(tmp_path: Path, s3):
    bucket, _ = s3
    root = f"s3://{bucket}/team"
    for key in ("k1", "k2", "k3"):
        pipeline.open_store(config_for(root, tmp_path / "builder")).build("ingest", key, write_value(key, 4000))
    # room for two copies of ~5 KB (4 KB of padding, the value, the manifest), not three
    cfg = config_for(root, tmp_path / "worker", local_max_gb=12_000 / GB)
    subprocess.run([sys.executable, "-c", MATERIALISE, cfg.model_dump_json(), "k1", "k2"], check=True, timeout=120)
    store = pipeline.open_store(cfg)
    copies = store.copies.folder / "ingest"  # type: ignore[attr-defined]
    assert sorted(p.name for p in copies.iterdir() if not p.name.startswith(".")) == ["k1", "k2"]
    in_use = store.get("ingest", "k3").path  # over the bound: the oldest copy nobody uses goes
    assert sorted(p.name for p in copies.iterdir() if not p.name.startswith(".")) == ["k2", "k3"]
    store.copies.evict()  # type: ignore[attr-defined]
    assert (in_use / "value.txt").read_text() == "k3"


def invoke_cli(args: list[str]):
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return CliRunner().invoke(app, args)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_artifacts_list_verify_and_prune_work_on_an_s3_root(tmp_path: Path, s3):
    bucket, requests = s3
    root = f"s3://{bucket}/team"
    config_file = tmp_path / "team.yaml"
    settings = {
        "artifacts_root": root,
        "cache": {"local_dir": str(tmp_path / "local"), "upload_grace_hours": 0},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    config_file.write_text(yaml.safe_dump(settings))
    MlflowClient(tracking_uri=settings["tracking"]["tracking_uri"]).search_experiments()  # an empty registry
    store = pipeline.open_store(load_config(config_file))
    for value in ("one", "two", "three"):
        store.build("ingest", f"key-{value}", write_value(value, 2048))
    boto3.client("s3").put_object(Bucket=bucket, Key="team/ingest/key-one/20200101T000000Z-dead0000/x", Body=b"1")
    boto3.client("s3").put_object(Bucket=bucket, Key="team/train/.work-gone/checkpoint-5/x", Body=b"1")
    requests.lines.clear()

    listed = invoke_cli(["artifacts", "list", "--config", str(config_file)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("ingest") == 3 and "2.0 KB" in listed.output
    assert all(k.endswith("manifest.json") for k in requests.object_gets(bucket)), "list downloads no files"

    verified = invoke_cli(["artifacts", "verify", "--config", str(config_file)])
    assert verified.exit_code == 0 and "3 intact, 0 damaged" in verified.output
    two = store.get("ingest", "key-two")
    damaged_key = f"team/ingest/key-two/{two.manifest['upload']}/value.txt"
    boto3.client("s3").put_object(Bucket=bucket, Key=damaged_key, Body=b"TWO")  # same size, other bytes
    verified = invoke_cli(["artifacts", "verify", "--config", str(config_file)])
    assert verified.exit_code == 1
    assert f"damaged ingest/key-two: s3://{bucket}/{damaged_key}: sha256 differs" in verified.output

    pruned = invoke_cli(["artifacts", "prune", "--keep-last", "1", "--config", str(config_file)])
    assert pruned.exit_code == 0, pruned.output
    assert "removed ingest/key-one" in pruned.output and "removed ingest/key-two" in pruned.output
    three = store.get("ingest", "key-three")
    upload = three.manifest["upload"]
    assert keys_below(bucket) == sorted(
        [
            "team/ingest/key-three/manifest.json",
            *(f"team/ingest/key-three/{upload}/{f}" for f in ("sub/pad.bin", "value.txt")),
        ]
    ), "pruned artifacts, the abandoned upload and the abandoned work prefix are gone"


# --- whole runs (train the tiny model) ---------------------------------------------------------------------


def tiny_remote_config(tmp_path: Path, root: str, local: str, base: Path, **train: object) -> PipelineConfig:
    return PipelineConfig(
        artifacts_root=root,
        cache={"local_dir": str(tmp_path / local)},
        data={"source": "wnut16", "path": None, "max_sentences": 120},
        model={"name_or_path": str(base)},
        tokenize={"max_length": 64, "stride": 8},
        train={"batch_size": 8, "learning_rate": 5e-4, "early_stopping_patience": None, **train},
        evaluate={"bootstrap_samples": 10, "worst_sentences": 3},
        export={"parity_sentences": 10},
        tracking={"enabled": False},
    )


@pytest.mark.slow
def test_a_cache_hit_run_on_a_fresh_machine_downloads_only_manifests(tmp_path: Path, s3, tiny_base_dir: Path):
    bucket, requests = s3
    root = f"s3://{bucket}/team"
    stages = ["ingest", "tokenize", "train", "evaluate", "export"]
    cfg_a = tiny_remote_config(tmp_path, root, "worker-a", tiny_base_dir, epochs=1)
    first = pipeline.walk(
        cfg_a,
        stages,
        build=lambda n, c, up, ctx: pipeline.run_stage(n, c, up, pipeline.open_store(c), ctx),
        lookup=lambda n, c, up, ctx: pipeline.lookup_stage(n, c, up, pipeline.open_store(c), ctx),
    )
    assert first.computed == stages

    requests.lines.clear()
    cfg_b = tiny_remote_config(tmp_path, root, "worker-b", tiny_base_dir, epochs=1)
    second = pipeline.walk(
        cfg_b,
        stages,
        build=lambda n, c, up, ctx: pipeline.run_stage(n, c, up, pipeline.open_store(c), ctx),
        lookup=lambda n, c, up, ctx: pipeline.lookup_stage(n, c, up, pipeline.open_store(c), ctx),
    )
    report = second.to_markdown() + str(second.onnx_dir)
    assert second.computed == []
    fetched = requests.object_gets(bucket)
    assert sorted(fetched) == sorted(f"team/{s}/{a.key}/manifest.json" for s, a in second.stages.items())
    assert f"{root}/train/" in report
    assert not list((tmp_path / "worker-b").rglob("*.safetensors")), "no model was downloaded"

    # What serving or a selected stage reads is downloaded then, and only that artifact.
    requests.lines.clear()
    assert (second.stages["export"].path / "parity.json").is_file()
    assert {k.split("/")[1] for k in requests.object_gets(bucket)} == {"export"}


class Abort(Exception):
    """Stands in for a worker killed after its first checkpoint was published."""


@pytest.mark.slow
def test_a_worker_resumes_training_from_the_checkpoint_a_killed_worker_published(
    tmp_path: Path, s3, tiny_base_dir: Path, caplog
):
    from transformers import TrainerCallback

    from ner_pipeline.ingest import run_ingest
    from ner_pipeline.tokenize import run_tokenize
    from ner_pipeline.train import run_train

    bucket, _ = s3
    root = f"s3://{bucket}/team"

    class AbortAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Abort(f"killed at step {state.global_step}")

    def train(local: str, callbacks: list) -> object:
        cfg = tiny_remote_config(tmp_path, root, local, tiny_base_dir, save_steps=5, max_steps=20, batch_size=4)
        store = pipeline.open_store(cfg)
        tokenized = run_tokenize(cfg.model, cfg.tokenize, run_ingest(cfg.data, store), store)
        return run_train(cfg.model, cfg.train, tokenized, store, callbacks=callbacks)

    with pytest.raises(Abort, match="killed at step 5"):
        train("worker-a", [AbortAfterFirstSave()])
    [work] = {k.split("/")[2] for k in keys_below(bucket, "team/train/.work-")}
    published = keys_below(bucket, f"team/train/{work}/")
    assert f"team/train/{work}/checkpoints/checkpoint-5/_complete.json" in published
    assert f"team/train/{work}/checkpoints/checkpoint-5/trainer_state.json" in published
    assert keys_below(bucket, "team/train/") == published, "no train artifact from the killed worker"

    caplog.set_level(logging.INFO, logger="ner_pipeline")
    trained = train("worker-b", [])
    assert "restored checkpoints/checkpoint-5" in caplog.text and "(step 5)" in caplog.text
    assert not trained.cached
    assert trained.stats["resumed_from_step"] == 5 and trained.stats["global_step"] == 20
    assert keys_below(bucket, f"team/train/{work}/") == [], "the work prefix goes once the artifact is complete"
    fresh = pipeline.open_store(tiny_remote_config(tmp_path, root, "worker-c", tiny_base_dir))
    again = fresh.get("train", trained.key)
    assert again is not None and fresh.damage(again, "sha256") == []
    assert json.loads((again.path / "history.json").read_text())[-1]["step"] == 20
