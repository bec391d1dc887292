"""Export stage: ONNX via optimum, an ONNX Runtime graph-optimized variant and a dynamic int8 variant.

Every variant is checked against PyTorch on validation sentences: the largest absolute logit difference and the
entity F1 delta. A variant whose F1 falls by more than the configured tolerance is marked rejected and is never
chosen as the serving default. The folder is self-contained: config, tokenizer and preprocessing.json sit beside
the .onnx files, so `Predictor.load(folder, backend="onnx")` needs nothing else.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, write_json_atomic
from ner_pipeline.config import ExportConfig
from ner_pipeline.errors import ExportError
from ner_pipeline.predict import PARITY_FILE, accepted_variants, pad_batch
from ner_pipeline.preprocessing import PREPROCESSING_FILE

logger = logging.getLogger(__name__)

STAGE = "export"
VERSION = "3"  # 2: int8 quantizes MatMul only; 3: int8 from the optimized graph, MatMul + Attention, u8s8
# variant name → file written by optimum (and the Predictor backend that loads it)
VARIANTS = {"onnx": "model.onnx", "onnx-optimized": "model_optimized.onnx", "onnx-int8": "model_quantized.onnx"}


def export_key(cfg: ExportConfig, ingest_key: str, train_key: str) -> str:
    """The export's cache key; `quantization: auto` is resolved first, so an int8 graph quantized for another
    CPU's instruction set (e.g. VNNI) is never reused on this one."""
    resolved = {**cfg.model_dump(mode="json"), "quantization": quantization_target(cfg.quantization)}
    return artifact_key(STAGE, VERSION, resolved, {"ingest": ingest_key, "train": train_key})


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def quantization_target(requested: str, flags: set[str] | None = None) -> str:
    """The instruction set to quantize for: the configured one, or the best this CPU has (auto)."""
    if requested != "auto":
        return requested
    flags = cpu_flags() if flags is None else flags
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "asimd" in flags:
        return "arm64"
    return "avx2"


def export_onnx(model_dir: Path, out: Path, opset: int) -> Path:
    """Export a token-classification model folder to `out/model.onnx` with optimum."""
    from optimum.exporters.onnx import main_export

    try:
        main_export(
            str(model_dir),
            output=str(out),
            task="token-classification",
            opset=opset,
            library_name="transformers",
            do_validation=False,  # our parity check below compares entities, not only tensors
        )
    except Exception as exc:
        raise ExportError(f"ONNX export of {model_dir} failed: {exc}") from exc
    shutil.copy2(model_dir / PREPROCESSING_FILE, out / PREPROCESSING_FILE)
    return out / VARIANTS["onnx"]


