"""Train stage: fine-tune a token classifier with the Hugging Face `Trainer`.

Checkpoints go to a persistent work folder of the artifact store, so a killed run resumes from its last
checkpoint when the stage runs again with the same inputs. Validation is scored at the word level (windows merged
back into whole sentences) with seqeval, and early stopping keeps the best checkpoint. Under `torchrun` every
rank trains and only rank 0 writes the artifact.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, write_json_atomic
from ner_pipeline.config import ModelConfig, TrainConfig
from ner_pipeline.modelref import WEIGHT_PATTERNS, model_fingerprint, resolve_model_ref
from ner_pipeline.tokenize import IGNORE, Preprocessing, load_tokenized, merge_windows

logger = logging.getLogger(__name__)

STAGE = "train"
VERSION = "1"
MODEL_INPUTS = ["input_ids", "attention_mask", "labels"]
# Settings that change how fast training runs, not what it produces.
NOT_IN_KEY = {"num_threads"}


def train_key(model_cfg: ModelConfig, train_cfg: TrainConfig, tokenize_key: str) -> str:
    """Key of the train artifact: base model (and its weights when local), hyperparameters, tokenize key."""
    config = {
        "model": model_cfg,
        "weights_sha256": model_fingerprint(model_cfg.name_or_path, WEIGHT_PATTERNS),
        "train": train_cfg.model_dump(mode="json", exclude=NOT_IN_KEY),
    }
    return artifact_key(STAGE, VERSION, config, {"tokenize": tokenize_key})


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class WordScorer:
    """Turns window-level logits of a split into word-level seqeval scores (the Trainer's compute_metrics)."""

    word_ids: list[list[int]]
    labels: list[list[int]]
    groups: list[list[int]]  # window rows per sentence, in order
    names: list[str]

    @classmethod
    def from_split(cls, split: Any, names: list[str]) -> WordScorer:
        rows: dict[int, list[int]] = defaultdict(list)
        for row, sentence in enumerate(split["sentence_id"]):
            rows[sentence].append(row)
        return cls(split["word_ids"], split["labels"], [rows[s] for s in sorted(rows)], names)

    def words(self, per_token: Sequence[Sequence[int]]) -> tuple[list[list[str]], list[list[str]]]:
        """Gold and predicted word labels, one list per sentence."""
        gold, pred = [], []
        for rows in self.groups:
            n_words = max(max(self.word_ids[r]) for r in rows) + 1
            word_ids = [self.word_ids[r] for r in rows]
            gold_ids = merge_windows(word_ids, [self.labels[r] for r in rows], n_words)
            pred_ids = merge_windows(word_ids, [per_token[r] for r in rows], n_words)
            gold.append([self.names[i] if i != IGNORE else "O" for i in gold_ids])
            pred.append([self.names[i] for i in pred_ids])
        return gold, pred

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        from ner_pipeline.evaluate import entity_scores

        logits = eval_pred.predictions
        predicted = [row.argmax(-1).tolist() for row in np.asarray(logits)]
        gold, pred = self.words(predicted)
        scores = entity_scores(gold, pred, mode="conlleval")
        return {k: scores[k] for k in ("precision", "recall", "f1")}


def last_checkpoint(folder: Path) -> tuple[str | None, int]:
    """The newest complete checkpoint in `folder` and its step (None, 0 when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None, 0
    found = get_last_checkpoint(str(folder))
    if found is None:
        return None, 0
    return found, int(Path(found).name.rsplit("-", 1)[-1])


def subsample(split: Any, max_sentences: int | None, seed: int) -> Any:
    """Keep the windows of at most `max_sentences` sentences, chosen with `seed`."""
    if not max_sentences:
        return split
    sentences = sorted(set(split["sentence_id"]))
    if len(sentences) <= max_sentences:
        return split
    keep = set(np.random.default_rng(seed).choice(sentences, size=max_sentences, replace=False).tolist())
    return split.filter(lambda row: row["sentence_id"] in keep)


def training_arguments(train_cfg: TrainConfig, output_dir: Path) -> Any:
    """TrainingArguments for this config: per-epoch (or per-N-steps) evaluation, checkpoints and logging."""
    import torch
    from transformers import TrainingArguments

    every = "steps" if train_cfg.save_steps else "epoch"
    distributed_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=train_cfg.learning_rate,
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=train_cfg.eval_batch_size,
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps,
        weight_decay=train_cfg.weight_decay,
        warmup_ratio=train_cfg.warmup_ratio,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        group_by_length=train_cfg.group_by_length,
        eval_strategy=every,
        save_strategy=every,
        logging_strategy=every,
        eval_steps=train_cfg.save_steps,
        save_steps=train_cfg.save_steps,
        logging_steps=train_cfg.save_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        greater_is_better=True,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if distributed_cpu else None,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def history_from_log(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluation: epoch, step, the training loss since the previous one, and validation metrics."""
    rows: list[dict[str, Any]] = []
    train_loss: float | None = None
    for entry in log_history:
        if "loss" in entry:
            train_loss = entry["loss"]
        if "eval_loss" in entry:
            rows.append(
                {
                    "epoch": round(float(entry.get("epoch", 0)), 3),
                    "step": entry.get("step"),
                    "train_loss": train_loss,
                    "eval_loss": entry["eval_loss"],
                    "eval_precision": entry.get("eval_precision"),
                    "eval_recall": entry.get("eval_recall"),
                    "eval_f1": entry.get("eval_f1"),
                }
            )
    return rows


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Training curves: losses and validation F1 per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    left.plot(epochs, [r["eval_loss"] for r in history], "s-", label="validation loss")
    left.set_xlabel("epoch")
    left.set_title("Loss")
    left.legend()
    right.plot(epochs, [r["eval_f1"] for r in history], "o-", color="tab:green")
    right.set_xlabel("epoch")
    right.set_title("Validation entity F1 (conlleval)")
    right.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def trainer_class() -> type:
    """`Trainer` that keeps evaluation in dataset order.

    transformers 4.57 applies `group_by_length` to the evaluation sampler too, which shuffles predictions; the
    word-level scorer maps windows back to sentences by row, so evaluation must stay sequential.
    """
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class OrderedEvalTrainer(Trainer):
        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            return SequentialSampler(eval_dataset)

    return OrderedEvalTrainer


@dataclass
class FitResult:
    trainer: Any
    prep: Preprocessing
    history: list[dict[str, Any]]
    stats: dict[str, Any]
    is_main: bool


def fit(model_cfg: ModelConfig, train_cfg: TrainConfig, tokenize_artifact: Artifact, work: Path) -> FitResult:
    """Fine-tune in `work/checkpoints`, resuming from the last checkpoint there if a previous attempt died."""
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        EarlyStoppingCallback,
        set_seed,
    )

    torch.set_num_threads(train_cfg.num_threads or available_cores())
    set_seed(train_cfg.seed)
    prep = Preprocessing.load(tokenize_artifact.path)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenize_artifact.path / "tokenizer"))
    data = load_tokenized(tokenize_artifact)
    train_split = subsample(data["train"], train_cfg.max_train_sentences, train_cfg.seed)
    scorer = WordScorer.from_split(data["validation"], prep.labels)
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model_ref(model_cfg.name_or_path),
        revision=model_cfg.revision,
        num_labels=len(prep.labels),
        id2label=dict(enumerate(prep.labels)),
        label2id={label: i for i, label in enumerate(prep.labels)},
        ignore_mismatched_sizes=True,  # fine-tuning an NER model on a new label set replaces its head
    )
    args = training_arguments(train_cfg, work / "checkpoints")
    callbacks = [EarlyStoppingCallback(train_cfg.early_stopping_patience)] if train_cfg.early_stopping_patience else []
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_split.select_columns(MODEL_INPUTS),
        eval_dataset=data["validation"].select_columns(MODEL_INPUTS),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
        compute_metrics=scorer,
        callbacks=callbacks,
    )
    checkpoint, step = last_checkpoint(work / "checkpoints")
    if checkpoint:
        logger.info("resuming training from %s (step %d)", checkpoint, step)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    history = history_from_log(trainer.state.log_history)
    tokens = sum(len(ids) for ids in train_split["input_ids"])
    epochs_run = float(trainer.state.epoch or 0)
    runtime = float(output.metrics.get("train_runtime", 0.0))
    # Trainer's runtime includes the per-epoch validation passes; throughput counts training alone.
    evaluating = sum(float(e.get("eval_runtime", 0.0)) for e in trainer.state.log_history)
    training_only = max(runtime - evaluating, 1e-9)
    best = max((r["eval_f1"] or 0.0 for r in history), default=None)
    stats = {
        "best_eval_f1": best,
        "epochs_run": round(epochs_run, 3),
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(runtime, 2),
        # Tokens actually fed (no padding), so the figure compares across batching strategies.
        "train_tokens_per_s": round(tokens * epochs_run * args.world_size / training_only, 1) if runtime else None,
        "eval_runtime_s": round(evaluating, 2),
        "resumed_from_step": step,
        "n_train_windows": len(train_split),
        "world_size": args.world_size,
    }
    return FitResult(trainer, prep, history, stats, is_main=args.process_index == 0)


