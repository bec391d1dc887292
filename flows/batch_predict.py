"""The `ner-batch-predict` flow: tag a corpus with the production model and write Parquet.

Chunks are cached artifacts (stage `batch-predict`) shared with `ner-pipeline batch-predict`, so a crashed or
killed run resumes at the first missing chunk and a nightly run with an unchanged model and corpus is free.
Installed as `ner_pipeline_flows.batch_predict`; `prefect deploy` loads this file by path from the project root.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from ner_pipeline.batch import CHUNK_SIZE
from ner_pipeline_tasks.batch import batch_predict_task
from ner_pipeline_tasks.config import load_config_task, show_library_logs


@flow(name="ner-batch-predict", log_prints=False)
def batch_predict_flow(
    source: str,
    output: str | None = None,
    model: str | None = None,
    config_path: str = "configs/quickstart.yaml",
    overrides: list[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
    backend: str = "auto",
    onnx: str | None = None,
    text_field: str = "text",
) -> dict:
    """Tag every text of `source`.

    Args:
        source: Corpus file or folder (.txt lines, JSONL, Parquet), local or an fsspec URL.
        output: Parquet file to write; default `<source without suffix>.entities.parquet`.
        model: models:/NAME@alias, models:/NAME/VERSION or a model folder; default the registry's production.
        config_path: YAML config (artifacts root, MLflow store, registry model name).
        overrides: `key=value` config overrides.
        chunk_size: Texts per cached chunk.
        backend: auto, torch, onnx or onnx-int8.
        onnx: The export folder of a model folder's ONNX graphs (a registered model carries its own).
        text_field: JSONL field / Parquet column holding the text.
    """
    show_library_logs()
    config = load_config_task(config_path, list(overrides or []))
    target = output or f"{source.rstrip('/').rsplit('.', 1)[0]}.entities.parquet"
    options = {"chunk_size": chunk_size, "backend": backend, "onnx": onnx, "text_field": text_field, "progress": False}
    result = batch_predict_task(config, source, target, model, options, {"prefect.flow_run_id": str(flow_run.get_id())})
    get_run_logger().info(
        "%s: %d texts, %d/%d chunks computed", result.output, result.texts, result.computed, result.chunks
    )
    return {"output": result.output, "texts": result.texts, "computed": result.computed, "chunks": result.chunks}


if __name__ == "__main__":
    import sys

    batch_predict_flow(sys.argv[1])
