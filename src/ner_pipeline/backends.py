"""Inference backends: padded token ids in, logits out, on PyTorch or ONNX Runtime.

A backend knows nothing about words, windows or labels; `ner_pipeline.predict.Predictor` builds the inputs, so
every backend sees exactly the same ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ner_pipeline.errors import ModelError


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


class OnnxBackend:
    """ONNX Runtime inference on an exported graph (fp32, optimized or int8)."""

    def __init__(self, path: Path, name: str = "onnx", threads: int | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise ModelError(f"{path}: ONNX model not found; run the export stage (ner-pipeline run --only export)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.name = name

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self.session.run(["logits"], feed)[0]
