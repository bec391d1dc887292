"""Hyperparameter sweeps: the `ner-sweep` flow under Prefect's test harness and a killed CLI sweep resuming."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_tiny_config

from ner_pipeline.errors import ConfigError

SPACE = {
    "train.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "train.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
    "train.batch_size": {"type": "categorical", "choices": [8, 16]},
}


def sweep_config(folder: Path, base: Path, **sweep: object) -> Path:
    settings = {"trials": 3, "pruner_startup_trials": 1, "space": SPACE, **sweep}
    # No ONNX export: the best trial's registration is what is tested here, and export takes a minute on 2 cores.
    return write_tiny_config(folder, base, data={"max_sentences": 100}, export={"enabled": False}, sweep=settings)


def child_runs(tracking_uri: str, parent_run_id: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def load_study(folder: Path):
    import optuna

    return optuna.load_study(study_name="tiny-sweep", storage=f"sqlite:///{folder}/optuna.db")


def study_finished_a_trial(folder: Path) -> bool:
    """True once the study exists and has a finished trial (the file appears before the study is written)."""
    if not (folder / "optuna.db").is_file():
        return False
    try:
        return _finished(load_study(folder))
    except KeyError:  # optuna: "Record does not exist" until the sweep has created the study
        return False


def test_a_distribution_without_bounds_fails_naming_the_key(tmp_path: Path, tiny_base_dir: Path):
    from ner_pipeline.config import load_config

    config = sweep_config(tmp_path, tiny_base_dir, space={"train.learning_rate": {"type": "loguniform", "low": 0}})
    with pytest.raises(ConfigError, match=r"sweep.space: 'train.learning_rate' must be"):
        load_config(config)


def test_a_space_key_that_is_no_config_field_fails_in_one_line(tmp_path: Path, tiny_base_dir: Path):
    from ner_pipeline.config import load_config
    from ner_pipeline.sweep import run_sweep

    bad = {"train.learning_rat": {"type": "uniform", "low": 0.1, "high": 0.2}}
    with pytest.raises(ConfigError, match=r"'train\.learning_rat' is not a config field"):
        run_sweep(load_config(sweep_config(tmp_path, tiny_base_dir, space=bad)))


@pytest.mark.slow
def test_flow_runs_three_trials_as_child_runs_and_registers_the_best(tmp_path: Path, tiny_base_dir: Path):
    from prefect.testing.utilities import prefect_test_harness

    from ner_pipeline import registry
    from ner_pipeline_flows.sweep import sweep_flow

    config = sweep_config(tmp_path, tiny_base_dir, parallel=2)
    with prefect_test_harness(server_startup_timeout=120):
        result = sweep_flow(config_path=str(config))

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = load_study(tmp_path)
    assert len(study.trials) == 3 and len(result.outcomes) == 3
    runs = {int(r.data.tags["sweep.trial"]): r for r in child_runs(uri, result.parent_run_id)}
    assert sorted(runs) == [0, 1, 2]
    for trial in study.trials:
        assert trial.state.name in ("COMPLETE", "PRUNED")
        run = runs[trial.number]
        assert run.data.tags["sweep.state"] == trial.state.name
        assert run.info.status == ("FINISHED" if trial.state.name == "COMPLETE" else "KILLED")
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(trial.params["train.learning_rate"])
        assert "validation_f1" in run.data.metrics  # reported per epoch by the pruning callback
    # ingest and tokenize are built once and shared (batch size and learning rate do not change them)
    assert len({r.data.tags["artifact.tokenize"] for r in runs.values()}) == 1

    best = study.best_trial
    assert result.best_number == best.number
    client = registry.client_for(uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["sweep.study"] == "tiny-sweep"
    assert parent.data.metrics["best_trial"] == best.number
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert "sweep/optimization_history.png" in plots
    [version] = client.search_model_versions("name='ner-tiny'")
    assert version.tags["sweep.study"] == "tiny-sweep" and version.tags["sweep.trial"] == str(best.number)
    assert version.run_id == runs[best.number].info.run_id
    assert result.summary is not None and result.summary.decision.startswith("PROMOTE ner-tiny v- -> v1")


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_runs_the_missing_trials(tmp_path: Path, tiny_base_dir: Path):
    from ner_pipeline.config import load_config
    from ner_pipeline.sweep import run_sweep

    config = sweep_config(tmp_path, tiny_base_dir, space={k: v for k, v in SPACE.items() if k != "train.batch_size"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ner_pipeline.cli", "sweep", "-c", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 150
        while not study_finished_a_trial(tmp_path):
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first trial did not finish in time"
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    killed = load_study(tmp_path)
    assert len(_finished(killed)) == 1, "killed after the first trial"

    result = run_sweep(load_config(config))  # resume: up to sweep.trials finished trials

    study = load_study(tmp_path)
    assert len(result.outcomes) == 2
    assert len(_finished(study)) == 3
    assert [t.state.name for t in study.trials if t.state.name == "RUNNING"] == []  # the killed trial is failed
    runs = child_runs(f"sqlite:///{tmp_path}/mlflow.db", result.parent_run_id)
    assert len([r for r in runs if r.data.tags.get("sweep.state") in ("COMPLETE", "PRUNED")]) == 3
    assert result.summary is not None and result.summary.registered == {"name": "ner-tiny", "version": "1"}

    more = run_sweep(load_config(config), trials=1)  # --trials adds to the study
    assert len(more.outcomes) == 1 and len(_finished(load_study(tmp_path))) == 4


def _finished(study) -> list:
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def test_pruning_callback_stops_a_trial_below_the_median_and_lets_a_good_one_run():
    import optuna
    from transformers import TrainerControl, TrainerState

    from ner_pipeline.sweep_trials import pruning_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = study.ask()
    first.report(0.8, 1)
    study.tell(first, 0.8)
    state = TrainerState(epoch=1.0)

    good = study.ask()
    pruning_callback(good, "f1", None).on_evaluate(None, state, TrainerControl(), metrics={"eval_f1": 0.9})
    assert study.get_trials()[good.number].intermediate_values == {1: 0.9}  # reported, not pruned

    bad = study.ask()
    with pytest.raises(optuna.TrialPruned, match=r"validation f1 0\.1000 at epoch 1"):
        pruning_callback(bad, "f1", None).on_evaluate(None, state, TrainerControl(), metrics={"eval_f1": 0.1})
