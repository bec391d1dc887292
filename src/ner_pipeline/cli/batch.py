"""Batch inference (`batch-predict` tags a corpus and writes Parquet) and `models card` (a version's model card)."""

from __future__ import annotations

from typing import Annotated

import typer

from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, user_errors

app = typer.Typer()


@app.command("batch-predict")
@user_errors
def batch_predict(
    source: Annotated[str, typer.Argument(help="Corpus: a .txt/.jsonl/.parquet file or folder, local or fsspec URL.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Parquet file to write (local or fsspec URL).")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="models:/NAME@alias, models:/NAME/VERSION or a model folder.")
    ] = None,
    chunk_size: Annotated[int, typer.Option(help="Texts per cached chunk.")] = 10_000,
    backend: Annotated[str, typer.Option(help="auto, torch, onnx or onnx-int8.")] = "auto",
    onnx: Annotated[str | None, typer.Option(help="Export folder for a model folder (ONNX backends).")] = None,
    text_field: Annotated[str, typer.Option(help="JSONL field / Parquet column holding the text.")] = "text",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Tag every text of a corpus (default model: registry alias production); chunks already done are reused."""
    from ner_pipeline import batch

    result = batch.run_job(
        load(config, set_), source, output, model,
        chunk_size=chunk_size, backend=backend, onnx=onnx, text_field=text_field, progress=progress,
    )  # fmt: skip
    version = f" v{result.model_version}" if result.model_version else ""
    typer.echo(
        f"{result.output}: {result.texts} texts tagged with {result.model_name}{version} "
        f"({result.computed}/{result.chunks} chunks computed, {result.texts_per_s:.1f} texts/s)"
    )
