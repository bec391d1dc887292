"""Train stage: fine-tune a token classifier with the Hugging Face `Trainer`.

Checkpoints go to a persistent work folder of the artifact store, so a killed run resumes from its last complete
checkpoint when the stage runs again with the same inputs (see `checkpoints`). Validation is scored at the word
level (windows merged back into whole sentences, first subword of each word) with seqeval, and early stopping keeps
the best checkpoint. Under `torchrun` every rank trains and only rank 0 writes the artifact.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, write_json_atomic
from ner_pipeline.checkpoints import check_saved_weights, last_checkpoint, remove_incomplete_checkpoints, tokens_seen
from ner_pipeline.config import ModelConfig, TrainConfig
from ner_pipeline.modelref import WEIGHT_PATTERNS, model_fingerprint, resolve_model_ref
from ner_pipeline.plots import plot_history
from ner_pipeline.preprocessing import Preprocessing
from ner_pipeline.scoring import WordScorer, argmax_logits
from ner_pipeline.tokenize import load_tokenized

logger = logging.getLogger(__name__)

STAGE = "train"
# transformers and accelerate keep process-wide state (`AcceleratorState`, which every TrainingArguments resets), so
# two Trainers in threads of one process break each other; trials run as threads (a sweep's Prefect tasks) take
# turns here, and only separate processes train at once.
_ONE_TRAINER = threading.Lock()
VERSION = "1"
MODEL_INPUTS = ["input_ids", "attention_mask", "labels"]
CHECKPOINTS = "checkpoints"
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


def torch_threads(train_cfg: TrainConfig) -> int:
    """Threads per process: the configured number, else the cores this process may use shared among the
    processes torchrun started on this machine (so two ranks on two cores do not oversubscribe them)."""
    if train_cfg.num_threads:
        return train_cfg.num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def sample_sentence_ids(sentence_ids: Iterable[int], max_sentences: int | None, seed: int) -> set[int] | None:
    """The ids of at most `max_sentences` sentences drawn with `seed` (None: keep them all)."""
    ids = sorted(set(sentence_ids))
    if not max_sentences or len(ids) <= max_sentences:
        return None
    return set(np.random.default_rng(seed).choice(ids, size=max_sentences, replace=False).tolist())


def subsample(split: Any, max_sentences: int | None, seed: int) -> Any:
    """Keep the windows of at most `max_sentences` sentences, chosen with `seed`."""
    keep = sample_sentence_ids(split["sentence_id"], max_sentences, seed)
    if keep is None:
        return split
    kept = split.filter(lambda row: row["sentence_id"] in keep)
    logger.info("training on %d of %d sentences (%d windows)", len(keep), len(set(split["sentence_id"])), len(kept))
    return kept


def sort_by_length(split: Any) -> Any:
    """The split's rows shortest first, so sequential evaluation batches carry little padding."""
    order = np.argsort([len(ids) for ids in split["input_ids"]], kind="stable")
    return split.select(order.tolist())


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
        # One fused kernel for all parameters: on CPU plain "adamw_torch" loops over tensors, a third of a
        # MiniLM step at batch 8.
        optim="adamw_torch_fused",
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        group_by_length=train_cfg.group_by_length,
        eval_strategy=every,
        save_strategy=every,
        logging_strategy=every,
        eval_steps=train_cfg.save_steps,
        save_steps=train_cfg.save_steps,
        logging_steps=train_cfg.save_steps or 500,
        # By default the Trainer leaves NaN/inf losses out of the logged average, hiding a diverged run.
        logging_nan_inf_filter=False,
        save_total_limit=2,  # the best and the latest
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        greater_is_better=True,
        include_num_input_tokens_seen="non_padding",
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
    """A finished training run: the trainer (best model loaded), its history and stats, and the rank."""

    trainer: Any
    prep: Preprocessing
    history: list[dict[str, Any]]
    stats: dict[str, Any]
    is_main: bool