def save_outputs(result: FitResult, tokenize_artifact: Artifact, folder: Path) -> dict[str, Any]:
    """Write model/ (weights, tokenizer, preprocessing.json), history.json and training_curves.png."""
    from transformers import AutoTokenizer

    model_dir = folder / "model"
    result.trainer.model.save_pretrained(str(model_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenize_artifact.path / "tokenizer")).save_pretrained(str(model_dir))
    result.prep.save(model_dir)
    write_json_atomic(folder / "history.json", result.history)
    if result.history:
        plot_history(result.history, folder / "training_curves.png")
    return result.stats


def run_train(
    model_cfg: ModelConfig, train_cfg: TrainConfig, tokenize_artifact: Artifact, store: ArtifactStore
) -> Artifact:
    """Build (or reuse) the train artifact; resumes an interrupted attempt from its last checkpoint."""
    key = train_key(model_cfg, train_cfg, tokenize_artifact.key)
    existing = store.get(STAGE, key)
    if existing is not None:
        logger.info("train: cache hit %s", key)
        return existing
    result = fit(model_cfg, train_cfg, tokenize_artifact, store.work_dir(STAGE, key))
    artifact = None
    if result.is_main:
        artifact = store.build(
            STAGE,
            key,
            lambda folder: save_outputs(result, tokenize_artifact, folder),
            inputs={"tokenize": tokenize_artifact.key},
            config={"model": model_cfg, "train": train_cfg},
        )
    _barrier()
    return artifact or store.require(STAGE, key)


def _barrier() -> None:
    """Wait for rank 0 to write the artifact when running under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_history(artifact: Artifact) -> list[dict[str, Any]]:
    return json.loads((artifact.path / "history.json").read_text(encoding="utf-8"))
