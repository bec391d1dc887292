"""Trainer callbacks of the train stage: stop a run whose loss or weights turn NaN/inf, and early stopping that
waits until the model has started to learn.

Both decide from what the Trainer logs (`TrainerState.log_history`), which a resumed run restores from its
checkpoint, so a run killed and resumed stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from ner_pipeline.config import TrainConfig
from ner_pipeline.errors import TrainingError

logger = logging.getLogger(__name__)

# Below this validation F1 a model has not started to learn (an untrained head scores 0.00-0.01 on WNUT-16 and
# CoNLL-2003): early stopping does not count those evaluations, and a finished model scoring below it is flagged.
NEAR_ZERO_F1 = 0.05
# An evaluation whose validation loss is this much (relative) below the best so far shows a model still learning,
# even when its F1 has not moved yet: it does not count against the patience either.
LOSS_IMPROVEMENT = 0.01
# What the Trainer logs that must stay finite, and what to call it in the error.
WATCHED = {"loss": "the training loss", "grad_norm": "the gradient norm", "eval_loss": "the validation loss"}


def stalled_evaluations(
    evaluations: Iterable[Mapping[str, Any]],
    learning_f1: float = NEAR_ZERO_F1,
    loss_improvement: float = LOSS_IMPROVEMENT,
) -> int:
    """How many evaluations since the best validation F1 count against early stopping's patience.

    An evaluation counts when its F1 is no better than the best so far, the best F1 is above `learning_f1` (the
    model has started to learn), and its validation loss is not more than `loss_improvement` (relative) below the
    best loss so far. A better F1 resets the count.

    Args:
        evaluations: Log entries with `eval_f1` and `eval_loss`, oldest first (other entries are skipped).
    """
    best_f1, best_loss, stalled = -math.inf, math.inf, 0
    for entry in evaluations:
        if "eval_f1" not in entry:
            continue
        f1, loss = float(entry["eval_f1"]), float(entry.get("eval_loss", math.inf))
        if f1 > best_f1:
            best_f1, stalled = f1, 0
        elif best_f1 > learning_f1 and not loss < best_loss * (1 - loss_improvement):
            stalled += 1
        best_loss = min(best_loss, loss)
    return stalled


class PatientEarlyStopping(TrainerCallback):
    """Stop after `patience` evaluations that count (see `stalled_evaluations`).

    Unlike transformers' `EarlyStoppingCallback`, evaluations before validation F1 first rises above
    `NEAR_ZERO_F1`, and evaluations whose validation loss still falls, do not count: on a small domain set F1 can sit
    at 0.00 for the first epochs while the loss falls fast, and stopping there registers a model that never learned.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer appends the evaluation to log_history before calling on_evaluate.
        stalled = stalled_evaluations(state.log_history)
        if stalled >= self.patience:
            logger.info(
                "early stopping at step %d: %d evaluations without a better validation F1", state.global_step, stalled
            )
            control.should_training_stop = True
        elif stalled == 0 and max((e.get("eval_f1", 0.0) for e in state.log_history), default=0.0) <= NEAR_ZERO_F1:
            logger.info(
                "step %d: validation F1 still at or below %.2f: not counted by early stopping (the model has not "
                "started to learn)",
                state.global_step,
                NEAR_ZERO_F1,
            )


@dataclass(frozen=True)
class Divergence:
    """Where training stopped producing numbers: what turned non-finite, its value, the step and the epoch."""

    what: str
    value: float
    step: int
    epoch: float

    def describe(self) -> str:
        return f"{self.what} became {self.value} at step {self.step} (epoch {self.epoch:.2f})"


def first_non_finite(logs: Mapping[str, Any]) -> tuple[str, float] | None:
    """The first watched value of a log entry (loss, grad_norm, eval_loss) that is NaN or infinite, by its name
    in errors (`the training loss`), and the value."""
    for key, name in WATCHED.items():
        value = logs.get(key)
        if isinstance(value, int | float) and not math.isfinite(value):
            return name, float(value)
    return None


class DivergenceGuard(TrainerCallback):
    """Stops training as soon as the loss, the gradient norm or the weights turn NaN/inf.

    The Trainer itself trains on: with its default `logging_nan_inf_filter` it even hides NaN losses from the log
    (see `training_arguments`). After `trainer.train()` returns, `divergence` says what happened; the train stage
    then raises instead of saving the model.
    """

    def __init__(self) -> None:
        self.divergence: Divergence | None = None

    def _stop(self, control: Any, state: Any, what: str, value: float) -> None:
        if self.divergence is None:
            self.divergence = Divergence(what, value, state.global_step, float(state.epoch or 0.0))
        control.should_training_stop = True

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # A non-finite gradient anywhere makes gradient clipping scale every gradient by NaN, so after one such
        # step every weight is NaN: checking the last (the classifier's) is enough, and costs microseconds.
        if model is None or self.divergence is not None:
            return
        last = next(reversed(list(model.parameters())), None)
        if last is None:
            return
        bad = last.detach()[~last.detach().isfinite()]
        if bad.numel():
            self._stop(control, state, "the weights", float(bad[0]))

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        found = first_non_finite(logs or {})
        if found is not None:
            self._stop(control, state, *found)


def raise_if_diverged(trainer: Any, train_cfg: TrainConfig, folder: Path) -> None:
    """Raise when the run's loss or weights turned NaN/inf (see `callbacks.DivergenceGuard`).

    The checkpoints are deleted too: resuming from them would only bring the NaN weights back.

    Raises:
        TrainingError: names what turned non-finite, the step and what to change.
    """
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, DivergenceGuard))
    if guard.divergence is None:
        return
    shutil.rmtree(folder, ignore_errors=True)
    raise TrainingError(
        f"train: training diverged: {guard.divergence.describe()}; nothing was saved or cached. Lower "
        f"train.learning_rate (now {train_cfg.learning_rate:g}) or raise train.warmup_ratio (now "
        f"{train_cfg.warmup_ratio:g})"
    )


class TrainingBar(ProgressCallback):
    """Trainer's progress bar without its companions: one bar for training, no printed log dicts (they go to the
    train artifact's history and MLflow) and no second bar for each validation pass."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None

    def on_prediction_step(
        self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kwargs: Any
    ) -> None:
        return None


class CheckpointPublisher(TrainerCallback):
    """Hands each checkpoint to `publish` as soon as the Trainer has saved it (main process only), so a remote
    artifact store shares it with whichever worker runs the key next (`ArtifactStore.publish_work`)."""

    def __init__(self, publish: Callable[[Path], None]) -> None:
        self.publish = publish

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.publish(folder)