def build_trainer(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokenize_artifact: Artifact,
    output_dir: Path,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, Preprocessing]:
    """The Trainer for this config: model with the artifact's labels, length-grouped dynamic padding, scorer."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification
    from transformers.trainer_callback import ProgressCallback

    from ner_pipeline.callbacks import DivergenceGuard, PatientEarlyStopping, TrainingBar

    prep = Preprocessing.load(tokenize_artifact.path)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenize_artifact.path / "tokenizer"))
    data = load_tokenized(tokenize_artifact)
    train_split = subsample(data["train"], train_cfg.max_train_sentences, train_cfg.seed)
    validation = sort_by_length(data["validation"])
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model_ref(model_cfg.name_or_path),
        revision=model_cfg.revision,
        num_labels=len(prep.labels),
        id2label=dict(enumerate(prep.labels)),
        label2id={label: i for i, label in enumerate(prep.labels)},
        ignore_mismatched_sizes=True,  # fine-tuning an NER model on a new label set replaces its head
    )
    patience = train_cfg.early_stopping_patience
    trainer = trainer_class()(
        model=model,
        args=training_arguments(train_cfg, output_dir),
        train_dataset=train_split.select_columns(MODEL_INPUTS),
        eval_dataset=validation.select_columns(MODEL_INPUTS),
        data_collator=DataCollatorForTokenClassification(tokenizer),  # pads each batch to its longest window
        processing_class=tokenizer,
        compute_metrics=WordScorer.from_split(validation, prep.labels),  # rows in the same order as evaluated
        preprocess_logits_for_metrics=argmax_logits,
        callbacks=[DivergenceGuard(), *([PatientEarlyStopping(patience)] if patience else []), *callbacks],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainingBar)
    return trainer, prep


def fit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokenize_artifact: Artifact,
    work: Path,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    """Fine-tune in `work/checkpoints`, resuming from the last complete checkpoint there if an attempt died."""
    import torch
    from transformers import set_seed

    from ner_pipeline.callbacks import raise_if_diverged

    torch.set_num_threads(torch_threads(train_cfg))
    set_seed(train_cfg.seed)
    folder = work / CHECKPOINTS
    trainer, prep = build_trainer(model_cfg, train_cfg, tokenize_artifact, folder, callbacks)
    if trainer.args.process_index == 0:
        remove_incomplete_checkpoints(folder)
    checkpoint, step = last_checkpoint(folder)
    tokens_before = 0
    if checkpoint:
        logger.info("resuming training from %s (step %d)", checkpoint, step)
        tokens_before = tokens_seen(checkpoint)  # read now: checkpoint rotation may delete this folder
    with warnings.catch_warnings():
        # transformers 4.57 wraps its per-step token count (a tensor) in torch.tensor() and warns every epoch.
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        output = trainer.train(resume_from_checkpoint=checkpoint)
    raise_if_diverged(trainer, train_cfg, folder)
    history = history_from_log(trainer.state.log_history)
    stats = training_stats(trainer, output.metrics, history, step, tokens_before)
    if stats["eval_f1_near_zero"]:
        logger.warning(
            "best validation F1 %.4f is near zero: the model has not learned; train longer (train.epochs) or with "
            "another train.learning_rate (now %g)",
            stats["best_eval_f1"],
            train_cfg.learning_rate,
        )
    return FitResult(trainer, prep, history, stats, is_main=trainer.args.process_index == 0)


def training_stats(
    trainer: Any, metrics: dict[str, Any], history: list[dict[str, Any]], resumed_step: int, tokens_before: int
) -> dict[str, Any]:
    """Manifest stats of a finished run; throughput counts only what this run did after resuming."""
    state = trainer.state
    runtime = float(metrics.get("train_runtime", 0.0))
    # Trainer's runtime includes the validation passes; throughput counts training alone.
    evaluating = sum(
        float(e.get("eval_runtime", 0.0)) for e in state.log_history if (e.get("step") or 0) > resumed_step
    )
    training_only = max(runtime - evaluating, 1e-9)
    from ner_pipeline.callbacks import NEAR_ZERO_F1

    tokens = state.num_input_tokens_seen - tokens_before  # non-padding tokens, summed over ranks
    best_f1 = max((r["eval_f1"] or 0.0 for r in history), default=None)
    return {
        "best_eval_f1": best_f1,
        # A model that never rose above near-zero validation F1 has not learned: flagged, not silently passed on.
        "eval_f1_near_zero": best_f1 is not None and best_f1 <= NEAR_ZERO_F1,
        "epochs_run": round(float(state.epoch or 0), 3),
        "global_step": state.global_step,
        "train_runtime_s": round(runtime, 2),
        "train_tokens_per_s": round(tokens / training_only, 1) if runtime else None,
        "train_tokens": tokens,
        "eval_runtime_s": round(evaluating, 2),
        "resumed_from_step": resumed_step,
        "n_train_windows": len(trainer.train_dataset),
        "world_size": trainer.args.world_size,
    }


def save_outputs(result: FitResult, tokenize_artifact: Artifact, folder: Path) -> dict[str, Any]:
    """Write model/ (weights, tokenizer, preprocessing.json), history.json and training_curves.png."""
    model_dir = folder / "model"
    result.trainer.model.save_pretrained(str(model_dir), safe_serialization=True)
    check_saved_weights(model_dir)
    result.trainer.processing_class.save_pretrained(str(model_dir))
    result.prep.save(model_dir)
    write_json_atomic(folder / "history.json", result.history)
    if result.history:
        plot_history(result.history, folder / "training_curves.png")
    return result.stats


def run_train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokenize_artifact: Artifact,
    store: ArtifactStore,
    callbacks: Sequence[Any] = (),
) -> Artifact:
    """Build (or reuse) the train artifact; resumes an interrupted attempt from its last checkpoint.

    `callbacks` are extra `TrainerCallback`s (e.g. a sweep's pruning callback); they watch the run and are not
    part of the artifact key, so a cache hit never calls them.

    Two runs of the same key at once (overlapping scheduled runs) do not share the checkpoint folder: the second
    waits for the first and returns its artifact. Under torchrun every rank trains (data-parallel) and only rank 0
    writes the artifact; the others wait for it and return the same artifact.
    """
    key = train_key(model_cfg, train_cfg, tokenize_artifact.key)
    existing = store.get(STAGE, key)
    if existing is not None:
        logger.info("train: cache hit %s", key)
        return existing
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Under torchrun rank 0 holds the claim for the whole job; its peers must not wait on it, as they train with it.
    holds_claim = not distributed or int(os.environ.get("RANK", "0")) == 0
    artifact = None
    with store.claim_work(STAGE, key) if holds_claim else nullcontext():
        existing = store.get(STAGE, key)
        if existing is not None and not distributed:
            logger.info("train: trained meanwhile by another run, reusing %s", existing.location)
            return existing
        work = store.work_dir(STAGE, key)  # on a remote store: holds the checkpoint a killed worker published
        with _ONE_TRAINER:
            result = fit(model_cfg, train_cfg, tokenize_artifact, work, [*checkpoint_publisher(store, key), *callbacks])
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


def checkpoint_publisher(store: ArtifactStore, key: str) -> list[Any]:
    """On a remote store, a callback uploading each checkpoint as it is saved, so another worker can resume."""
    from ner_pipeline.callbacks import CheckpointPublisher

    return [CheckpointPublisher(lambda folder: store.publish_work(STAGE, key, folder))] if store.is_remote else []


def _barrier() -> None:
    """Wait for rank 0 to write the artifact when running under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_history(artifact: Artifact) -> list[dict[str, Any]]:
    """The per-evaluation training history of a train artifact."""
    return json.loads((artifact.path / "history.json").read_text(encoding="utf-8"))
