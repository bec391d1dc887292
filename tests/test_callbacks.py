"""Trainer callbacks: early stopping that waits for the model to learn, and the NaN/inf guard. Driven with the real
`TrainerState`/`TrainerControl` objects and log entries shaped as transformers 4.57 writes them; the real runs are in
test_train.py."""

from __future__ import annotations

import math

import pytest

from ner_pipeline.callbacks import (
    NEAR_ZERO_F1,
    DivergenceGuard,
    PatientEarlyStopping,
    first_non_finite,
    stalled_evaluations,
)


def evaluations(f1s: list[float], losses: list[float], steps_per_epoch: int = 7) -> list[dict]:
    """A Trainer log history: a training-loss entry, then an evaluation, per epoch."""
    log: list[dict] = []
    for i, (f1, loss) in enumerate(zip(f1s, losses, strict=True), start=1):
        step = i * steps_per_epoch
        log.append({"loss": loss + 0.2, "grad_norm": 1.5, "learning_rate": 5e-5, "epoch": float(i), "step": step})
        log.append(
            {"eval_loss": loss, "eval_f1": f1, "eval_precision": f1, "eval_recall": f1, "epoch": float(i), "step": step}
        )
    return log


def stops_after(callback, log: list[dict]) -> int | None:
    """Replay a log history through `on_evaluate` as the Trainer does; the evaluation (1-based) it stops after."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    evaluation = 0
    for entry in log:
        state.log_history.append(entry)
        state.global_step = entry["step"]
        if "eval_f1" in entry:
            evaluation += 1
            callback.on_evaluate(args, state, control, metrics=entry)
            if control.should_training_stop:
                return evaluation
    return None


# CrossNER politics with the packaged MiniLM, as reported in issue 14: F1 flat at ~0 for three epochs while the
# validation loss fell fast, then the model learned (0.38 after 10 epochs with early stopping off).
FLAT_START_F1 = [0.001, 0.000, 0.001, 0.03, 0.12, 0.21, 0.29, 0.33, 0.37, 0.38]
FLAT_START_LOSS = [2.31, 1.54, 1.30, 1.10, 0.95, 0.86, 0.80, 0.76, 0.74, 0.73]


def test_early_stopping_waits_while_the_model_has_not_started_to_learn():
    from transformers import EarlyStoppingCallback, TrainerControl, TrainerState, TrainingArguments

    log = evaluations(FLAT_START_F1, FLAT_START_LOSS)
    assert stops_after(PatientEarlyStopping(patience=2), log) is None  # trains all ten epochs

    # transformers' own callback, as the stage used it, stops after epoch 3 (F1 0.001 never beaten by 2 evaluations).
    args = TrainingArguments(
        output_dir="unused",
        report_to="none",
        use_cpu=True,
        metric_for_best_model="f1",
        load_best_model_at_end=True,
        eval_strategy="epoch",
        save_strategy="epoch",
    )
    old, state, control = EarlyStoppingCallback(2), TrainerState(), TrainerControl()
    epochs_run = 0
    for f1 in FLAT_START_F1:
        epochs_run += 1
        old.on_evaluate(args, state, control, metrics={"eval_f1": f1})
        state.best_metric = max(state.best_metric or 0.0, f1)  # what the Trainer does between evaluations
        if control.should_training_stop:
            break
    assert epochs_run == 3


def test_early_stopping_fires_once_the_model_has_learned_and_stopped_improving():
    # Learned by epoch 2; from epoch 4 F1 no longer improves and the validation loss rises (overfitting).
    log = evaluations([0.10, 0.30, 0.40, 0.39, 0.38, 0.40], [1.0, 0.7, 0.6, 0.62, 0.65, 0.7])
    assert stops_after(PatientEarlyStopping(patience=2), log) == 5
    assert stops_after(PatientEarlyStopping(patience=3), log) == 6


def test_a_validation_loss_still_falling_fast_does_not_count_against_patience():
    f1 = [0.20, 0.30, 0.30, 0.30, 0.30, 0.30]
    falling = [1.0, 0.8, 0.7, 0.6, 0.595, 0.594]  # -12.5 %, -14 %, then -0.8 % and -0.2 %: only the last two count
    assert stops_after(PatientEarlyStopping(patience=2), evaluations(f1, falling)) == 6
    assert stalled_evaluations(evaluations(f1, falling)) == 2
    assert stalled_evaluations(evaluations(f1, falling), loss_improvement=0.2) == 4  # only drops above 20 % spare


def test_a_better_f1_resets_the_count_and_other_log_entries_are_ignored():
    log = evaluations([0.2, 0.2, 0.3, 0.3], [1.0, 1.0, 1.0, 1.0])
    assert stalled_evaluations(log) == 1
    assert stalled_evaluations(log[:4]) == 1
    assert stalled_evaluations([{"train_runtime": 3.0, "step": 28}, *log]) == 1
    assert stalled_evaluations(evaluations([NEAR_ZERO_F1] * 5, [1.0] * 5)) == 0  # never above near zero


def test_early_stopping_reads_a_resumed_runs_restored_history_like_an_uninterrupted_one():
    # The Trainer restores log_history from the checkpoint it resumes from; the count is rebuilt from it, so a
    # run killed after epoch 4 stops after epoch 5, as it would have without the kill.
    log = evaluations([0.10, 0.30, 0.40, 0.39, 0.38, 0.40], [1.0, 0.7, 0.6, 0.62, 0.65, 0.7])
    from transformers import TrainerControl, TrainerState, TrainingArguments

    resumed = TrainerState(log_history=list(log[:8]), global_step=28)
    control = TrainerControl()
    callback = PatientEarlyStopping(patience=2)  # a new object, as in the resumed process
    resumed.log_history.extend(log[8:10])
    callback.on_evaluate(TrainingArguments(output_dir="unused", report_to="none"), resumed, control)
    assert control.should_training_stop


@pytest.mark.parametrize(
    ("logs", "found"),
    [
        ({"loss": math.nan, "grad_norm": 1.0}, ("the training loss", math.nan)),
        ({"loss": 2.4, "grad_norm": math.inf}, ("the gradient norm", math.inf)),
        ({"eval_loss": -math.inf, "eval_f1": 0.0}, ("the validation loss", -math.inf)),
        ({"loss": 2.4, "grad_norm": 1.0, "learning_rate": 1e6}, None),
    ],
)
def test_first_non_finite_names_what_turned_nan_or_inf(logs: dict, found: tuple | None):
    result = first_non_finite(logs)
    if found is None:
        assert result is None
    else:
        assert result is not None and result[0] == found[0]
        assert math.isnan(result[1]) if math.isnan(found[1]) else result[1] == found[1]


def test_divergence_guard_stops_at_the_first_step_whose_weights_are_nan():
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    guard, state, control = DivergenceGuard(), TrainerState(global_step=1, epoch=0.1), TrainerControl()
    guard.on_step_end(args, state, control, model=model)
    assert guard.divergence is None and not control.should_training_stop
    with torch.no_grad():
        model[1].bias[2] = math.nan
    state.global_step, state.epoch = 2, 0.2
    guard.on_step_end(args, state, control, model=model)
    state.global_step = 3
    guard.on_log(args, state, control, logs={"loss": math.inf})  # later findings do not replace the first
    assert control.should_training_stop
    assert guard.divergence is not None
    assert guard.divergence.describe() == "the weights became nan at step 2 (epoch 0.20)"
