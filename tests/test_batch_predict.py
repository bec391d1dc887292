"""Batch inference: corpus formats, chunk caching, resume after a crash, the MLflow run and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ner_pipeline import batch
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.corpus import read_corpus
from ner_pipeline.errors import DataError

TEXTS = [f"Sentence {i} about Alice Smith in Paris ." for i in range(12)]


def write_txt(folder: Path, texts: list[str] = TEXTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


class CrashAfter:
    """A loader whose predictor raises after `calls` predict calls (a job killed mid-way), counting calls."""

    def __init__(self, calls: int | None = None) -> None:
        self.limit, self.calls, self.loads = calls, 0, 0

    def __call__(self, model, backend, tracking_uri):
        handle = batch.default_loader(model, backend, tracking_uri)
        self.loads += 1
        real = handle.predictor.predict

        def predict(texts, *args, **kwargs):
            if self.limit is not None and self.calls >= self.limit:
                raise RuntimeError("killed")
            self.calls += 1
            return real(texts, *args, **kwargs)

        handle.predictor.predict = predict
        return handle


def test_read_corpus_reads_txt_jsonl_and_parquet_with_ids(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    write_txt(folder, ["first line", "", "third line"])
    (folder / "b.jsonl").write_text(
        json.dumps({"id": "doc-1", "body": "from json"}) + "\n" + json.dumps({"body": "no id"}) + "\n"
    )
    pq.write_table(pa.table({"body": ["from parquet"]}), folder / "c.parquet")
    corpus = read_corpus(str(folder / "corpus.txt"))
    assert corpus.ids == ["corpus.txt:1", "corpus.txt:3"]
    assert corpus.texts == ["first line", "third line"]
    corpus = read_corpus(str(folder / "b.jsonl"), text_field="body")
    assert corpus.ids == ["doc-1", "b.jsonl:2"] and corpus.texts == ["from json", "no id"]
    corpus = read_corpus(str(folder / "c.parquet"), text_field="body")
    assert corpus.ids == ["c.parquet:0"] and corpus.texts == ["from parquet"]
    whole = read_corpus(str(folder), text_field="body")  # a folder: every known file, sorted by name
    assert whole.texts == ["from json", "no id", "from parquet", "first line", "third line"]


def test_read_corpus_reads_an_fsspec_url() -> None:
    import fsspec

    with fsspec.open("memory://batch-test/corpus.jsonl", "w") as handle:
        handle.write(json.dumps({"text": "in memory"}) + "\n")
    assert read_corpus("memory://batch-test/corpus.jsonl").texts == ["in memory"]


def test_read_corpus_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 2: expected an object with a string field 'text'"):
        read_corpus(str(path))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="no column 'text'"):
        read_corpus(str(tmp_path / "bad.parquet"))


def test_killed_job_resumes_at_the_first_missing_chunk_and_matches_an_uninterrupted_run(
    tmp_path: Path, person_model: Path
) -> None:
    corpus = write_txt(tmp_path / "in")
    store = ArtifactStore(tmp_path / "artifacts")
    out = tmp_path / "out" / "tags.parquet"
    kwargs = {"chunk_size": 4, "backend": "torch", "progress": False}

    crashing = CrashAfter(calls=2)
    with pytest.raises(RuntimeError, match="killed"):
        batch.run_batch(str(corpus), str(person_model), str(out), store, loader=crashing, **kwargs)
    assert len([p for p in (tmp_path / "artifacts" / batch.STAGE).iterdir() if not p.name.startswith(".")]) == 2
    assert not out.exists()

    resumed = CrashAfter()
    result = batch.run_batch(str(corpus), str(person_model), str(out), store, loader=resumed, **kwargs)
    assert (result.chunks, result.computed, resumed.calls) == (3, 1, 1)

    fresh_out = tmp_path / "fresh.parquet"
    fresh = batch.run_batch(str(corpus), str(person_model), str(fresh_out), ArtifactStore(tmp_path / "a2"), **kwargs)
    assert fresh.computed == 3
    assert pq.read_table(out).equals(pq.read_table(fresh_out))

    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == [f"corpus.txt:{i}" for i in range(1, 13)]
    assert table[0]["text"] == TEXTS[0]
    assert table[0]["entities"] and {e["label"] for r in table for e in r["entities"]} == {"PER"}
    first = table[0]["entities"][0]
    assert TEXTS[0][first["start"] : first["end"]] == first["text"] and 0 < first["score"] <= 1
    assert table[0]["model_name"] == batch.resolve_model(str(person_model), None).name
    assert table[0]["model_version"] is None

    again = CrashAfter()
    rerun = batch.run_batch(str(corpus), str(person_model), str(out), store, loader=again, **kwargs)
    assert (rerun.computed, again.loads) == (0, 0)  # free: the model is not even loaded


def test_another_model_or_setting_recomputes_every_chunk(tmp_path: Path, person_model: Path, location_model) -> None:
    corpus = write_txt(tmp_path / "in")
    store = ArtifactStore(tmp_path / "artifacts")
    out = str(tmp_path / "tags.parquet")
    first = batch.run_batch(str(corpus), str(person_model), out, store, chunk_size=5, backend="torch", progress=False)
    other = batch.run_batch(str(corpus), str(location_model), out, store, chunk_size=5, backend="torch", progress=False)
    assert (first.computed, other.computed) == (3, 3)
    assert set(first.chunk_keys).isdisjoint(other.chunk_keys)
    assert other.entities and set(other.entities) == {"LOC"}


def test_job_is_logged_to_one_mlflow_run(tmp_path: Path, person_model: Path) -> None:
    from mlflow import MlflowClient

    from ner_pipeline import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.start_job_run(uri, "ner-batch-predict", str(tmp_path / "mlart"), "batch-test")
    corpus = write_txt(tmp_path / "in")
    result = batch.run_batch(
        str(corpus), str(person_model), str(tmp_path / "o.parquet"), ArtifactStore(tmp_path / "a"),
        chunk_size=5, backend="torch", progress=False, tracker=tracker,
    )  # fmt: skip
    tracker.end()
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.params["input.fingerprint"] == result.input_fingerprint
    assert run.data.metrics["texts"] == 12 and run.data.metrics["texts_per_s"] > 0
    assert run.data.metrics["entities.PER"] == result.entities["PER"] > 0


def test_batch_predict_command_writes_parquet_and_says_what_it_did(tmp_path: Path, person_model: Path) -> None:
    from conftest import write_tiny_config
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    config = write_tiny_config(tmp_path, person_model)
    corpus = write_txt(tmp_path / "in")
    out = tmp_path / "tags.parquet"
    args = ["batch-predict", str(corpus), "-o", str(out), "-m", str(person_model), "-c", str(config),
            "--chunk-size", "5", "--backend", "torch", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "12 texts tagged" in result.output and "(3/3 chunks computed" in result.output
    assert pq.read_table(out).num_rows == 12
    again = CliRunner().invoke(app, args)
    assert "(0/3 chunks computed" in again.output
    missing = CliRunner().invoke(app, [*args[:1], str(tmp_path / "nope.txt"), *args[2:]])
    assert missing.exit_code == 1 and "nope.txt: no such file or folder" in missing.output


@pytest.mark.slow
def test_flow_tags_a_corpus_under_prefect(tmp_path: Path, person_model: Path) -> None:
    from conftest import REPO_ROOT, write_tiny_config
    from prefect.testing.utilities import prefect_test_harness

    import ner_pipeline_flows
    import ner_pipeline_tasks

    # The installed names point at the checkout the venv was installed from; look in this one first.
    ner_pipeline_flows.__path__.insert(0, str(REPO_ROOT / "flows"))
    ner_pipeline_tasks.__path__.insert(0, str(REPO_ROOT / "tasks"))
    from ner_pipeline_flows.batch_predict import batch_predict_flow

    config = write_tiny_config(tmp_path, person_model)
    corpus = write_txt(tmp_path / "in")
    with prefect_test_harness():
        summary = batch_predict_flow(
            str(corpus), model=str(person_model), config_path=str(config), chunk_size=5, backend="torch"
        )
    assert summary == {"output": str(tmp_path / "in" / "corpus.entities.parquet"), "texts": 12, "computed": 3,
                       "chunks": 3}  # fmt: skip
    assert pq.read_table(summary["output"]).num_rows == 12

    # A model folder's ONNX export reaches the job: the same texts on the graph tag what PyTorch tagged.
    from ner_pipeline.export import export_onnx

    onnx_dir = tmp_path / "onnx"
    export_onnx(person_model, onnx_dir, opset=17)
    with prefect_test_harness():
        on_graph = batch_predict_flow(
            str(corpus), output=str(tmp_path / "graph.parquet"), model=str(person_model), config_path=str(config),
            chunk_size=5, backend="onnx", onnx=str(onnx_dir),
        )  # fmt: skip
    assert on_graph["computed"] == 3  # another backend: every chunk computed again, not served from the cache
    torch_rows = pq.read_table(summary["output"]).column("entities").to_pylist()
    graph_rows = pq.read_table(on_graph["output"]).column("entities").to_pylist()
    assert [[(e["label"], e["start"], e["end"]) for e in row] for row in graph_rows] == [
        [(e["label"], e["start"], e["end"]) for e in row] for row in torch_rows
    ]
