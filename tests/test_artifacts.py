"""The artifact cache: keys, atomic builds, interrupted builds, concurrent builds, pruning, integrity checks."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from ner_pipeline import pipeline, registry
from ner_pipeline.artifacts import MANIFEST, ArtifactStore, artifact_key
from ner_pipeline.config import PipelineConfig, TrainConfig
from ner_pipeline.errors import ArtifactError


def invoke_cli(args: list[str]):
    """Run `ner-pipeline ARGS` in-process; the root logger's handlers are put back afterwards, since the CLI's
    logging set-up would otherwise leave them writing to the runner's closed stderr (and drop pytest's capture)."""
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return CliRunner().invoke(app, args)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def write_value(value: str):
    def producer(folder: Path) -> dict:
        (folder / "value.txt").write_text(value)
        return {"value": value}

    return producer


def test_key_changes_with_config_inputs_and_version():
    base = artifact_key("train", "1", TrainConfig(), {"tokenize": "abc"})
    assert base == artifact_key("train", "1", TrainConfig(), {"tokenize": "abc"})
    assert base != artifact_key("train", "1", TrainConfig(learning_rate=3e-5), {"tokenize": "abc"})
    assert base != artifact_key("train", "1", TrainConfig(), {"tokenize": "abd"})
    assert base != artifact_key("train", "2", TrainConfig(), {"tokenize": "abc"})


def test_build_writes_manifest_and_second_build_is_a_cache_hit(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    calls = []

    def producer(folder: Path) -> dict:
        calls.append(folder)
        (folder / "value.txt").write_text("x")
        return {"n": 1}

    first = store.build("ingest", "k1", producer, inputs={"up": "u1"}, config={"a": 1})
    second = store.build("ingest", "k1", producer)
    assert len(calls) == 1
    assert not first.cached and second.cached
    assert second.stats == {"n": 1} and second.inputs == {"up": "u1"}
    manifest = json.loads((tmp_path / "ingest" / "k1" / MANIFEST).read_text())
    assert manifest["key"] == "k1" and manifest["config"] == {"a": 1}


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path: Path):
    store = ArtifactStore(tmp_path)

    def broken(folder: Path) -> dict:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.build("train", "k", broken)
    assert store.get("train", "k") is None
    assert list((tmp_path / "train").glob(".tmp-*")) == []
    assert store.build("train", "k", write_value("ok")).stats == {"value": "ok"}


def _killed_build(root: str) -> None:
    def hang(folder: Path) -> dict:
        (folder / "partial.bin").write_bytes(b"0" * 100)
        (Path(root) / "started").touch()
        time.sleep(60)
        return {}

    ArtifactStore(root).build("train", "k", hang)


def test_interrupted_write_is_not_a_hit_and_is_cleaned_by_the_next_build(tmp_path: Path):
    proc = multiprocessing.get_context("fork").Process(target=_killed_build, args=(str(tmp_path),))
    proc.start()
    deadline = time.monotonic() + 20
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    store = ArtifactStore(tmp_path)
    assert list((tmp_path / "train").glob(".tmp-k-*")), "the killed build should have left its temp folder"
    assert store.get("train", "k") is None
    rebuilt = store.build("train", "k", write_value("fresh"))
    assert not rebuilt.cached and (rebuilt.path / "value.txt").read_text() == "fresh"
    assert list((tmp_path / "train").glob(".tmp-k-*")) == []


def _slow_build(root: str, value: str, out: str) -> None:
    def producer(folder: Path) -> dict:
        time.sleep(1.0)
        (folder / "value.txt").write_text(value)
        return {"value": value}

    artifact = ArtifactStore(root).build("train", "same", producer)
    Path(out).write_text(json.dumps({"cached": artifact.cached, "value": artifact.stats["value"]}))


def test_two_processes_building_one_key_end_with_one_artifact(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_slow_build, args=(str(tmp_path / "root"), f"p{i}", str(tmp_path / f"out{i}.json")))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["value"] == results[1]["value"]
    assert [p.name for p in (tmp_path / "root" / "train").iterdir() if not p.name.startswith(".")] == ["same"]


def test_prune_keeps_newest_protected_and_their_lineage(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    ingest = store.build("ingest", "i1", write_value("i"))
    old = store.build("train", "t-old", write_value("1"), inputs={"ingest": ingest.key})
    time.sleep(0.01)  # manifests record creation to the microsecond
    store.build("train", "t-mid", write_value("2"), inputs={"ingest": ingest.key})
    time.sleep(0.01)
    newest = store.build("train", "t-new", write_value("3"), inputs={"ingest": ingest.key})
    removed = store.prune(keep_last=1, protected={old.key})
    assert [a.key for a in removed] == ["t-mid"]
    assert {a.key for a in store.list()} == {ingest.key, old.key, newest.key}


def test_prune_clears_what_killed_builds_left_but_keeps_resumable_checkpoints(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    ingest = store.build("ingest", "i1", write_value("i"))
    train = store.build("train", "t1", write_value("1"), inputs={"ingest": ingest.key})
    store.build("train", "t2", write_value("2"), inputs={"ingest": ingest.key})
    killed_build = tmp_path / "train" / ".tmp-t3-4242-abcdef01"
    finished_work = tmp_path / "train" / ".work-t1"  # checkpoints of a key whose artifact is complete
    resumable_work = tmp_path / "train" / ".work-t4"  # checkpoints of a training that may still resume
    for folder in (killed_build, finished_work, resumable_work):
        (folder / "checkpoint-5").mkdir(parents=True)

    removed = store.prune(keep_last=0, protected={train.key})
    assert [a.key for a in removed] == ["t2"]  # t1 and its lineage belong to a registered version
    assert not killed_build.exists() and not finished_work.exists()
    assert resumable_work.is_dir()


def test_require_names_the_stage_to_run(tmp_path: Path):
    with pytest.raises(ArtifactError, match="run the 'tokenize' stage first"):
        ArtifactStore(tmp_path).require("tokenize", "nope")


def test_cli_lists_and_prunes_the_cache(tmp_path: Path):
    store = ArtifactStore(tmp_path / "artifacts")
    store.build("ingest", "old", write_value("a"))
    time.sleep(1.1)
    store.build("ingest", "new", write_value("b"))
    common = [
        "--set",
        f"artifacts_root={tmp_path / 'artifacts'}",
        "--set",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db",
    ]
    listed = invoke_cli(["artifacts", "list", *common])
    assert listed.exit_code == 0 and "old" in listed.output and "new" in listed.output
    registry.client_for(f"sqlite:///{tmp_path}/m.db")  # prune refuses a registry store that does not exist
    pruned = invoke_cli(["artifacts", "prune", "--keep-last", "1", *common])
    assert pruned.exit_code == 0, pruned.output
    assert "removed ingest/old" in pruned.output
    assert [a.key for a in store.list()] == ["new"]


# --- integrity -------------------------------------------------------------------------------------------------

WEIGHTS = "model/model.safetensors"


def write_model(size: int = 8 << 20):
    """A producer writing a model-sized random file and a small config beside it."""

    def producer(folder: Path) -> dict:
        (folder / "model").mkdir()
        (folder / WEIGHTS).write_bytes(os.urandom(size))
        (folder / "model" / "config.json").write_text("{}")
        return {}

    return producer


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 1)


def overwrite_same_size(path: Path) -> None:
    with path.open("r+b") as handle:  # 4 MB of zeros in the middle: the size stays, the content does not
        handle.seek(path.stat().st_size // 4)
        handle.write(bytes(4 << 20))


DAMAGE = pytest.mark.parametrize(
    "damage", [delete, truncate, overwrite_same_size], ids=["deleted", "truncated", "same-size"]
)


def test_manifest_records_size_and_sha256_of_each_file(tmp_path: Path):
    built = ArtifactStore(tmp_path).build("train", "k", write_model(1 << 20))
    files = json.loads((built.path / MANIFEST).read_text())["files"]
    assert set(files) == {WEIGHTS, "model/config.json"}  # not the manifest itself
    weights = (built.path / WEIGHTS).read_bytes()
    assert files[WEIGHTS] == {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}


@DAMAGE
def test_a_damaged_file_is_removed_with_a_warning_naming_it_and_rebuilt(
    tmp_path: Path, damage, caplog: pytest.LogCaptureFixture
):
    store = ArtifactStore(tmp_path)
    first = store.build("train", "k", write_model())
    damage(first.path / WEIGHTS)
    with caplog.at_level(logging.WARNING, logger="ner_pipeline.artifacts"):
        assert store.get("train", "k") is None
    assert str(first.path / WEIGHTS) in caplog.text and "damaged" in caplog.text
    assert not first.path.exists() and not list((tmp_path / "train").glob(".trash-*"))
    rebuilt = store.build("train", "k", write_model())
    assert not rebuilt.cached and store.damage(rebuilt) == []
    assert store.build("train", "k", write_model()).cached


@DAMAGE
def test_a_lookup_rebuilds_a_damaged_artifact_instead_of_serving_it(tmp_path: Path, damage):
    store = ArtifactStore(tmp_path)
    damage(store.build("train", "k", write_model()).path / WEIGHTS)
    with pytest.raises(ArtifactError, match="run the 'train' stage first"):
        store.require("train", "k")  # a stage that is only looked up is not served damaged either


def test_a_size_check_catches_deleted_and_truncated_files_but_not_an_equal_size_overwrite(tmp_path: Path):
    store = ArtifactStore(tmp_path, verify="size")
    for damage, caught in ((delete, True), (truncate, True), (overwrite_same_size, False)):
        built = store.build("train", damage.__name__, write_model())
        damage(built.path / WEIGHTS)
        assert (store.get("train", damage.__name__) is None) is caught, damage.__name__
        assert bool(store.damage(built, "sha256")) is True


def test_cache_verify_in_the_config_reaches_the_store(tmp_path: Path):
    config = PipelineConfig.model_validate({"artifacts_root": str(tmp_path), "cache": {"verify": "size"}})
    assert pipeline.open_store(config).verify == "size"
    assert pipeline.open_store(PipelineConfig()).verify == "sha256"


@DAMAGE
def test_cli_verify_exits_non_zero_with_one_line_per_damaged_file(tmp_path: Path, damage):
    store = ArtifactStore(tmp_path / "artifacts")
    intact = store.build("train", "intact", write_model(1 << 20))
    broken = store.build("train", "broken", write_model())
    damage(broken.path / WEIGHTS)
    (broken.path / "model" / "config.json").unlink()
    args = ["artifacts", "verify", "--set", f"artifacts_root={tmp_path / 'artifacts'}"]
    result = invoke_cli(args)
    assert result.exit_code == 1, result.output
    damaged = sorted(line for line in result.output.splitlines() if line.startswith("damaged"))
    assert damaged == [
        f"damaged train/broken: {broken.path / 'model' / 'config.json'}: missing",
        damaged[1],
    ]
    assert damaged[1].startswith(f"damaged train/broken: {broken.path / WEIGHTS}: ")
    assert "1 intact, 1 damaged, 0 unverifiable" in result.output
    (broken.path / "model" / "config.json").write_text("{}")
    assert invoke_cli([*args[:2], "--size-only", *args[2:]]).exit_code == (0 if damage is overwrite_same_size else 1)
    assert store.get("train", intact.key) == intact


def test_cli_verify_passes_an_intact_cache(tmp_path: Path):
    ArtifactStore(tmp_path / "artifacts").build("train", "k", write_model(1 << 20))
    result = invoke_cli(["artifacts", "verify", "--set", f"artifacts_root={tmp_path / 'artifacts'}"])
    assert result.exit_code == 0 and "1 intact, 0 damaged" in result.output
