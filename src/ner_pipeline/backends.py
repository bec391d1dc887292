"""Inference backends: padded token ids in, logits out, on PyTorch or ONNX Runtime; and which ONNX file to load.

A backend knows nothing about words, windows or labels; `ner_pipeline.predict.Predictor` builds the inputs, so
every backend sees exactly the same ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ner_pipeline.errors import ModelError

logger = logging.getLogger(__name__)

# backend → ONNX files to try, best first (the graph-optimized fp32 file when the export made one)
ONNX_FILES = {"onnx": ("model_optimized.onnx", "model.onnx"), "onnx-int8": ("model_quantized.onnx",)}
PARITY_FILE = "parity.json"  # written by the export stage: per variant, its file and whether it was accepted


def read_parity(folder: Path | None) -> dict[str, Any] | None:
    """The export's parity record in `folder`; None without one (no export folder, or an export made by hand)."""
    record = folder / PARITY_FILE if folder is not None else None
    if record is None or not record.is_file():
        return None
    return json.loads(record.read_text(encoding="utf-8"))


def accepted_variants(report: Mapping[str, Any]) -> dict[str, str]:
    """The variants a parity record accepted, each with its ONNX file: {"onnx-int8": "model_quantized.onnx", ...}."""
    return {name: row.get("file") for name, row in report.items() if isinstance(row, dict) and row.get("accepted")}


def onnx_file(folder: Path, backend: str) -> Path:
    """The ONNX file to load for `backend`: the best one present that the export's parity check accepted.

    Without a parity record (an export made by hand) the best file present is used; when the record accepts none
    of them, the backend was asked for explicitly, so the best file present is loaded with a warning.
    """
    present = [folder / name for name in ONNX_FILES[backend] if (folder / name).is_file()]
    if not present:
        return folder / ONNX_FILES[backend][-1]  # OnnxBackend names the missing file
    report = read_parity(folder)
    if report is None:
        return present[0]
    accepted = set(accepted_variants(report).values())
    chosen = next((path for path in present if path.name in accepted), None)
    if chosen is None:
        logger.warning(
            "%s: the export's parity check rejected %s; loading it because it was asked for", folder, present[0].name
        )
        return present[0]
    return chosen


class Backend(Protocol):
    """Anything that maps padded token ids to logits."""

    name: str

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """PyTorch inference with the fine-tuned `AutoModelForTokenClassification`."""

    name = "torch"

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForTokenClassification

        if threads:
            torch.set_num_threads(threads)
        self.model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
        return out.logits.float().numpy()


# Whether ONNX Runtime's worker threads spin between forward passes (its default) or sleep. Spinning answers the
# next pass sooner but takes a core from the Python work between passes. bench/infer.py's validation tuning chooses
# (`tuning.<backend>.matches_code`): off for fp32 (10% faster on validation), on for int8 (21% faster).
SPINNING = {"onnx": False, "onnx-int8": True}


class OnnxBackend:
    """ONNX Runtime inference on an exported graph (fp32, optimized or int8)."""

    def __init__(
        self, path: Path, name: str = "onnx", threads: int | None = None, spinning: bool | None = None
    ) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise ModelError(f"{path}: ONNX model not found; run the export stage (ner-pipeline run --only export)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if spinning is None:
            spinning = SPINNING.get(name, True)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.name = name

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self.session.run(["logits"], feed)[0]
