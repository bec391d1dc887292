"""Sweep trials: the search space, a trial's config, and one trial run as the pipeline walked up to train.

A trial is ingest → tokenize → train with the trial's values applied to the config as dotted overrides, so ingest
and tokenize artifacts are shared between trials and a repeated trial is a cache hit. Its score is the validation
metric of the epoch the train stage keeps (the test split is never seen). A pruning callback reports each
epoch's validation score to Optuna and stops a trial the pruner gives up on. See `ner_pipeline.sweep`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ner_pipeline import pipeline, tracking
from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import PipelineConfig
from ner_pipeline.configfile import flatten, merge_dicts
from ner_pipeline.errors import ConfigError, NerPipelineError

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
TRIAL_STAGES = ("ingest", "tokenize", "train")
FINAL_STAGES = ("evaluate", "export", "register")
PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
OWNER_ATTR = "owner"
NUMERIC = ("loguniform", "uniform", "int")
# transformers' from_pretrained is not thread-safe: its meta-device initialisation patches torch globally, so two
# trials loading models at once in one process fail ("Cannot copy out of meta tensor"). Trials running as threads
# take turns from the start of the train stage until the Trainer is built (`on_init_end`), then train in parallel.
_MODEL_LOADING = threading.Lock()


class LoadingTurn:
    """This trial's turn to load a model: held from `__enter__` until `release` (or exit), released once."""

    def __init__(self) -> None:
        self.held = False

    def __enter__(self) -> LoadingTurn:
        _MODEL_LOADING.acquire()
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            _MODEL_LOADING.release()

    def __exit__(self, *exc: object) -> None:
        self.release()


# Searched when `sweep.space` is empty: the hyperparameters that matter most when fine-tuning a BERT-sized encoder.
DEFAULT_SPACE = {
    "train.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-4},
    "train.batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "train.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
    "train.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
}


def check_distribution(key: str, dist: Any) -> dict[str, Any]:
    """A search distribution, checked and with numeric bounds as numbers (YAML reads `1e-5` as a string).

    Raises:
        ValueError: not one of `{type: loguniform|uniform|int, low, high}` or `{type: categorical, choices}`.
    """
    usage = (
        f"'{key}' must be {{type: loguniform|uniform|int, low, high}} with low < high (low > 0 for loguniform) "
        f"or {{type: categorical, choices: [...]}} (got {dist})"
    )
    kind = dist.get("type") if isinstance(dist, dict) else None
    if kind == "categorical":
        if set(dist) != {"type", "choices"} or not isinstance(dist["choices"], list) or not dist["choices"]:
            raise ValueError(usage)
        return dist
    if kind not in NUMERIC or set(dist) != {"type", "low", "high"}:
        raise ValueError(usage)
    cast = int if kind == "int" else float
    try:
        if any(isinstance(dist[b], bool) for b in ("low", "high")):
            raise TypeError
        low, high = cast(dist["low"]), cast(dist["high"])
    except (TypeError, ValueError):
        raise ValueError(usage) from None
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(usage)
    return {"type": kind, "low": low, "high": high}


def searched(config: PipelineConfig) -> PipelineConfig:
    """The config with its search space checked: every key names a config field outside `sweep`; an empty space
    becomes `DEFAULT_SPACE`.

    Raises:
        ConfigError: a key that is no config field, in one line.
    """
    if not config.sweep.space:
        logger.info("sweep.space is empty: searching %s", ", ".join(DEFAULT_SPACE))
        config = config.model_copy(update={"sweep": config.sweep.model_copy(update={"space": DEFAULT_SPACE})})
    fields = flatten(config.model_dump(mode="json"))
    for key in config.sweep.space:
        if key.startswith("sweep.") or key not in fields:
            raise ConfigError(f"sweep.space: '{key}' is not a config field (e.g. train.learning_rate)")
    return config


