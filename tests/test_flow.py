"""The `ner-training` flow under Prefect's test harness: caching across runs, stage selection, failure recovery."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import write_tiny_config

from ner_pipeline import registry
from ner_pipeline.artifacts import ArtifactStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def run_flow(config: Path, **kwargs):
    from ner_pipeline_flows.training import training_flow

    return training_flow(config_path=str(config), **kwargs)


def test_second_run_recomputes_nothing_and_a_hyperparameter_change_reruns_train_onwards(
    harness, tmp_path: Path, tiny_base_dir: Path
):
    config = write_tiny_config(tmp_path, tiny_base_dir)
    first = run_flow(config)
    assert first.computed == ["ingest", "tokenize", "train", "evaluate", "export", "register"]
    assert first.registered == {"name": "ner-tiny", "version": "1"}
    assert mlflow_runs(tmp_path) == [first.run_id]

    second = run_flow(config)
    assert second.computed == []
    assert {k: a.key for k, a in second.stages.items()} == {k: a.key for k, a in first.stages.items()}
    assert all(a.cached for a in second.stages.values())
    assert second.run_id == first.run_id and mlflow_runs(tmp_path) == [first.run_id]  # no run for no work

    changed = run_flow(config, overrides=["train.learning_rate=1e-4"])
    assert changed.computed == ["train", "evaluate", "export", "register"]
    assert changed.stages["tokenize"].key == first.stages["tokenize"].key
    assert changed.stages["train"].key != first.stages["train"].key
    assert changed.registered == {"name": "ner-tiny", "version": "2"}
    assert sorted(mlflow_runs(tmp_path)) == sorted([first.run_id, changed.run_id])  # one run per trained model

    # auto_promote (on in quickstart): the gate runs once per newly registered version, never on a cached one.
    assert first.decision.startswith("PROMOTE ner-tiny v- -> v1") and second.decision is None
    assert changed.decision is not None
    audit = registry.history(f"sqlite:///{tmp_path}/mlflow.db", "ner-tiny")
    assert audit[0]["action"] == "promote"
    assert [e["to_version"] for e in audit] == ["1", "2"]


def mlflow_runs(folder: Path) -> list[str]:
    """Ids of every run in the tiny config's store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    return [r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]


def test_registering_a_model_trained_earlier_logs_it_into_the_run_that_trained_it(
    harness, tmp_path: Path, tiny_base_dir: Path
):
    config = write_tiny_config(tmp_path, tiny_base_dir, export={"enabled": False})
    trained = run_flow(config, overrides=["registry.enabled=false"])
    registered = run_flow(config)
    assert registered.computed == ["register"] and registered.run_id == trained.run_id
    version = registry.client_for(f"sqlite:///{tmp_path}/mlflow.db").get_model_version("ner-tiny", "1")
    assert version.run_id == trained.run_id and mlflow_runs(tmp_path) == [trained.run_id]


def test_the_conll2003_flow_needs_a_data_path_and_trains_on_the_folder_it_names(
    harness, tmp_path: Path, tiny_base_dir: Path
):
    from prefect.exceptions import ParameterTypeError

    from ner_pipeline.errors import ConfigError
    from ner_pipeline_flows.training import conll2003_flow

    # What a scheduled run of the weekly deployment reports when nobody set data_path:
    with pytest.raises(ParameterTypeError, match="data_path: Field required"):
        conll2003_flow.validate_parameters({"config_path": "configs/experiment/minilm.yaml"})
    with pytest.raises(ConfigError, match="parameter data_path is empty"):
        conll2003_flow(data_path=" ")
    config = write_tiny_config(tmp_path, tiny_base_dir, registry={"enabled": False}, export={"enabled": False})
    fixture = Path(__file__).parent / "data" / "conll_iob1"
    summary = conll2003_flow(
        data_path=str(fixture), config_path=str(config), overrides=["data.source=conll", "data.scheme=iob1"]
    )
    assert summary.computed == ["ingest", "tokenize", "train", "evaluate"]
    assert summary.stages["ingest"].stats["train"]["sentences"] == 5  # the fixture's, not WNUT-16's


def test_only_and_from_run_exactly_the_stages_asked_for(harness, tmp_path: Path, tiny_base_dir: Path):
    config = write_tiny_config(tmp_path, tiny_base_dir, registry={"enabled": False}, export={"enabled": False})
    run_flow(config)
    store = ArtifactStore(tmp_path / "artifacts")
    [evaluated] = [a for a in store.list() if a.stage == "evaluate"]
    shutil.rmtree(evaluated.path)  # forget the report: --only evaluate must rebuild just that

    [model_run] = mlflow_runs(tmp_path)
    only = run_flow(config, only=["evaluate"])
    assert only.computed == ["evaluate"]
    assert list(only.stages) == ["ingest", "tokenize", "train", "evaluate"]
    assert only.run_id == model_run and mlflow_runs(tmp_path) == [model_run]  # the new report joins the model's run

    later = run_flow(config, from_stage="train", overrides=["train.seed=7"])
    assert later.computed == ["train", "evaluate"]


def test_only_a_stage_whose_upstream_is_missing_says_which_stage_to_run(harness, tmp_path: Path, tiny_base_dir: Path):
    from ner_pipeline.errors import ArtifactError

    config = write_tiny_config(tmp_path, tiny_base_dir, registry={"enabled": False}, export={"enabled": False})
    with pytest.raises(ArtifactError, match="run the 'ingest' stage first"):
        run_flow(config, only=["evaluate"])


def test_failing_stage_keeps_earlier_artifacts_and_the_rerun_picks_up_there(
    harness, tmp_path: Path, tiny_base_dir: Path
):
    model = tmp_path / "base"
    shutil.copytree(tiny_base_dir, model)
    weights = model / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")  # the tokenizer still loads; training cannot
    config = write_tiny_config(tmp_path, model, registry={"enabled": False}, export={"enabled": False})
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises for corrupt weights
        run_flow(config)
    store = ArtifactStore(tmp_path / "artifacts")
    assert sorted(a.stage for a in store.list()) == ["ingest", "tokenize"]

    weights.write_bytes(good)
    rerun = run_flow(config)
    assert rerun.computed == ["train", "evaluate"]
