"""Hyperparameter sweeps: an Optuna study of train-stage trials over the shared stage cache.

The study lives in an RDB store (by default `optuna.db` beside a SQLite MLflow store; any SQLAlchemy URL), so a
killed sweep resumes where it stopped (`sweep.trials` is the number of finished trials it aims for) and
`--trials N` adds N more. Each trial (`ner_pipeline.sweep_trials`) is an MLflow child run of the study's one
parent run, which gets the best trial, Optuna's parameter-importance and optimisation-history plots and the study
name. The best trial then runs evaluate → export → register (the version tagged `sweep.study`, `sweep.trial`)
and meets the promotion gate as a training run does. Nothing here knows about Prefect: the flow hands in how to
run a batch of trials and the stage steps, as the training flow does for `pipeline.walk`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ner_pipeline import pipeline, tracking
from ner_pipeline.config import PipelineConfig
from ner_pipeline.sweep_trials import (
    OWNER_ATTR,
    PARENT_ATTR,
    RUN_ATTR,
    TrialOutcome,
    TrialSpec,
    open_study,
    run_trial,
    searched,
    storage_url,
    suggest,
    trial_config,
)

logger = logging.getLogger(__name__)

Execute = Callable[[Sequence[TrialSpec]], list[TrialOutcome]]


def run_serially(specs: Sequence[TrialSpec]) -> list[TrialOutcome]:
    """Run a batch of trials one after another (the CLI; the flow runs them as Prefect tasks)."""
    return [run_trial(spec) for spec in specs]


@dataclass
class SweepResult:
    """What a sweep run did: the study, the outcomes of this run's trials, the best trial, what it registered."""

    study: str
    storage: str
    outcomes: list[TrialOutcome]
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    parent_run_id: str | None = None
    summary: pipeline.RunSummary | None = None

    def to_markdown(self) -> str:
        lines = [f"# Sweep `{self.study}`", "", f"Optuna store: `{self.storage}`", "", "| trial | state | value |"]
        lines.append("|---|---|---|")
        lines += [f"| {o.number} | {o.state} | {_fmt(o.value)} |" for o in self.outcomes]
        if self.best_number is not None:
            lines += ["", f"Best trial {self.best_number}: {_fmt(self.best_value)} with {self.best_params}."]
        if self.summary is not None:
            lines += ["", self.summary.to_markdown()]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def open_parent(config: PipelineConfig, study: Any, tracking_uri: str | None) -> tracking.Tracker | None:
    """The study's parent MLflow run: the one it recorded (reopened on resume), else a new one."""
    if tracking_uri is None:
        return None
    known = study.user_attrs.get(PARENT_ATTR)
    if known:
        tracker = tracking.Tracker(tracking_uri, known)
        tracker.client.update_run(known, status="RUNNING")
        return tracker
    tags = {"sweep.study": study.study_name, "sweep.role": "parent", "sweep.space": json.dumps(config.sweep.space)}
    tracker = tracking.start_run(config, tracking_uri, f"{study.study_name}-sweep", tags)
    study.set_user_attr(PARENT_ATTR, tracker.run_id)
    # Ingest once, before any trial: the trials share it, and the data set is logged here rather than by each.
    store = pipeline.open_store(config)
    tracking.log_stage(tracker, pipeline.run_pipeline(config, store, stages=["ingest"])["ingest"])
    return tracker


