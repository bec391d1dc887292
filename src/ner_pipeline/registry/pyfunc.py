"""The model as MLflow stores it: a pyfunc wrapper around our predictor, its signature and its requirements.

`models:/NAME@production` loaded with `mlflow.pyfunc.load_model` (or `mlflow models serve`) predicts exactly
like `ner_pipeline.predict.Predictor` on the same folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ner_pipeline

# What the logged model's code (ner_pipeline.predict and the modules it imports) needs at load time.
PYFUNC_REQUIREMENTS = ("torch", "transformers", "onnxruntime", "mlflow", "numpy", "regex", "pydantic", "pyyaml")
# Our package travels with the model, so `mlflow models serve` works where ner-pipeline is not installed.
PACKAGE_DIR = Path(ner_pipeline.__file__).resolve().parent


def pip_requirements() -> list[str]:
    """Pinned to the versions that trained and exported the model (ner-pipeline itself goes in code_paths)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in PYFUNC_REQUIREMENTS]


def pyfunc_signature() -> tuple[Any, Any]:
    """Input schema (a `text` column of strings) and an example for the logged model."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"text": ["Angela Merkel met Emmanuel Macron in Paris ."]})
    return infer_signature(example), example


def make_pyfunc_model() -> Any:
    """An MLflow PythonModel that serves raw text through our predictor (so `models:/...` predicts like we do)."""
    import mlflow.pyfunc

    class NerPyfuncModel(mlflow.pyfunc.PythonModel):
        """Raw text in, entities with character offsets out; runs `ner_pipeline.predict.Predictor`."""

        def load_context(self, context: Any) -> None:
            from ner_pipeline.predict import Predictor

            self.predictor = Predictor.load(Path(context.artifacts["model"]), backend="torch")

        # No type hints here: MLflow would try to derive a schema from them; the signature is given explicitly.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
            aggregation = (params or {}).get("aggregation", "first")
            return [[e.model_dump() for e in ents] for ents in self.predictor.predict(texts, aggregation=aggregation)]

    return NerPyfuncModel()
