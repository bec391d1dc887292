"""Model registry against real MLflow stores: the embedded SQLite store and an `mlflow server` on loopback."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_for_port
from test_promotion import add_version, aliases, rows_for

from ner_pipeline import registry
from ner_pipeline.config import RegistryConfig
from ner_pipeline.errors import RegistryError
from ner_pipeline.registry.register import fluent_uris

NAME = "ner-test"
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
CFG = RegistryConfig(model_name=NAME, metric="test_f1", min_delta=0.0, max_type_drop=0.02)


def tags(f1: float, per: float, loc: float, fingerprint: str = "fp-test") -> dict[str, str]:
    return {
        "metric.test_f1": str(f1),
        "type_f1.PER": str(per),
        "type_f1.LOC": str(loc),
        "data.test_fingerprint": fingerprint,
        "artifact.train": f"train-{f1}-{per}",
    }


def register(uri: str, model_dir: Path, **kwargs) -> str:
    import mlflow

    before = mlflow.get_tracking_uri(), [os.environ.get(v) for v in URI_VARIABLES]
    record = registry.log_and_register(CFG, model_dir, uri, None, tags(**kwargs), description="test version")
    assert (mlflow.get_tracking_uri(), [os.environ.get(v) for v in URI_VARIABLES]) == before  # all put back
    return record["version"]


def exercise_gate(uri: str, model_dir: Path, folder: Path) -> None:
    """The sequence both stores must support: promote, refuse noise, refuse a per-type drop, run production at gate
    time on another test set, roll back once."""

    def version(keep: dict[str, float], n: int = 300) -> str:
        return add_version(uri, rows_for(keep, n), folder, model_dir, name=NAME)

    v1 = version({"PER": 0.8, "LOC": 0.8})
    assert aliases(uri, NAME) == {"challenger": v1}
    first = registry.promote(uri, CFG, NAME)
    assert first.accepted and aliases(uri, NAME)["production"] == v1

    v2 = version({"PER": 0.9, "LOC": 0.8})
    second = registry.promote(uri, CFG, NAME, v2)
    assert second.accepted and second.numbers["production_predictions"] == "stored"
    assert aliases(uri, NAME)["production"] == v2 and aliases(uri, NAME)["previous-production"] == v1

    worse = version({"PER": 0.7, "LOC": 0.7})
    refused = registry.promote(uri, CFG, NAME, worse)
    assert not refused.accepted and "lower bound not above min_delta" in refused.reason
    assert refused.numbers["delta_high"] < 0 and aliases(uri, NAME)["production"] == v2

    per_drop = version({"PER": 0.8, "LOC": 1.0})
    refused_type = registry.promote(uri, CFG, NAME, per_drop)
    assert not refused_type.accepted and refused_type.reason.startswith("PER F1 falls by 5.8 points")

    # Another test set: production has no predictions of it, so the gate downloads and runs it (a model that tags
    # every word B-PER scores about 0.3 here) against the challenger's stored predictions.
    other_data = version({"PER": 0.9, "LOC": 0.9}, n=120)
    promoted = registry.promote(uri, CFG, NAME, other_data)
    assert promoted.accepted and promoted.numbers["production_predictions"] == "run at gate time"
    assert promoted.numbers["production_test_f1"] == pytest.approx(2 * 120 / (600 + 240))  # 600 spans, 240 gold
    assert aliases(uri, NAME)["production"] == other_data

    back = registry.rollback(uri, NAME, reason="bad outputs")
    assert back.accepted and aliases(uri, NAME) == {"production": v2, "challenger": other_data}

    actions = [(e["action"], e["to_version"]) for e in registry.history(uri, NAME)]
    assert actions == [
        ("promote", v1),
        ("promote", v2),
        ("refuse", worse),
        ("refuse", per_drop),
        ("promote", other_data),
        ("rollback", v2),
    ]
    version_tags = registry.client_for(uri).get_model_version(NAME, per_drop).tags
    assert version_tags["promotion.last_decision"] == "refuse" and version_tags["promotion.compared_to"] == v2


@pytest.mark.slow
def test_gate_promotes_better_refuses_worse_and_rollback_restores_on_sqlite(tmp_path: Path, person_model: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exercise_gate(uri, person_model, tmp_path)


@pytest.mark.slow
def test_forced_promotion_needs_a_reason_and_is_recorded(tmp_path: Path, tiny_model_dir: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    v1 = register(uri, tiny_model_dir, f1=0.80, per=0.80, loc=0.80)
    registry.promote(uri, CFG, NAME, v1)
    v2 = register(uri, tiny_model_dir, f1=0.60, per=0.60, loc=0.60)
    with pytest.raises(RegistryError, match="--force needs --reason"):
        registry.promote(uri, CFG, NAME, v2, force=True)
    forced = registry.promote(uri, CFG, NAME, v2, force=True, reason="hotfix for a tokenizer bug")
    assert forced.accepted and forced.forced and "hotfix" in forced.reason
    assert "has no stored test predictions" in forced.reason  # what the gate said, kept beside the reason
    assert registry.history(uri, NAME)[-1]["forced"] is True
    tags = registry.client_for(uri).get_model_version(NAME, v2).tags
    assert tags["promotion.last_decision"] == "promote" and tags["promotion.last_actor"] == forced.actor
    assert registry.protected_artifact_keys(uri, []) == {"train-0.8-0.8", "train-0.6-0.6"}

    essay = "rolled back by hand after an incident; " * 500  # far beyond what a tag value may hold
    registry.rollback(uri, NAME, reason=essay)
    last = registry.history(uri, NAME)[-1]
    assert last["action"] == "rollback" and last["to_version"] == v1 and len(last["reason"]) <= 2000


def test_version_without_the_metric_is_refused_with_the_reason(tmp_path: Path, tiny_model_dir: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry.client_for(uri)
    client.create_registered_model(NAME)
    mv = client.create_model_version(NAME, source=str(tiny_model_dir), tags={"data.test_fingerprint": "x"})
    decision = registry.promote(uri, CFG, NAME, mv.version)
    assert not decision.accepted and "has no 'test_f1' metric" in decision.reason


def test_rollback_without_previous_production_is_a_clear_error(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry.client_for(uri).create_registered_model(NAME)
    with pytest.raises(RegistryError, match="no 'previous-production' alias"):
        registry.rollback(uri, NAME, "nothing works")
    with pytest.raises(RegistryError, match="registered model 'nope'"):
        registry.rollback(uri, "nope", "typo")


def test_fetching_a_model_leaves_mlflows_process_wide_uris_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow
    import yaml

    # MLflow mirrors any URI set process-wide into these variables, so they show whether one was set meanwhile.
    for variable in URI_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    logged = tmp_path / "logged"  # a pyfunc model folder as MLflow lays it out, without the cost of logging one
    (logged / "artifacts" / "model").mkdir(parents=True)
    (logged / "artifacts" / "model" / "config.json").write_text("{}")
    flavor = {"python_function": {"artifacts": {"model": {"path": "artifacts/model"}}}}
    (logged / "MLmodel").write_text(yaml.safe_dump({"flavors": flavor}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry.client_for(uri)
    client.create_registered_model(NAME)
    mv = client.create_model_version(NAME, source=str(logged), tags={"metric.test_f1": "0.9"})
    client.set_registered_model_alias(NAME, "production", mv.version)

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    fetched = registry.fetch_model(f"models:/{NAME}@production", uri, tmp_path / "download")
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before and before[0] != uri
    assert not any(variable in os.environ for variable in URI_VARIABLES)
    assert fetched.version == str(mv.version) and fetched.alias == "production" and fetched.metrics == {"test_f1": 0.9}
    assert (fetched.model_dir / "config.json").is_file() and fetched.model_dir.is_relative_to(tmp_path / "download")


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` on a free loopback port with its own SQLite file and artifact folder."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_for_port(port, proc, tmp_path / "server.log", timeout=90)
    yield uri
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_register_promote_rollback_through_a_tracking_server(mlflow_server: str, person_model: Path, tmp_path: Path):
    exercise_gate(mlflow_server, person_model, tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.get_model_version_by_alias(NAME, "production").version == "2"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 5
    fetched = registry.fetch_model(f"models:/{NAME}@production", mlflow_server, tmp_path / "download")
    assert fetched.version == "2" and (fetched.model_dir / "config.json").is_file()  # through the proxied store


@pytest.mark.slow
def test_model_loaded_from_the_production_alias_predicts_like_its_source_folder(tmp_path: Path, person_model: Path):
    import mlflow.pyfunc
    import pandas as pd

    from ner_pipeline.predict import Predictor

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    version = register(uri, person_model, f1=0.8, per=0.8, loc=0.8)
    assert registry.promote(uri, CFG, NAME, version).accepted
    with fluent_uris(uri):  # MLflow's own loader reads the fluent URIs; put back after, for later tests
        loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@production")
    texts = ["Angela Merkel visited São Paulo", "nothing"]
    got = loaded.predict(pd.DataFrame({"text": texts}))
    expected = [[e.model_dump() for e in ents] for ents in Predictor.load(person_model).predict(texts)]
    assert got == expected
    fetched = registry.fetch_model(f"models:/{NAME}@production", uri, tmp_path / "download")
    assert fetched.version == version and (fetched.model_dir / "preprocessing.json").is_file()


@pytest.mark.slow
def test_cli_lists_versions_shows_history_and_compares_side_by_side(tmp_path: Path, tiny_model_dir: Path):
    from typer.testing import CliRunner

    from ner_pipeline import tracking
    from ner_pipeline.cli import app
    from ner_pipeline.config import PipelineConfig

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = []
    for lr in ("2e-5", "3e-5"):
        config = PipelineConfig.model_validate({"name": "cmp", "train": {"learning_rate": float(lr)}})
        tracker = tracking.start_run(config, uri)
        tracker.log_metrics({"test_f1": 0.8 if lr == "2e-5" else 0.85})
        tracker.end()
        runs.append(tracker.run_id)
        registry.log_and_register(CFG, tiny_model_dir, uri, tracker.run_id, tags(f1=0.8, per=0.8, loc=0.8), "v")
    common = ["--set", f"tracking.tracking_uri={uri}"]
    runner = CliRunner()
    promoted = runner.invoke(app, ["promote", "--model", NAME, "--version", "1", *common])
    assert promoted.exit_code == 0 and promoted.stdout.startswith("PROMOTE ner-test v- -> v1")
    refused = runner.invoke(app, ["promote", "--model", NAME, "--version", "2", *common])
    assert refused.exit_code == 2 and "REFUSE" in refused.output
    listed = runner.invoke(app, ["models", "list", NAME, *common])
    assert listed.exit_code == 0 and "production" in listed.output and "challenger" in listed.output
    history = runner.invoke(app, ["models", "history", NAME, *common])
    assert history.exit_code == 0 and "promote" in history.output and "refuse" in history.output
    compared = runner.invoke(app, ["compare", runs[0], f"{NAME}/2", *common])
    assert compared.exit_code == 0, compared.output
    assert "param train.learning_rate" in compared.output and "metric test_f1" in compared.output
    assert "param train.batch_size" not in compared.output  # only params that differ
    missing = runner.invoke(app, ["compare", "nope", runs[0], *common])
    assert missing.exit_code == 1 and "'nope': not a run id" in missing.output


def test_registering_prints_nothing_to_the_console_and_logs_what_mlflow_said(
    tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="ner_pipeline.registry.register"):
        assert register(uri, tiny_model_dir, f1=0.8, per=0.8, loc=0.8) == "1"
        assert register(uri, tiny_model_dir, f1=0.7, per=0.7, loc=0.7) == "2"
    err = capfd.readouterr().err
    # As MLflow prints them (a line of their own); an earlier in-process CLI test may leave a log handler whose
    # closed stream makes logging dump records to stderr, which is not the console's story.
    printed = re.compile(
        r"^(Successfully registered model|Created version|\S+ \S+ WARNING mlflow\.pyfunc: Passing)", re.M
    )
    assert not printed.search(err), err  # MLflow's warning about the Python object we log on purpose included
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mlflow: ")]
    assert f"mlflow: Successfully registered model '{CFG.model_name}'." in said
    assert f"mlflow: Created version '2' of model '{CFG.model_name}'." in said