def fail_abandoned_trials(study: Any, tracking_uri: str | None) -> None:
    """Mark FAIL the trials left RUNNING by a sweep process on this host that is gone (a killed sweep), and end
    their MLflow runs as KILLED."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(trial.user_attrs.get(OWNER_ATTR, "")).partition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        logger.warning("trial %d was left running by a killed sweep (pid %s); marking it failed", trial.number, pid)
        study.tell(trial.number, state=TrialState.FAIL)
        run_id = trial.user_attrs.get(RUN_ATTR)
        if tracking_uri and run_id:
            tracker = tracking.Tracker(tracking_uri, run_id)
            tracker.set_tags({"sweep.state": "FAIL"})
            tracker.end("KILLED")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ask(study: Any, config: PipelineConfig, tracking_uri: str | None, parent: tracking.Tracker | None) -> TrialSpec:
    trial = study.ask()
    trial.set_user_attr(OWNER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    params = suggest(trial, config.sweep.space)
    cfg = trial_config(config, params)
    return TrialSpec(trial, params, cfg, tracking_uri, parent.run_id if parent else None, study.study_name)


def tell(study: Any, outcome: TrialOutcome) -> None:
    from optuna.trial import TrialState

    state = getattr(TrialState, outcome.state)
    study.tell(outcome.number, outcome.value if state == TrialState.COMPLETE else None, state=state)


def execute_or_fail(study: Any, execute: Execute, batch: Sequence[TrialSpec]) -> list[TrialOutcome]:
    """Run a batch; if it raises (a user error, an interrupt), its trials are marked FAIL before re-raising."""
    from optuna.trial import TrialState

    try:
        return execute(batch)
    except BaseException:
        for spec in batch:
            with contextlib.suppress(RuntimeError, ValueError):  # a trial already finished
                study.tell(spec.number, state=TrialState.FAIL)
        raise


def trials_to_run(study: Any, config: PipelineConfig, more: int | None) -> int:
    """`more` when given, else what the study lacks of `sweep.trials` finished (complete or pruned) trials."""
    from optuna.trial import TrialState

    if more is not None:
        return more
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return max(0, config.sweep.trials - len(finished))


def run_sweep(
    config: PipelineConfig,
    trials: int | None = None,
    *,
    execute: Execute = run_serially,
    build: pipeline.StepFn | None = None,
    lookup: pipeline.StepFn | None = None,
    promote: pipeline.PromoteFn | None = None,
) -> SweepResult:
    """Run (or resume) the config's sweep, then take its best trial through evaluate → export → register.

    Args:
        config: The resolved config; `sweep` says the space, metric, sampler and pruner.
        trials: Trials to add now; None runs what the study lacks of `sweep.trials` finished trials.
        execute: Runs a batch of at most `sweep.parallel` trials and returns their outcomes in order.
        build, lookup, promote: The steps of the final walk (see `pipeline.walk`); None uses the library's.

    Raises:
        ConfigError: an empty or unknown search space key, or a trial config that does not validate.
    """
    config = searched(config)
    uri = tracking.resolve_tracking_uri(config.tracking, os.environ) if config.tracking.enabled else None
    storage = storage_url(config, uri)
    study = open_study(config, storage)
    fail_abandoned_trials(study, uri)
    parent = open_parent(config, study, uri)
    result = SweepResult(study.study_name, storage, [], parent_run_id=parent.run_id if parent else None)
    try:
        remaining = trials_to_run(study, config, trials)
        logger.info("sweep %s (%s): %d trials to run", study.study_name, storage, remaining)
        while remaining > 0:
            batch = [ask(study, config, uri, parent) for _ in range(min(remaining, config.sweep.parallel))]
            for outcome in execute_or_fail(study, execute, batch):
                tell(study, outcome)
                result.outcomes.append(outcome)
            remaining -= len(batch)
        finish(config, study, result, parent, (build, lookup, promote))
    except BaseException:
        if parent is not None:
            parent.end("FAILED")
        raise
    if parent is not None:
        parent.end("FINISHED")
    return result


def finish(
    config: PipelineConfig, study: Any, result: SweepResult, parent: tracking.Tracker | None, steps: tuple
) -> None:
    """Record the best trial on the parent run and take it through evaluate → export → register → gate."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        logger.warning("sweep %s has no complete trial yet: nothing to register", study.study_name)
        return
    best = study.best_trial
    result.best_number, result.best_value, result.best_params = best.number, best.value, dict(best.params)
    if parent is not None:
        parent.log_params({f"best.{k}": v for k, v in best.params.items()})
        parent.log_metrics({f"best_validation_{config.sweep.metric}": best.value, "best_trial": best.number})
        parent.set_tags({"sweep.study": study.study_name, "sweep.best_trial": best.number})
        log_plots(study, parent)
    result.summary = run_best(config, best, study.study_name, steps)


def run_best(config: PipelineConfig, best: Any, study: str, steps: tuple) -> pipeline.RunSummary:
    """Walk the whole pipeline for the best trial's config, logged in its own child run; tag the version."""
    build, lookup, promote = steps
    cfg = trial_config(config, best.params)
    store = pipeline.open_store(cfg)
    run_id = best.user_attrs.get(RUN_ATTR)
    uri = tracking.resolve_tracking_uri(cfg.tracking, os.environ) if cfg.tracking.enabled else None
    tracker = tracking.Tracker(uri, run_id) if uri and run_id else None
    if tracker is not None:
        tracker.client.update_run(run_id, status="RUNNING")
    summary = pipeline.walk(
        cfg,
        list(pipeline.STAGES),
        build or (lambda n, c, up, ctx: pipeline.run_stage(n, c, up, store, ctx)),
        lookup or (lambda n, c, up, ctx: pipeline.lookup_stage(n, c, up, store, ctx)),
        on_stage=(lambda a: tracking.log_stage(tracker, a)) if tracker else None,
        promote=promote or _promote,
        ctx=pipeline.RunContext(uri, run_id),
    )
    if tracker is not None:
        tracker.end("FINISHED")
    if summary.registered and uri:
        from ner_pipeline import registry

        client = registry.client_for(uri)
        name, version = summary.registered["name"], summary.registered["version"]
        client.set_model_version_tag(name, version, "sweep.study", study)
        client.set_model_version_tag(name, version, "sweep.trial", str(best.number))
    return summary


def _promote(tracking_uri: str, cfg: Any, version: str) -> str:
    from ner_pipeline import registry

    return registry.promote(tracking_uri, cfg, cfg.model_name, version).summary()


def log_plots(study: Any, parent: tracking.Tracker) -> None:
    """Optuna's optimisation history and (with two or more complete trials) parameter importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, plot in (
            ("optimization_history", vis.plot_optimization_history),
            ("param_importances", vis.plot_param_importances),
        ):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances need two complete trials
                logger.info("sweep: no %s plot: %s", name, exc)
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            path = Path(tmp) / f"{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            parent.log_artifact(path, "sweep")
