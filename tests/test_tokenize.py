"""Tokenize: subword label alignment, windows that map every word back once, document context, the contract."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import PACKAGED_MODEL

from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import DataConfig, ModelConfig, TokenizeConfig
from ner_pipeline.errors import ModelError
from ner_pipeline.ingest import run_ingest
from ner_pipeline.tokenize import (
    IGNORE,
    Preprocessing,
    encode_words,
    load_tokenized,
    load_tokenizer,
    make_preprocessing,
    merge_windows,
    needs_prefix_space,
    run_tokenize,
    window_spans,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(PACKAGED_MODEL)


def prep_for(tokenizer, **kwargs) -> Preprocessing:
    return make_preprocessing(tokenizer, TokenizeConfig(**kwargs), LABELS)


def test_first_subword_is_labelled_and_the_rest_ignored(tokenizer):
    words = ["Schwarzenegger", "visited", "Kathmandu"]
    [window] = encode_words(words, tokenizer, prep_for(tokenizer), [1, 0, 3])
    tokens = tokenizer.convert_ids_to_tokens(window.input_ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    first = {w: i for i, w in reversed(list(enumerate(window.word_ids))) if w >= 0}
    assert len([w for w in window.word_ids if w == 0]) > 1, "the name should split into several subwords"
    for position, (word, label) in enumerate(zip(window.word_ids, window.labels, strict=True)):
        if word < 0:
            assert label == IGNORE
        elif position == first[word]:
            assert label == [1, 0, 3][word]
        else:
            assert label == IGNORE


def test_all_subwords_mode_continues_b_as_i(tokenizer):
    [window] = encode_words(
        ["Schwarzenegger", "visited"], tokenizer, prep_for(tokenizer, label_all_subwords=True), [1, 0]
    )
    name_labels = [label for word, label in zip(window.word_ids, window.labels, strict=True) if word == 0]
    assert name_labels[0] == 1 and set(name_labels[1:]) == {2}


def test_long_sentence_windows_cover_every_word_and_merge_back_exactly_once(tokenizer):
    words = [f"word{i % 7}x{i}" for i in range(300)]
    prep = prep_for(tokenizer, max_length=32, stride=8)
    windows = encode_words(words, tokenizer, prep, [0] * len(words))
    assert len(windows) > 10
    assert all(len(w.input_ids) <= 32 for w in windows)
    covered = [w for window in windows for w in set(window.word_ids) if w >= 0]
    assert set(covered) == set(range(len(words)))
    assert len(covered) > len(words), "consecutive windows should overlap"
    merged = merge_windows([w.word_ids for w in windows], [w.word_ids for w in windows], len(words))
    assert merged == list(range(len(words)))


def test_merge_prefers_the_window_where_a_word_has_most_context():
    # word 2 sits at the right edge of window A and in the middle of window B
    window_a = [-1, 0, 1, 2, -1]
    window_b = [-1, 1, 2, 3, -1]
    merged = merge_windows([window_a, window_b], [["a"] * 5, ["b"] * 5], 4)
    assert merged == ["a", "a", "b", "b"]


def test_window_spans_overlap_by_at_least_stride_tokens():
    spans = window_spans([2] * 20, budget=10, stride=4)
    assert spans[0] == (0, 5)
    assert all(b[0] <= a[1] - 2 for a, b in itertools.pairwise(spans))
    assert spans[-1][1] == 20


def test_word_longer_than_a_window_is_truncated_not_lost(tokenizer):
    words = ["a", "x" * 400, "b"]
    windows = encode_words(words, tokenizer, prep_for(tokenizer, max_length=16, stride=2), [0, 1, 0])
    assert {w for window in windows for w in window.word_ids if w >= 0} == {0, 1, 2}
    assert all(len(w.input_ids) <= 16 for w in windows)


def test_document_context_is_unlabelled_and_within_budget(tokenizer):
    prep = prep_for(tokenizer, max_length=24, stride=4, document_context=True)
    left = ["the", "day", "before", "yesterday", "it", "rained", "hard", "all", "over", "the", "city"] * 2
    right = ["and", "then", "the", "sun", "came", "out", "again", "today", "over", "the", "river"] * 2
    [window] = encode_words(["Paris", "flooded"], tokenizer, prep, [3, 0], left, right)
    assert len(window.input_ids) == 24
    context = [i for i, w in enumerate(window.word_ids) if w < 0][1:-1]
    assert context, "context tokens should fill the room the sentence leaves"
    assert all(window.labels[i] == IGNORE for i in context)
    assert [window.labels[i] for i, w in enumerate(window.word_ids) if w >= 0] == [3, 0]


def test_preprocessing_round_trip_and_missing_file(tmp_path: Path, tokenizer):
    prep = prep_for(tokenizer, max_length=64, stride=8)
    prep.save(tmp_path)
    assert Preprocessing.load(tmp_path) == prep
    with pytest.raises(ModelError, match=r"no preprocessing\.json"):
        Preprocessing.load(tmp_path / "elsewhere")


def test_byte_level_bpe_models_get_a_prefix_space():
    assert needs_prefix_space("roberta") and needs_prefix_space("gpt2")
    assert not needs_prefix_space("bert") and not needs_prefix_space("distilbert")


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
