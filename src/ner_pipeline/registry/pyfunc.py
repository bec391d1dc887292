"""The model as MLflow stores it: a pyfunc wrapper around our predictor, its files, signature and requirements.

A registered version serves one variant: the fastest ONNX graph the export's parity check accepted (int8, then the
graph-optimized fp32, then plain fp32), or PyTorch when the check accepted none (or there was no export). The
logged model carries only what that variant needs, each file once:

- `model/`: config (labels), tokenizer and preprocessing contract; the PyTorch weights only when PyTorch serves.
- `onnx/`: the served ONNX file and the export's parity record (absent when PyTorch serves).

`models:/NAME@production` loaded with `mlflow.pyfunc.load_model` (or `mlflow models serve`) then predicts like
`ner-pipeline serve` on the same version, and `params={"aggregation": "max"}` reaches the predictor.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ner_pipeline
from ner_pipeline.errors import RegistryError
from ner_pipeline.export import serving_default
from ner_pipeline.predict import PARITY_FILE, accepted_variants, read_parity

logger = logging.getLogger(__name__)

# Distributions the logged model's code (ner_pipeline.predict and what it imports) needs at load time, by backend.
# seqeval reads entity spans; pandas carries the pyfunc input; torch only when PyTorch serves (its PyPI wheel is
# several GB, and an ONNX-served model never imports it).
COMMON_REQUIREMENTS = ("mlflow", "transformers", "numpy", "pandas", "regex", "pydantic", "pyyaml", "seqeval")
BACKEND_REQUIREMENTS = {"torch": ("torch",), "onnx": ("onnxruntime",), "onnx-int8": ("onnxruntime",)}
# Our package travels with the model, so `mlflow models serve` works where ner-pipeline is not installed.
PACKAGE_DIR = Path(ner_pipeline.__file__).resolve().parent
# Files of a model folder that only PyTorch reads (weights, their shard indexes, pickled training state).
TORCH_ONLY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".index.json")
# The aggregation a pyfunc call uses when its params name none (as `Predictor.predict`).
DEFAULT_PARAMS = {"aggregation": "first"}


@dataclass(frozen=True)
class ServedVariant:
    """What a registered version serves: the `Predictor` backend and, for ONNX, the file the parity check accepted."""

    backend: str
    onnx_file: Path | None = None


def served_variant(onnx_dir: Path | None) -> ServedVariant:
    """The variant an export folder's parity record makes the serving default.

    Without a parity record (no export, or one made by hand) nothing was accepted, so PyTorch serves.

    Raises:
        RegistryError: the record accepts a variant whose file is not in the folder (a damaged export).
    """
    report = read_parity(onnx_dir)
    default = serving_default(report or {})
    if onnx_dir is None or report is None or default == "torch":
        return ServedVariant("torch")
    path = onnx_dir / accepted_variants(report)[default]
    if not path.is_file():
        raise RegistryError(
            f"{onnx_dir}/{PARITY_FILE}: accepts {default} ({path.name}) but the file is missing; "
            "rebuild the export: the `run` that built it, with its --config and --set flags and `--only export`"
        )
    # The onnx backend loads the graph-optimized file itself when it is present and accepted.
    return ServedVariant("onnx" if default == "onnx-optimized" else default, path)


def is_torch_only(path: Path) -> bool:
    """Whether a model-folder file is read only by PyTorch (weights), not by the tokenizer or an ONNX backend."""
    return path.name.endswith(TORCH_ONLY_SUFFIXES) and not path.name.startswith("tokenizer")


def stage_model_files(model_dir: Path, onnx_dir: Path | None, dest: Path) -> tuple[ServedVariant, dict[str, str]]:
    """Lay out in `dest` the files the served variant needs, and name them as pyfunc artifacts.

    Files are hard-linked where the filesystem allows (MLflow copies them into the model anyway).

    Returns:
        The served variant and the `artifacts` mapping for `mlflow.pyfunc.log_model` ("model", and "onnx" when
        an ONNX graph serves).
    """
    variant = served_variant(onnx_dir)
    model_out = dest / "model"
    model_out.mkdir(parents=True)
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and (variant.backend == "torch" or not is_torch_only(path)):
            _link_or_copy(path, model_out / path.name)
    artifacts = {"model": str(model_out)}
    if variant.onnx_file is not None:
        onnx_out = dest / "onnx"
        onnx_out.mkdir()
        _link_or_copy(variant.onnx_file, onnx_out / variant.onnx_file.name)
        _link_or_copy(variant.onnx_file.parent / PARITY_FILE, onnx_out / PARITY_FILE)
        artifacts["onnx"] = str(onnx_out)
    logger.info(
        "logged model serves %s%s", variant.backend, f" ({variant.onnx_file.name})" if variant.onnx_file else ""
    )
    return variant, artifacts


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def pip_requirements(backend: str) -> list[str]:
    """PyPI pins of what the served variant needs, at the versions that trained and exported the model.

    Local version labels are dropped (`torch==2.13.0+cpu` becomes `torch==2.13.0`): PyPI serves no such version,
    so `mlflow models serve --env-manager virtualenv` could not install one. ner-pipeline itself travels in
    code_paths.
    """
    from importlib.metadata import version

    from packaging.version import Version

    names = (*COMMON_REQUIREMENTS, *BACKEND_REQUIREMENTS[backend])
    return [f"{name}=={Version(version(name)).public}" for name in names]


def pyfunc_signature() -> tuple[Any, Any]:
    """Input schema (a `text` column of strings) with the `aggregation` parameter, and an input example."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": ["Angela Merkel met Emmanuel Macron in Paris ."]})
    return infer_signature(example, params=DEFAULT_PARAMS), example


def make_pyfunc_model() -> Any:
    """An MLflow PythonModel that serves raw text through our predictor (so `models:/...` predicts like we do)."""
    import mlflow.pyfunc

    class NerPyfuncModel(mlflow.pyfunc.PythonModel):
        """Raw text in, entities with character offsets out; runs `ner_pipeline.predict.Predictor` on the variant
        the export's parity check accepted (PyTorch when it accepted none)."""

        def load_context(self, context: Any) -> None:
            from ner_pipeline.predict import Predictor

            onnx_dir = Path(context.artifacts["onnx"]) if "onnx" in context.artifacts else None
            backend = served_variant(onnx_dir).backend
            self.predictor = Predictor.load(Path(context.artifacts["model"]), backend=backend, onnx_dir=onnx_dir)  # type: ignore[arg-type]

        # No type hints here: MLflow would try to derive a schema from them; the signature is given explicitly.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
            aggregation = {**DEFAULT_PARAMS, **(params or {})}["aggregation"]
            return [[e.model_dump() for e in ents] for ents in self.predictor.predict(texts, aggregation=aggregation)]

    return NerPyfuncModel()
