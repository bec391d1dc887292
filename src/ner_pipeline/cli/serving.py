"""Using a model: `predict` on raw text and `serve` over HTTP."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from ner_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, load, tracking_uri, user_errors
from ner_pipeline.cli.hints import Invocation, invocation
from ner_pipeline.config import PipelineConfig, ServeConfig
from ner_pipeline.errors import PredictError
from ner_pipeline.modelref import check_model_source

app = typer.Typer()
logger = logging.getLogger("ner_pipeline.cli")

# Typer lists and enforces these before a model loads (the same names as serve.backend and predict.Aggregation).
BackendName = Literal["auto", "torch", "onnx", "onnx-int8"]
AggregationName = Literal["first", "average", "max"]

ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model folder or models:/NAME@alias (default: registry production).")
]
BackendOpt = Annotated[
    BackendName | None, typer.Option(help="Inference backend.", show_default="serve.backend, auto: the best accepted")
]
OnnxOpt = Annotated[str | None, typer.Option(help="Export folder for a model folder (ONNX backends).")]


def model_source(cfg: PipelineConfig, model: str | None) -> str:
    """The model to load: --model, else serve.model_uri, else the registry's production alias."""
    return model or cfg.serve.model_uri or f"models:/{cfg.registry.model_name}@production"


def read_text_file(path: Path, option: str) -> str:
    """The contents of a UTF-8 text file named by `option`, or a one-line PredictError saying what is wrong."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PredictError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise PredictError(f"{option} {path}: a folder, not a text file") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise PredictError(
            f"{option} {path} line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise PredictError(f"{option} {path}: {exc.strerror}") from None


def read_texts(text: list[str] | None, file: Path | None, jsonl: Path | None) -> list[str]:
    """The texts to tag: arguments, then the lines of --file, then the "text" of each --jsonl line."""
    texts = list(text or [])
    if file is not None:
        texts += [line for line in read_text_file(file, "--file").splitlines() if line.strip()]
    if jsonl is not None:
        for number, line in enumerate(read_text_file(jsonl, "--jsonl").splitlines(), start=1):
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
    backend: BackendOpt = None,
    onnx: OnnxOpt = None,
    aggregation: Annotated[AggregationName, typer.Option(help="How subword scores make a word's.")] = "first",
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Tag raw text; prints one JSON line per text with its entities and character offsets."""
    from ner_pipeline.serve import load_handle

    cfg = load(config, set_)
    texts = read_texts(text, file, jsonl)
    source, chosen = model_source(cfg, model), backend or cfg.serve.backend

    def retry(*options: str) -> str:  # this very command with other options, for hints
        return predict_command(invocation(config, set_), text, file, jsonl, model, aggregation, *options)

    check_model_source(source, chosen, onnx, tracking_uri(cfg), retry)
    handle = load_handle(source, chosen, tracking_uri(cfg), onnx, cfg.serve.threads)
    try:
        results = handle.predictor.predict(texts, aggregation=aggregation)
    finally:
        handle.close()
    for original, entities in zip(texts, results, strict=True):
        typer.echo(json.dumps({"text": original, "entities": [e.model_dump() for e in entities]}, ensure_ascii=False))


def predict_command(
    invoked: Invocation,
    text: list[str] | None,
    file: Path | None,
    jsonl: Path | None,
    model: str | None,
    aggregation: str,
    *options: str,
) -> str:
    """The `predict` command as given, with `options` (e.g. another backend) in place of --backend/--onnx."""
    args = [*(["--model", model] if model else []), *options]
    args += [*(["--file", str(file)] if file else []), *(["--jsonl", str(jsonl)] if jsonl else [])]
    if aggregation != "first":
        args += ["--aggregation", aggregation]
    return invoked.command("predict", *args, positional=text or ())


DEFAULTS = ServeConfig()


@app.command()
@user_errors
def serve(
    model: ModelOpt = None,
    backend: BackendOpt = None,
    onnx: OnnxOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind.", show_default=f"serve.host, {DEFAULTS.host}")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on.", show_default=f"serve.port, {DEFAULTS.port}")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Serve the model over HTTP (FastAPI + uvicorn): POST /predict, /health, /ready, /model, docs at /docs."""
    import uvicorn

    from ner_pipeline.serve import RequestIdFilter, build_app

    cfg = load(config, set_)
    settings = cfg.serve.model_copy(update={k: v for k, v in {"backend": backend}.items() if v is not None})
    source = model_source(cfg, model)
    # Fail here in one line, not in uvicorn's start-up with a traceback.
    check_model_source(
        source,
        settings.backend,
        onnx,
        tracking_uri(cfg),
        lambda *options: serve_command(config, set_, source, *options),
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    api_key = os.environ.get(settings.api_key_env) or None
    application = build_app(settings, source, tracking_uri(cfg), api_key, onnx)
    logger.info("API key %s", f"required (${settings.api_key_env})" if api_key else "not required")
    # Our middleware logs every request with its id, so uvicorn's own access log would only repeat it.
    uvicorn.run(application, host=host or settings.host, port=port or settings.port, log_config=None, access_log=False)


def serve_command(config: Path, overrides: list[str] | None, source: str, *options: str) -> str:
    return invocation(config, overrides).command("serve", "--model", source, *options)