def trial_config(config: PipelineConfig, params: Mapping[str, Any]) -> PipelineConfig:
    """The config with a trial's values applied as dotted overrides, anchored at the same project root."""
    raw = config.model_dump(mode="json")
    for key, value in params.items():
        raw = _set_dotted(raw, key, value)
    try:
        trial = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"sweep.space gives an invalid config {dict(params)}: {fields}") from None
    return trial.anchored(config.project_root or Path.cwd())


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    delta: Any = value  # the value as Optuna gave it: no YAML round trip turning 1e-05 into a string
    for part in reversed(key.split(".")):
        delta = {part: delta}
    return merge_dicts(raw, delta)


def storage_url(config: PipelineConfig, tracking_uri: str | None) -> str:
    """The Optuna store: `sweep.storage`, else `optuna.db` beside a SQLite MLflow store, else the default."""
    if config.sweep.storage:
        return config.sweep.storage
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0])
        return f"sqlite:///{db.parent / 'optuna.db'}"
    return config.resolve_uri(DEFAULT_STORAGE)


def study_name(config: PipelineConfig) -> str:
    return config.sweep.study or f"{config.name}-sweep"


def open_study(config: PipelineConfig, storage: str) -> Any:
    """Create or load the study (TPE seeded by `sweep.sampler_seed`, median pruner unless `sweep.pruner: none`)."""
    import optuna

    cfg = config.sweep
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///").partition("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=0)
        if cfg.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=storage,
        study_name=study_name(config),
        sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed),
        pruner=pruner,
        direction=cfg.direction,
        load_if_exists=True,
    )


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The trial's value for every key of the search space."""
    values: dict[str, Any] = {}
    for key, dist in space.items():
        kind = dist["type"]
        if kind == "categorical":
            values[key] = trial.suggest_categorical(key, dist["choices"])
        elif kind == "int":
            values[key] = trial.suggest_int(key, dist["low"], dist["high"])
        else:
            values[key] = trial.suggest_float(key, dist["low"], dist["high"], log=kind == "loguniform")
    return values


@dataclass
class TrialSpec:
    """One asked trial: the Optuna trial, its values and config, the MLflow store and parent run."""

    trial: Any
    params: dict[str, Any]
    config: PipelineConfig
    tracking_uri: str | None
    parent_run_id: str | None
    study: str

    @property
    def number(self) -> int:
        return int(self.trial.number)


@dataclass
class TrialOutcome:
    """How a trial ended: COMPLETE (with its value), PRUNED or FAIL; its train key and MLflow run."""

    number: int
    state: str
    value: float | None = None
    train_key: str | None = None
    tokenize_key: str | None = None
    run_id: str | None = None
    cached: bool = False
    error: str | None = None


def pruning_callback(trial: Any, metric: str, tracker: tracking.Tracker | None, turn: LoadingTurn | None = None) -> Any:
    """A `TrainerCallback` that logs each evaluation's validation score, reports it to Optuna by epoch, and
    raises `optuna.TrialPruned` when the pruner says so (the train stage then writes no artifact)."""
    import optuna
    from transformers import TrainerCallback

    class ReportToOptuna(TrainerCallback):
        def on_init_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if turn is not None:
                turn.release()  # the model is built: the next trial may load its own

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, float], **kw: Any) -> None:
            value = metrics.get(f"eval_{metric}")
            if value is None:
                return
            epoch = round(float(state.epoch or 0))
            if tracker is not None:
                tracker.log_metrics({f"validation_{metric}": value}, step=epoch)
            trial.report(float(value), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"trial {trial.number}: validation {metric} {value:.4f} at epoch {epoch}")

    return ReportToOptuna()


