"""What to serve: a model folder or a registry alias, on the best backend its export's parity check accepted."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ner_pipeline.errors import ModelError
from ner_pipeline.export import serving_default
from ner_pipeline.predict import Predictor, read_parity
from ner_pipeline.serve.schemas import ModelInfo
from ner_pipeline.serve.state import ModelHandle


def choose_backend(requested: str, parity: dict[str, Any] | None) -> str:
    """The backend to load: the one requested, or for `auto` the export's serving default.

    `auto` gives onnx-int8 when its parity check passed, else onnx (optimized or plain) when accepted, else torch.
    """
    if requested != "auto":
        return requested
    default = serving_default(parity or {})
    return "onnx" if default == "onnx-optimized" else default  # the onnx backend loads the optimized graph itself


def public_name(folder: Path) -> str:
    """What the service calls a served folder: its last two names (`<key>/model` for a train artifact), never the
    full path, which would tell every client how the server's disks are laid out."""
    parts = Path(folder).resolve().parts[-2:]
    return "/".join(p for p in parts if p not in ("/", ""))


def load_handle(
    source: str, backend: str, tracking_uri: str | None, onnx: str | None = None, threads: int | None = None
) -> ModelHandle:
    """Load what to serve from a model folder or `models:/NAME@alias`, on the best accepted backend.

    Args:
        source: A model folder or a registry URI (whose logged model carries its ONNX export).
        backend: auto, torch, onnx or onnx-int8.
        tracking_uri: MLflow URI for registry sources.
        onnx: The export folder for a model-folder source (an export artifact), if any.
        threads: Inference threads (None: the runtime's default).
    """
    # A registry model is downloaded into a folder the handle owns (deleted by `close`, or here on failure).
    workdir = Path(tempfile.mkdtemp(prefix="ner-serve-")) if source.startswith("models:/") else None
    try:
        return _load_handle(source, backend, tracking_uri, onnx, threads, workdir)
    except BaseException:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _load_handle(
    source: str, backend: str, tracking_uri: str | None, onnx: str | None, threads: int | None, workdir: Path | None
) -> ModelHandle:
    if workdir is not None:
        from ner_pipeline import registry

        if tracking_uri is None:
            raise ModelError(f"{source}: a registry URI needs an MLflow tracking URI")
        fetched = registry.fetch_model(source, tracking_uri, workdir)
        model_dir, onnx_dir = fetched.model_dir, fetched.onnx_dir
        name, version, alias, metrics = fetched.name, fetched.version, fetched.alias, fetched.metrics
    else:
        model_dir = Path(source)
        onnx_dir = Path(onnx) if onnx else None
        name, version, alias, metrics = public_name(model_dir), None, None, {}
    chosen = choose_backend(backend, read_parity(onnx_dir))
    predictor = Predictor.load(model_dir, backend=chosen, onnx_dir=onnx_dir, threads=threads)  # type: ignore[arg-type]
    info = ModelInfo(
        name=name,
        version=version,
        alias=alias,
        source=source if workdir is not None else name,
        backend=chosen,
        labels=predictor.labels,
        metrics={k: v for k, v in metrics.items() if not k.startswith(("validation_f1_", "test_f1_ci"))},
    )
    return ModelHandle(predictor=predictor, info=info, workdir=workdir)
