"""Tokenize stage: real data through the encoder, cached by its config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import PACKAGED_MODEL

from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import DataConfig, ModelConfig, TokenizeConfig
from ner_pipeline.ingest import run_ingest
from ner_pipeline.preprocessing import Preprocessing
from ner_pipeline.tokenize import load_tokenized, run_tokenize


def test_stage_on_real_data_is_cached_and_changes_with_its_config(tmp_path: Path):
    store = ArtifactStore(tmp_path)
    ingest = run_ingest(DataConfig(source="wnut16", path=None), store)
    model = ModelConfig(name_or_path=PACKAGED_MODEL)
    first = run_tokenize(model, TokenizeConfig(max_length=64, stride=8), ingest, store)
    assert run_tokenize(model, TokenizeConfig(max_length=64, stride=8), ingest, store).cached
    other = run_tokenize(model, TokenizeConfig(max_length=32, stride=8), ingest, store)
    assert other.key != first.key and not other.cached
    data = load_tokenized(first)
    assert set(data["train"].column_names) >= {
        "input_ids",
        "attention_mask",
        "labels",
        "word_ids",
        "sentence_id",
        "window",
    }
    assert data["train"].num_rows >= 1915
    assert (first.path / "tokenizer" / "tokenizer.json").is_file()
    assert Preprocessing.load(first.path).labels[0] == "O"
    assert other.stats["sentences_windowed"] > first.stats["sentences_windowed"]


def test_tokenize_shows_one_bar_for_the_stage_and_none_for_a_small_data_set(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    import ner_pipeline.tokenize as tokenize

    store = ArtifactStore(tmp_path)
    ingest = run_ingest(DataConfig(source="wnut16", path=None), store)
    model = ModelConfig(name_or_path=PACKAGED_MODEL)
    capfd.readouterr()
    run_tokenize(model, TokenizeConfig(max_length=64, stride=8), ingest, store)
    assert not bars(capfd.readouterr().err)  # 2,394 sentences: a few seconds, no bar

    monkeypatch.setattr(tokenize, "PROGRESS_MIN_SENTENCES", 1)
    run_tokenize(model, TokenizeConfig(max_length=32, stride=8), ingest, store)
    err = capfd.readouterr().err
    assert bars(err) == {"tokenize"}, err  # one bar over every split, not one per split
    assert "0/2394 " in err  # the bar counts the sentences of every split


def bars(err: str) -> set[str]:
    """The descriptions of the tqdm bars drawn on stderr (`desc:  42%|...`) that count sentences."""
    return set(re.findall(r"([\w ]+):\s+\d+%\|[^\r\n]*sent", err))
