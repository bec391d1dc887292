"""What a worker with an empty local disk downloads from the remote artifact store, counted in bytes at moto's S3
server (the counting WSGI wrapper of tests/team_stack.py, which bench/team_cache.py measures with too)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from team_stack import S3, Traffic, s3_server

from ner_pipeline.localcache import GB, LocalCopies
from ner_pipeline.remote import RemoteArtifactStore

MiB = 2**20
# Larger than s3fs's default block size (50 MiB): the size of a real model's weights (all-MiniLM-L6-v2: 87 MiB),
# where s3fs's `get_file` switches to a download in parallel parts.
LARGE = 51 * MiB


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server("fetch-test") as server:
        yield server


@pytest.fixture
def root(s3: S3, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh prefix; endpoint and fake credentials only in the environment, as a worker gets them."""
    import s3fs

    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{s3.bucket}/{request.node.name}"


def worker_store(root: str, local: Path) -> RemoteArtifactStore:
    return RemoteArtifactStore(root, LocalCopies(local, root, 20 * GB))


def write_model(folder: Path) -> dict:
    """A train artifact's shape: large weights and a few small files."""
    (folder / "model").mkdir()
    (folder / "model" / "model.safetensors").write_bytes(os.urandom(LARGE))
    (folder / "model" / "config.json").write_text('{"labels": ["O"]}')
    (folder / "history.json").write_text("[]")
    return {}


def downloaded_during(s3: S3, action) -> int:
    before = dataclasses.replace(s3.traffic)
    action()
    return s3.traffic.since(before).downloaded


def local_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_local_copy_downloads_each_file_once_even_when_it_is_larger_than_a_block(tmp_path: Path, s3: S3, root: str):
    worker_store(root, tmp_path / "worker-a").build("train", "k1", write_model)
    artifact = worker_store(root, tmp_path / "worker-b").get("train", "k1")
    assert artifact is not None
    stored = sum(record["size"] for record in artifact.manifest["files"].values())

    folder = Path()

    def read_path() -> None:
        nonlocal folder
        folder = artifact.path

    fetched = downloaded_during(s3, read_path)
    assert fetched == stored, f"downloaded {fetched} bytes for {stored} bytes of files"
    assert local_bytes(folder) - (folder / "manifest.json").stat().st_size == stored
    assert downloaded_during(s3, lambda: artifact.path) == 0, "a second read uses the local copy"
