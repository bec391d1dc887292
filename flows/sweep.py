"""The `ner-sweep` flow: an Optuna hyperparameter sweep whose trials run as Prefect tasks, then the best trial is
evaluated, exported, registered and gated.

The study, trial configs, MLflow runs and the final walk are the library's (`ner_pipeline.sweep`); this flow only
hands it a way to run a batch of trials as concurrent Prefect tasks and the stage tasks of the training flow.
Concurrency: `sweep.parallel` trials at a time in this flow run; the tag `ner-sweep-trial` lets a Prefect
concurrency limit (`prefect concurrency-limit create ner-sweep-trial 2`) cap trials across flow runs.

Installed as `ner_pipeline_flows.sweep`; `prefect deploy` loads this file by path from the project root.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ner_pipeline import pipeline, sweep
from ner_pipeline.config import RegistryConfig
from ner_pipeline.sweep_trials import TrialOutcome, TrialSpec, run_trial
from ner_pipeline_tasks.config import check_model_task, load_config_task, show_library_logs
from ner_pipeline_tasks.registry import promote_task
from ner_pipeline_tasks.stages import build_stage, lookup_task


# No Prefect cache: a trial is cached by its train artifact, and Optuna must see every trial it asked for run.
@task(name="sweep-trial", task_run_name="trial-{spec.number}", tags=["ner-sweep-trial"], cache_policy=NO_CACHE)
def trial_task(spec: TrialSpec) -> TrialOutcome:
    """One trial: ingest → tokenize → train with the trial's values, in its own MLflow child run."""
    return run_trial(spec)


def run_as_tasks(specs: Sequence[TrialSpec]) -> list[TrialOutcome]:
    """Submit a batch of trials as concurrent tasks and wait for all of them (outcomes in order)."""
    futures = [trial_task.submit(spec) for spec in specs]
    return [future.result() for future in futures]


@flow(name="ner-sweep", log_prints=False)
def sweep_flow(
    config_path: str = "configs/quickstart.yaml",
    overrides: list[str] | None = None,
    trials: int | None = None,
) -> sweep.SweepResult:
    """Run or resume the config's sweep.

    Args:
        config_path: YAML config with a `sweep:` section, relative to the working directory.
        overrides: `key=value` config overrides, e.g. `["sweep.parallel=2"]`.
        trials: Trials to add; None resumes up to `sweep.trials` finished trials.
    """
    show_library_logs()
    config = load_config_task(config_path, list(overrides or []))
    check_model_task(config, list(pipeline.STAGES), config_path, list(overrides or []))

    def promote(tracking_uri: str, cfg: RegistryConfig, version: str) -> str:
        return promote_task(tracking_uri, cfg, version).summary()

    result = sweep.run_sweep(
        config, trials, execute=run_as_tasks, build=build_stage, lookup=lookup_task, promote=promote
    )
    create_markdown_artifact(result.to_markdown(), key="ner-sweep-summary", description="Trials and best model")
    get_run_logger().info("best trial %s: %s %s", result.best_number, result.best_value, result.best_params)
    return result


if __name__ == "__main__":
    sweep_flow()
