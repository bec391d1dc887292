"""bench/infer.py's settings, chosen on the CoNLL-2003 validation split only (the test split is never looked at).

- Tokens per forward pass (`predict.BATCH_TOKENS`): the candidate with the most sentences/s on raw validation text
  at batch 32, among those whose F1 on that text is within `GOAL_POINTS` of the best candidate's (an int8 graph
  quantizes its activations per forward pass, so how sentences are batched can move its F1).
- ONNX Runtime's spinning threads (`backends.SPINNING`): on or off, likewise.
- The int8 graph (`export.QUANTIZED_OPS`, `export.REDUCE_RANGE`): every operator list x reduce_range is quantized
  and scored on validation (word-level F1 against PyTorch's); the fastest whose F1 drop is at most `GOAL_POINTS`
  wins, or the most accurate when none is.

Candidates are timed in turns (each repeat times every candidate once, one loaded at a time) and compared by their
median, so a slow spell of the machine does not favour one of them. A candidate replaces the code's current setting
only when it is more than `MARGIN` faster than it: two runs of this tuning on 2 cores ranked candidates within a few
per cent of each other in opposite orders (512 vs 256 torch tokens per pass), and a default that flips with the
noise of each run is not a choice.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from infer_data import Split, sentence_f1

from ner_pipeline.evaluate import entity_scores, predict_split

GOAL_POINTS = 0.3  # the largest F1 loss (points) a setting may cost
MARGIN = 0.05  # how much faster than the code's setting a candidate must be to replace it
TOKENS = {"torch": [128, 256, 512, 1024], "onnx": [32, 64, 128, 256, 512], "onnx-int8": [32, 64, 128, 256, 512]}
INT8_OPS = [("MatMul",), ("MatMul", "Attention"), ("MatMul", "Attention", "Gather")]
REDUCE_RANGE = [True, False]
logger = logging.getLogger("bench.infer_tuning")


def make_predictor(ctx: dict[str, Any], backend: str, settings: dict[str, Any]) -> Any:
    """Our predictor on `backend` with explicit settings (max_batch_tokens, spinning, onnx_file); unset ones keep
    the code's defaults."""
    from ner_pipeline.backends import OnnxBackend, onnx_file
    from ner_pipeline.predict import Predictor
    from ner_pipeline.preprocessing import Preprocessing, load_tokenizer

    model_dir = Path(ctx["model_dir"])
    tokens = settings.get("max_batch_tokens")
    if backend == "torch":
        return Predictor.load(model_dir, "torch", batch_size=32, max_batch_tokens=tokens)
    path = Path(settings.get("onnx_file") or onnx_file(Path(ctx["onnx_dir"]), backend))
    engine = OnnxBackend(path, backend, spinning=settings.get("spinning"))
    return Predictor(engine, load_tokenizer(str(model_dir)), Preprocessing.load(model_dir), 32, tokens)


def word_f1(predictor: Any, split: Split) -> float:
    """Entity F1 of pre-split words, as the evaluate stage scores (neighbours as context where trained so)."""
    return entity_scores(split.gold, predict_split(predictor, split.tokens, split.doc_ids))["f1"]


