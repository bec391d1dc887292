"""Using a model: `predict` on raw text and `serve` over HTTP."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.config import PipelineConfig
from ner_pipeline.errors import PredictError

app = typer.Typer()
logger = logging.getLogger("ner_pipeline.cli")

ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model folder or models:/NAME@alias (default: registry production).")
]
BackendOpt = Annotated[str | None, typer.Option(help="auto, torch, onnx or onnx-int8.")]
OnnxOpt = Annotated[str | None, typer.Option(help="Export folder for a model folder (ONNX backends).")]


def model_source(cfg: PipelineConfig, model: str | None) -> str:
    """The model to load: --model, else serve.model_uri, else the registry's production alias."""
    return model or cfg.serve.model_uri or f"models:/{cfg.registry.model_name}@production"


def read_texts(text: list[str] | None, file: Path | None, jsonl: Path | None) -> list[str]:
    """The texts to tag: arguments, then the lines of --file, then the "text" of each --jsonl line."""
    texts = list(text or [])
    if file is not None:
        texts += [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if jsonl is not None:
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise PredictError(f'{jsonl} line {number}: expected {{"text": "..."}}') from None
    if not texts:
        raise PredictError("nothing to tag: give text arguments, --file or --jsonl")
    return texts


@app.command()
@user_errors
def predict(
    text: Annotated[list[str] | None, typer.Argument(help="Text(s) to tag.")] = None,
    file: Annotated[Path | None, typer.Option(help="A text file: one text per non-empty line.")] = None,
    jsonl: Annotated[Path | None, typer.Option(help='JSON Lines with {"text": ...} per line.')] = None,
    model: ModelOpt = None,
    backend: BackendOpt = "auto",
    onnx: OnnxOpt = None,
    aggregation: Annotated[str, typer.Option(help="first, average or max.")] = "first",
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Tag raw text; prints one JSON line per text with its entities and character offsets."""
    from ner_pipeline.serve import load_handle

    cfg = load(config, set_)
    texts = read_texts(text, file, jsonl)
    handle = load_handle(
        model_source(cfg, model), backend or cfg.serve.backend, tracking_uri(cfg), onnx, cfg.serve.threads
    )
    try:
        results = handle.predictor.predict(texts, aggregation=aggregation)
    finally:
        handle.close()
    for original, entities in zip(texts, results, strict=True):
        typer.echo(json.dumps({"text": original, "entities": [e.model_dump() for e in entities]}, ensure_ascii=False))


@app.command()
@user_errors
def serve(
    model: ModelOpt = None,
    backend: BackendOpt = None,
    onnx: OnnxOpt = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Serve the model over HTTP (FastAPI + uvicorn): POST /predict, /health, /ready, /model, docs at /docs."""
    import uvicorn

    from ner_pipeline.serve import RequestIdFilter, build_app

    cfg = load(config, set_)
    settings = cfg.serve.model_copy(update={k: v for k, v in {"backend": backend}.items() if v is not None})
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    api_key = os.environ.get(settings.api_key_env) or None
    application = build_app(settings, model_source(cfg, model), tracking_uri(cfg), api_key, onnx)
    logger.info("API key %s", f"required (${settings.api_key_env})" if api_key else "not required")
    # Our middleware logs every request with its id, so uvicorn's own access log would only repeat it.
    uvicorn.run(application, host=host or settings.host, port=port or settings.port, log_config=None, access_log=False)
