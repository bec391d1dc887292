"""Check the model `predict` or `serve` is given before loading it: one line, and a command that works instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ner_pipeline.artifacts import Artifact, ArtifactStore
from ner_pipeline.cli.common import tracking_uri
from ner_pipeline.config import PipelineConfig
from ner_pipeline.errors import ModelError

MODEL_HELP = "give a model folder (artifacts/train/<key>/model) or models:/NAME@alias"


def check_model_source(
    source: str, backend: str, onnx: str | None, cfg: PipelineConfig, retry: Callable[..., str]
) -> None:
    """Raise a one-line error for a model that cannot be loaded as asked.

    Args:
        source: `--model` (or the config's default): a folder or `models:/NAME@alias|/VERSION`.
        backend: auto, torch, onnx or onnx-int8.
        onnx: `--onnx`, the export folder for a model folder.
        cfg: The config (tracking URI for a registry source).
        retry: Builds the user's command with other options, e.g. `retry("--backend", "torch")`.

    Raises:
        RegistryError: no such registered model, version or alias.
        ModelError: not a model folder, or an ONNX backend without the ONNX graph it needs.
    """
    if source.startswith("models:/"):
        from ner_pipeline import registry

        registry.resolve_version(tracking_uri(cfg), source)
        return
    folder = Path(source)
    if not folder.is_dir():
        raise ModelError(f"--model {source}: no such folder; {MODEL_HELP}")
    if not (folder / "config.json").is_file():
        raise ModelError(f"--model {source}: not a model folder (no config.json); {MODEL_HELP}")
    if backend in ("auto", "torch"):
        return
    from ner_pipeline.predict import ONNX_FILES

    needed = ONNX_FILES[backend]
    if onnx is not None:
        if not any((Path(onnx) / name).is_file() for name in needed):
            raise ModelError(
                f"--onnx {onnx}: no {' or '.join(needed)} for --backend {backend}; give the export stage's folder "
                f"of this model (artifacts/export/<key>), or run on PyTorch: {retry('--backend', 'torch')}"
            )
        return
    if any((folder / name).is_file() for name in needed):
        return
    export = find_export(folder)
    if export is not None:
        raise ModelError(
            f"--backend {backend} needs this model's ONNX export, which --onnx names: "
            f"{retry('--backend', backend, '--onnx', str(export.path))}"
        )
    raise ModelError(
        f"--backend {backend} needs this model's ONNX export (--onnx), and none was found beside it; "
        f"run on PyTorch: {retry('--backend', 'torch')}"
    )


def find_export(model_dir: Path) -> Artifact | None:
    """The newest export artifact built from the train artifact `model_dir` belongs to (`<root>/train/<key>/model`)."""
    train = model_dir.resolve().parent
    if train.parent.name != "train":
        return None
    store = ArtifactStore(train.parent.parent)
    exports = [a for a in store.list() if a.stage == "export" and a.inputs.get("train") == train.name]
    return max(exports, key=lambda a: a.created, default=None)
