"""What a worker with an empty local disk downloads from the remote artifact store: the bytes of each object read
from moto's S3 server, counted at the server, must be the files a consumer reads, each once."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from conftest import free_port
from test_remote_store import tiny_remote_config

from ner_pipeline import pipeline
from ner_pipeline.artifacts import Artifact
from ner_pipeline.localcache import GB, LocalCopies
from ner_pipeline.remote import RemoteArtifactStore

MiB = 2**20
# Larger than s3fs's default block size (50 MiB), as a real model's weights are (all-MiniLM-L6-v2: 87 MiB): there
# s3fs's `get_file` drops its first response and fetches the object again in parallel ranged parts.
LARGE = 51 * MiB
BUCKET = "fetch-test"


class ObjectReads:
    """WSGI wrapper in front of moto's app: response body bytes of every GET of an object (not a listing), by key."""

    def __init__(self, app) -> None:
        self.app, self.bytes = app, Counter()

    def __call__(self, environ, start_response):
        read = environ["REQUEST_METHOD"] == "GET" and not environ.get("QUERY_STRING")
        key = environ["PATH_INFO"].removeprefix(f"/{BUCKET}/")
        for chunk in self.app(environ, start_response):
            if read:
                self.bytes[key] += len(chunk)
            yield chunk

    def during(self, action: Callable[[], object]) -> dict[str, int]:
        """Bytes read per key while `action` runs."""
        before = Counter(self.bytes)
        action()
        return {k: v for k, v in (self.bytes - before).items() if v}


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, ObjectReads]]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    reads = ObjectReads(server._server.app)  # moto's server object; only its WSGI app is wrapped, to count
    server._server.app = reads
    yield f"http://127.0.0.1:{port}", reads
    server.stop()


@pytest.fixture
def reads(moto, monkeypatch: pytest.MonkeyPatch) -> ObjectReads:
    """Endpoint and fake credentials only in the environment, as a worker gets them; the bucket exists."""
    import s3fs

    endpoint, counter = moto
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    s3 = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return counter


def worker_store(root: str, local: Path) -> RemoteArtifactStore:
    return RemoteArtifactStore(root, LocalCopies(local, root, 20 * GB))


def write_train_like(folder: Path) -> dict:
    """A train artifact's shape: large weights below model/, small files beside them."""
    (folder / "model").mkdir()
    (folder / "model" / "model.safetensors").write_bytes(os.urandom(LARGE))
    (folder / "model" / "config.json").write_text('{"labels": ["O"]}')
    (folder / "history.json").write_text("[]")
    (folder / "training_curves.png").write_bytes(os.urandom(4096))
    return {}


def object_sizes(artifact: Artifact, *parts: str) -> dict[str, int]:
    """Key → size of the artifact's files at or below `parts` (all for none), as the manifest records them."""
    prefix = f"{str(artifact.location).split('/', 3)[3]}/{artifact.manifest['upload']}"
    return {
        f"{prefix}/{relative}": record["size"]
        for relative, record in artifact.manifest["files"].items()
        if not parts or any(relative == p or relative.startswith(f"{p}/") for p in parts)
    }


def test_a_local_copy_downloads_each_file_once_even_when_it_is_larger_than_a_block(tmp_path: Path, reads):
    root = f"s3://{BUCKET}/once"
    worker_store(root, tmp_path / "worker-a").build("train", "k1", write_train_like)
    artifact = worker_store(root, tmp_path / "worker-b").get("train", "k1")
    assert artifact is not None

    assert reads.during(lambda: artifact.path) == object_sizes(artifact), "each file once, nothing else"
    assert (artifact.path / "model" / "model.safetensors").stat().st_size == LARGE
    assert reads.during(lambda: artifact.path) == {}, "a second read uses the local copy"


def test_files_downloads_only_the_parts_named_and_path_then_only_the_rest(tmp_path: Path, reads):
    root = f"s3://{BUCKET}/parts"
    worker_store(root, tmp_path / "worker-a").build("train", "k1", write_train_like)
    artifact = worker_store(root, tmp_path / "worker-b").get("train", "k1")
    assert artifact is not None

    assert reads.during(lambda: artifact.files("model")) == object_sizes(artifact, "model")
    folder = artifact.files("model")
    assert (folder / "model" / "config.json").is_file() and not (folder / "history.json").exists()
    # A new process (another task of the flow) finds the part on disk.
    fresh = worker_store(root, tmp_path / "worker-b").get("train", "k1")
    assert reads.during(lambda: fresh.files("model")) == {}
    assert reads.during(lambda: artifact.path) == object_sizes(artifact, "history.json", "training_curves.png")
    assert reads.during(lambda: artifact.path) == {}


@pytest.mark.slow
def test_a_selected_evaluate_on_an_empty_disk_downloads_only_the_model_and_the_splits_it_scores(
    tmp_path: Path, reads, tiny_base_dir: Path
):
    root = f"s3://{BUCKET}/evaluate"
    stages = ["ingest", "tokenize", "train"]

    def walk(cfg, selected):
        return pipeline.walk(
            cfg,
            selected,
            build=lambda n, c, up, ctx: pipeline.run_stage(n, c, up, pipeline.open_store(c), ctx),
            lookup=lambda n, c, up, ctx: pipeline.lookup_stage(n, c, up, pipeline.open_store(c), ctx),
        )

    built = walk(tiny_remote_config(tmp_path, root, "worker-a", tiny_base_dir, epochs=1), stages).stages
    cfg_c = tiny_remote_config(tmp_path, root, "worker-c", tiny_base_dir, epochs=1)
    cfg_c = cfg_c.model_copy(update={"evaluate": cfg_c.evaluate.model_copy(update={"bootstrap_samples": 20})})
    fetched: dict[str, Artifact] = {}
    read = reads.during(lambda: fetched.update(walk(cfg_c, ["evaluate"]).stages))

    assert fetched["evaluate"].stats, "evaluate ran"
    files = {k: v for k, v in read.items() if not k.endswith("/manifest.json")}
    needed = {
        **object_sizes(built["train"], "model"),
        **object_sizes(built["ingest"], "labels.json", "dataset/validation", "dataset/test"),
    }
    assert files == needed, "the model and the scored splits, each once: not the curves, not the train split"