def objective_value(train: Artifact, metric: str) -> float:
    """The validation metric of the epoch the train stage kept (its best validation F1)."""
    from ner_pipeline.train import read_history

    rows = [r for r in read_history(train) if r.get("eval_f1") is not None]
    if not rows:
        raise NerPipelineError(f"train artifact {train.path} has no validation history to score the trial")
    return float(max(rows, key=lambda r: r["eval_f1"])[f"eval_{metric}"])


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Walk ingest → tokenize → train for one trial in its own MLflow child run; never raises for a failed trial.

    Raises:
        NerPipelineError: a user error (bad config, missing data), which every trial would hit.
    """
    import optuna

    tracker = None
    if spec.tracking_uri:
        tags = {"mlflow.parentRunId": spec.parent_run_id, "sweep.study": spec.study, "sweep.trial": spec.number}
        tracker = tracking.start_run(spec.config, spec.tracking_uri, f"{spec.study}-trial-{spec.number}", tags)
        tracker.set_tags({"sweep.params": json.dumps(spec.params, sort_keys=True)})
        spec.trial.set_user_attr(RUN_ATTR, tracker.run_id)
    turn = LoadingTurn()
    callback = pruning_callback(spec.trial, spec.config.sweep.metric, tracker, turn)
    outcome = TrialOutcome(spec.number, "RUNNING", run_id=tracker.run_id if tracker else None)
    try:
        stages = walk_trial(spec.config, callback, tracker, turn)
        outcome.train_key, outcome.tokenize_key = stages["train"].key, stages["tokenize"].key
        outcome.cached = stages["train"].cached
        outcome.value = objective_value(stages["train"], spec.config.sweep.metric)
        outcome.state = "COMPLETE"
    except optuna.TrialPruned as exc:
        outcome.state, outcome.error = "PRUNED", str(exc)
    except NerPipelineError:
        _end(tracker, "FAIL", None)
        raise
    except Exception as exc:  # a diverging or crashing trial must not end the sweep
        logger.warning("trial %d failed: %s: %s", spec.number, type(exc).__name__, exc)
        outcome.state, outcome.error = "FAIL", f"{type(exc).__name__}: {exc}"
    _end(tracker, outcome.state, outcome.value)
    logger.info("trial %d: %s %s %s", spec.number, outcome.state, spec.params, outcome.value)
    return outcome


def walk_trial(
    config: PipelineConfig, callback: Any, tracker: tracking.Tracker | None, turn: LoadingTurn
) -> dict[str, Artifact]:
    """The pipeline walked up to train, the train stage watched by `callback` (which is not in its key)."""
    from ner_pipeline.train import run_train

    store = pipeline.open_store(config)

    def build(name: str, cfg: PipelineConfig, up: Mapping[str, Artifact], ctx: pipeline.RunContext) -> Artifact:
        if name == "train":
            with turn:  # released by the callback once the Trainer is built, or here on a cache hit or error
                return run_train(cfg.model, cfg.train, up["tokenize"], store, callbacks=[callback])
        return pipeline.run_stage(name, cfg, up, store, ctx)

    def on_stage(artifact: Artifact) -> None:
        if tracker is None:
            return
        if artifact.stage == "ingest":
            # The data set is logged once, on the parent run: MLflow's dataset table is not safe for concurrent
            # inserts of the same dataset by parallel trials (SQLite: UNIQUE constraint failed).
            tags = {"artifact.ingest": artifact.key, "cached.ingest": True}
            tracker.set_tags({**tags, "data.fingerprint": artifact.stats.get("fingerprint")})
            return
        tracking.log_stage(tracker, artifact)

    return pipeline.walk(config, list(TRIAL_STAGES), build, build, on_stage=on_stage).stages


def _end(tracker: tracking.Tracker | None, state: str, value: float | None) -> None:
    if tracker is None:
        return
    tracker.set_tags({"sweep.state": state})
    if value is not None:
        tracker.log_metrics({"objective": value})
    tracker.end({"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))


Execute = Callable[[Sequence[TrialSpec]], list[TrialOutcome]]


def run_serially(specs: Sequence[TrialSpec]) -> list[TrialOutcome]:
    """Run a batch of trials one after another (the CLI's default; the flow runs them as Prefect tasks)."""
    return [run_trial(spec) for spec in specs]