def fastest(
    ctx: dict[str, Any],
    backend: str,
    base: dict[str, Any],
    candidates: list[dict[str, Any]],
    split: Split,
    args: argparse.Namespace,
    default: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Time each candidate's raw-text tagging of the first validation sentences at batch 32, in turns; return the
    fastest of those whose F1 on them is within `GOAL_POINTS` of the best (an int8 graph quantizes activations per
    forward pass, so batching can move its F1), or `candidates[default]` (the code's setting) unless that one is
    more than `MARGIN` slower, and every candidate's numbers."""
    texts = split.texts[: args.tune_sentences]
    timings: list[list[float]] = [[] for _ in candidates]
    f1: list[float] = [0.0] * len(candidates)
    for _ in range(args.repeats):
        for i, candidate in enumerate(candidates):
            predictor = make_predictor(ctx, backend, {**base, **candidate})
            predictor.predict(texts[:32])  # warm-up
            outputs = []
            started = time.perf_counter()
            for b in range(0, len(texts), 32):
                outputs += predictor.predict(texts[b : b + 32])
            timings[i].append(len(texts) / (time.perf_counter() - started))
            f1[i] = sentence_f1(split, [[(e.start, e.end, e.label) for e in ents] for ents in outputs])
            del predictor
    rows = [
        {**c, "validation_sentences_per_s": statistics.median(t), "validation_raw_text_f1": f}
        for c, t, f in zip(candidates, timings, f1, strict=True)
    ]
    for row in rows:
        logger.info("%s %s", backend, row)
    accurate = [i for i in range(len(rows)) if f1[i] >= max(f1) - GOAL_POINTS / 100]
    best = keep_default([rows[i]["validation_sentences_per_s"] for i in range(len(rows))], accurate, default)
    return candidates[best], rows


def keep_default(speeds: list[float], allowed: list[int], default: int | None) -> int:
    """The fastest allowed candidate, unless the default is allowed and within `MARGIN` of it."""
    best = max(allowed, key=lambda i: speeds[i])
    if default in allowed and speeds[best] <= speeds[default] * (1 + MARGIN):
        return default
    return best


def quantized(ctx: dict[str, Any], ops: tuple[str, ...], reduce_range: bool) -> Path:
    """The export's graph quantized with these settings (cached beside the benchmark's artifacts)."""
    from train_conll import CACHE

    from ner_pipeline.export import quantization_target, quantize_onnx

    key = (
        ctx["export_key"]
        if ctx["export_key"] != "given"
        else hashlib.sha256(str(ctx["onnx_dir"]).encode()).hexdigest()[:16]
    )
    folder = CACHE / "int8-candidates" / key / f"{'-'.join(ops)}_rr{int(reduce_range)}"
    path = folder / "model_quantized.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "partial.onnx"
        target = ctx.get("target") or quantization_target("auto")
        quantize_onnx(Path(ctx["onnx_dir"]), target, ops=ops, reduce_range=reduce_range, out=partial)
        partial.rename(path)
    return path


def choose_int8(ctx: dict[str, Any], validation: Split, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The int8 graph to use: fastest within `GOAL_POINTS` of PyTorch's validation F1; its path and the record."""
    reference = word_f1(make_predictor(ctx, "torch", {}), validation)
    variants = []
    for ops, reduce_range in itertools.product(INT8_OPS, REDUCE_RANGE):
        path = quantized(ctx, ops, reduce_range)
        f1 = word_f1(make_predictor(ctx, "onnx-int8", {"onnx_file": str(path)}), validation)
        drop = (reference - f1) * 100
        variants.append(
            {"ops": list(ops), "reduce_range": reduce_range, "validation_f1": f1, "validation_f1_drop": drop}
        )
        logger.info("int8 %s reduce_range=%s: validation F1 %.4f (drop %.2f points)", ops, reduce_range, f1, drop)
    files = [{"onnx_file": str(quantized(ctx, tuple(v["ops"]), v["reduce_range"]))} for v in variants]
    _, timed = fastest(ctx, "onnx-int8", {}, files, validation, args)
    for variant, row in zip(variants, timed, strict=True):
        variant["validation_sentences_per_s"] = row["validation_sentences_per_s"]
    within = [i for i, v in enumerate(variants) if v["validation_f1_drop"] <= GOAL_POINTS]
    code = code_defaults("onnx-int8", ctx.get("target"))
    default = next(
        (i for i, v in enumerate(variants) if (v["ops"], v["reduce_range"]) == (code["ops"], code["reduce_range"])),
        None,
    )
    if within:
        best = keep_default([v["validation_sentences_per_s"] for v in variants], within, default)
    else:
        best = min(range(len(variants)), key=lambda i: variants[i]["validation_f1_drop"])
    record = {"torch_validation_f1": reference, "variants": variants, "chosen_variant": variants[best]}
    return files[best]["onnx_file"], record


def code_defaults(backend: str, target: str | None) -> dict[str, Any]:
    """What the code uses today, to compare with the validation choice."""
    from ner_pipeline import backends, export, predict

    defaults: dict[str, Any] = {"max_batch_tokens": predict.BATCH_TOKENS[backend]}
    if backend != "torch":
        defaults["spinning"] = backends.SPINNING[backend]
    if backend == "onnx-int8":
        defaults["ops"] = list(export.QUANTIZED_OPS)
        defaults["reduce_range"] = export.REDUCE_RANGE[target or export.quantization_target("auto")]
    return defaults


def tune(backend: str, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Choose `backend`'s settings on validation; return the choice, every candidate's numbers and the code's."""
    validation = ctx["splits"]["validation"]
    timed_sentences = min(args.tune_sentences, len(validation.texts))
    record: dict[str, Any] = {"backend": backend, "validation_sentences_timed": timed_sentences}
    chosen: dict[str, Any] = {}
    if backend == "onnx-int8":
        chosen["onnx_file"], record["int8"] = choose_int8(ctx, validation, args)
    code = code_defaults(backend, ctx.get("target"))
    candidates = [{"max_batch_tokens": t} for t in TOKENS[backend]]
    default = next((i for i, c in enumerate(candidates) if c["max_batch_tokens"] == code["max_batch_tokens"]), None)
    pick, record["candidates"] = fastest(ctx, backend, chosen, candidates, validation, args, default)
    chosen.update(pick)
    if backend != "torch":
        spins = [{"spinning": True}, {"spinning": False}]
        default = spins.index({"spinning": code["spinning"]})
        pick, timed = fastest(ctx, backend, chosen, spins, validation, args, default)
        chosen.update(pick)
        record["candidates"] += [{**row, "max_batch_tokens": chosen["max_batch_tokens"]} for row in timed]
    record["chosen"] = chosen
    record["code"] = code
    comparable = {k: v for k, v in chosen.items() if k != "onnx_file"}
    if backend == "onnx-int8":
        comparable.update({k: record["int8"]["chosen_variant"][k] for k in ("ops", "reduce_range")})
    record["matches_code"] = comparable == record["code"]
    record["chosen_settings"] = comparable
    return record