def optimize_onnx(folder: Path) -> Path:
    """ONNX Runtime transformer fusions (attention, layer norm, GELU) for CPU, level 2 (no hardware layout)."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(str(folder), file_names=[VARIANTS["onnx"]])
    optimizer.optimize(OptimizationConfig(optimization_level=2, optimize_for_gpu=False), save_dir=str(folder))
    return folder / VARIANTS["onnx-optimized"]


# Dynamic int8 per instruction set: weights s8 per channel, activations u8 (ORT's fast u8s8 kernels).
# Without VNNI, u8s8 products go through VPMADDUBSW, which can saturate: 7-bit weights (reduce_range) avoid it.
# On this AVX2 machine u8s8 + reduce_range ran 1.2x faster than the u8u8 that optimum's avx2 preset picks.
REDUCE_RANGE = {"avx2": True, "avx512": True, "avx512_vnni": False, "arm64": False}
# MatMul, and Attention where the graph optimizer fused it (quantized as QAttention: 1.17x on top of MatMul alone).
# Embedding lookups (Gather) stay fp32: quantizing them cost 0.6 F1 points on CoNLL-2003 for no speed.
QUANTIZED_OPS = ["MatMul", "Attention"]


def quantize_onnx(
    folder: Path,
    target: str,
    ops: Sequence[str] = tuple(QUANTIZED_OPS),
    reduce_range: bool | None = None,
    out: Path | None = None,
) -> Path:
    """Dynamic int8 quantization for the target instruction set, of the graph-optimized model when there is one.

    `ops` and `reduce_range` (None: the target's) default to the settings bench/infer.py chose on validation; the
    benchmark passes its candidates, and `out` (default: the folder's model_quantized.onnx) to keep them apart.

    Raises:
        ExportError: an unknown target.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if target not in REDUCE_RANGE:
        raise ExportError(f"export.quantization must be one of auto, {', '.join(REDUCE_RANGE)} (got {target!r})")
    source = folder / VARIANTS["onnx-optimized"]
    if not source.is_file():
        source = folder / VARIANTS["onnx"]
    out = out or folder / VARIANTS["onnx-int8"]
    quantize_dynamic(
        str(source),
        str(out),
        op_types_to_quantize=list(ops),
        per_channel=True,
        weight_type=QuantType.QInt8,
        reduce_range=REDUCE_RANGE[target] if reduce_range is None else reduce_range,
        # The fused contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference; their outputs are fp32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out


def parity(
    model_dir: Path, folder: Path, variants: list[str], sentences: list[list[str]], gold: list[list[str]]
) -> dict[str, Any]:
    """Compare each ONNX variant with PyTorch: max |logit difference| over windows and entity F1 delta."""
    from ner_pipeline.backends import OnnxBackend
    from ner_pipeline.evaluate import entity_scores
    from ner_pipeline.predict import Predictor

    reference = Predictor.load(model_dir, backend="torch")
    windows = _probe_windows(reference, sentences)
    torch_logits = [reference.backend.logits(ids, mask) for ids, mask in windows]
    torch_f1 = entity_scores(gold, reference.predict_words(sentences))["f1"]
    results: dict[str, Any] = {"torch": {"f1": torch_f1}}
    for name in variants:
        backend = OnnxBackend(folder / VARIANTS[name], name)
        diff = max(
            float(np.abs(backend.logits(ids, mask) - ref).max())
            for (ids, mask), ref in zip(windows, torch_logits, strict=True)
        )
        candidate = Predictor(backend, reference.tokenizer, reference.prep)
        f1 = entity_scores(gold, candidate.predict_words(sentences))["f1"]
        results[name] = {"max_abs_logit_diff": diff, "f1": f1, "f1_delta": f1 - torch_f1}
    return results


def _probe_windows(predictor: Any, sentences: list[list[str]], batch: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded batches of the validation windows, as the predictor would build them."""
    seqs = [w.input_ids for s in sentences for w in predictor.encoder.encode(s)]
    return [pad_batch(seqs[b : b + batch], predictor.pad_id) for b in range(0, len(seqs), batch)]


def serving_default(report: dict[str, Any]) -> str:
    """The fastest accepted variant: int8, then the optimized graph, then plain ONNX, else PyTorch."""
    accepted = accepted_variants(report)
    return next((name for name in ("onnx-int8", "onnx-optimized", "onnx") if name in accepted), "torch")


def build_variants(cfg: ExportConfig, model_dir: Path, folder: Path) -> tuple[list[str], str]:
    """Write the configured ONNX variants into `folder`; return their names and the int8 instruction set."""
    export_onnx(model_dir, folder, cfg.opset)
    variants = ["onnx"]
    if cfg.optimize:
        optimize_onnx(folder)
        variants.append("onnx-optimized")
    target = quantization_target(cfg.quantization)
    if cfg.quantize:
        quantize_onnx(folder, target)
        variants.append("onnx-int8")
    return variants, target


def judge_parity(report: dict[str, Any], variants: list[str], f1_tolerance: float) -> None:
    """Mark each variant accepted or rejected (F1 within the tolerance of PyTorch's) and name its file."""
    for name in variants:
        row = report[name]
        row["accepted"] = row["f1_delta"] >= -f1_tolerance
        row["file"] = VARIANTS[name]
        if not row["accepted"]:
            logger.warning(
                "%s rejected: F1 falls by %.2f points (tolerance %.2f)",
                name,
                -row["f1_delta"] * 100,
                f1_tolerance * 100,
            )
    report["default"] = serving_default(report)


def run_export(
    cfg: ExportConfig, ingest_artifact: Artifact, train_artifact: Artifact, store: ArtifactStore
) -> Artifact:
    """Build (or reuse) the export artifact: ONNX variants, their parity record and the serving default."""
    from ner_pipeline.ingest import load_splits, read_labels

    key = export_key(cfg, ingest_artifact.key, train_artifact.key)

    def produce(folder: Path) -> dict[str, Any]:
        model_dir = train_artifact.path / "model"  # read only on a miss: a remote artifact is downloaded then
        variants, target = build_variants(cfg, model_dir, folder)
        validation = load_splits(ingest_artifact)["validation"]
        limit = cfg.parity_sentences or len(validation)
        names = read_labels(ingest_artifact)
        sentences = validation["tokens"][:limit]
        gold = [[names[i] for i in row] for row in validation["ner_tags"][:limit]]
        report = parity(model_dir, folder, variants, sentences, gold)
        judge_parity(report, variants, cfg.f1_tolerance)
        report["quantization_target"] = target
        report["sentences"] = len(sentences)
        write_json_atomic(folder / PARITY_FILE, report)
        logger.info("export: serving default %s", report["default"])
        numbers = ("max_abs_logit_diff", "f1", "f1_delta")
        flat = {f"{n}_{k}": v for n in variants for k, v in report[n].items() if k in numbers}
        return {**flat, "torch_f1": report["torch"]["f1"], "default": report["default"], "quantization_target": target}

    return store.build(
        STAGE, key, produce, inputs={"ingest": ingest_artifact.key, "train": train_artifact.key}, config=cfg
    )
