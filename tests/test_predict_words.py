"""Word-level prediction: one label per word across windows, batching that changes nothing, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_LABELS, build_tiny_model

from ner_pipeline.config import TokenizeConfig
from ner_pipeline.errors import ModelError, PredictError
from ner_pipeline.predict import Predictor
from ner_pipeline.tokenize import load_tokenizer, make_preprocessing

# Common English words, one WordPiece each in the MiniLM vocabulary, so word and subword positions coincide.
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house", "with", "big", "red", "door"]


def _save_preprocessing(folder: Path, labels: list[str], **tokenize: object) -> None:
    cfg = TokenizeConfig(**{"max_length": 16, "stride": 4, **tokenize})
    make_preprocessing(load_tokenizer(str(folder)), cfg, labels).save(folder)


@pytest.fixture(scope="module")
def short_window_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random tagger whose windows hold 14 subwords, so a 20-word sentence already needs several."""
    folder = tmp_path_factory.mktemp("short-window-model")
    torch.manual_seed(3)
    build_tiny_model(folder, labels=TINY_LABELS)
    _save_preprocessing(folder, TINY_LABELS)
    return folder


@pytest.fixture(scope="module")
def tagger(short_window_model: Path) -> Predictor:
    return Predictor.load(short_window_model)


def sentence(n: int, offset: int = 0) -> list[str]:
    return [WORDS[(i + offset) % len(WORDS)] for i in range(n)]


class EdgeDistanceBackend:
    """Logits that say B-LOC as strongly as a token sits far from its window's edges, and a tie (O) at an edge."""

    name = "edge-distance"

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = np.zeros((*input_ids.shape, len(TINY_LABELS)), dtype=np.float32)
        for row, length in enumerate(attention_mask.sum(axis=1)):
            first, last = 1, int(length) - 2  # content sits between [CLS] and [SEP]
            for i in range(first, last + 1):
                out[row, i, TINY_LABELS.index("B-LOC")] = min(i - first, last - i)
        return out


def test_the_words_are_single_subwords_as_the_window_tests_assume(tagger: Predictor):
    assert [len(tagger.tokenizer.tokenize(w)) for w in WORDS] == [1] * len(WORDS)


def test_a_sentence_longer_than_max_length_gets_exactly_one_label_per_word(tagger: Predictor):
    words = sentence(200)
    assert len(tagger.encoder.encode(words)) > 10
    labels, scores = tagger.predict_words_with_scores([words, ["door"]])
    assert [len(s) for s in labels] == [200, 1] and [len(s) for s in scores] == [200, 1]
    assert set(labels[0]) <= set(TINY_LABELS)
    assert all(1 / len(TINY_LABELS) <= p <= 1.0 for p in scores[0])
    assert labels == tagger.predict_words([words, ["door"]])


def test_every_interior_word_is_read_from_a_window_where_it_has_context_on_both_sides(tagger: Predictor):
    edges = Predictor(EdgeDistanceBackend(), tagger.tokenizer, tagger.prep)
    words = sentence(40)
    assert len(tagger.encoder.encode(words)) >= 3
    [labels] = edges.predict_words([words])
    # Only the sentence's own first and last words sit at a window edge in every window that holds them.
    assert labels[0] == "O" and labels[-1] == "O"
    assert labels[1:-1] == ["B-LOC"] * 38


def test_batch_size_and_length_sorting_do_not_change_the_probabilities(tagger: Predictor):
    sentences = [sentence(n, offset=n) for n in (3, 40, 1, 12, 7, 25, 2)]
    together = tagger.word_probabilities(sentences, batch_size=64)
    one_by_one = tagger.word_probabilities(sentences, batch_size=1)
    alone = [tagger.word_probabilities([s])[0] for s in sentences]
    for a, b, c in zip(together, one_by_one, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(a, c, atol=1e-5)
    reversed_order = tagger.word_probabilities(sentences[::-1], batch_size=3)
    for a, b in zip(together, reversed_order[::-1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_empty_sentences_keep_their_place(tagger: Predictor):
    labels = tagger.predict_words([["the", "cat"], [], ["dog"]])
    assert [len(s) for s in labels] == [2, 0, 1]


def test_document_context_is_used_only_when_the_model_was_trained_with_it(
    short_window_model: Path, tmp_path: Path, tagger: Predictor
):
    words, context = [["cat", "sat"]], [(["the", "big", "red"], ["and", "dog", "ran"])]
    plain = tagger.word_probabilities(words)[0]
    np.testing.assert_array_equal(tagger.word_probabilities(words, contexts=context)[0], plain)

    folder = tmp_path / "with-context"
    shutil.copytree(short_window_model, folder)
    _save_preprocessing(folder, TINY_LABELS, document_context=True)
    flert = Predictor.load(folder)
    np.testing.assert_allclose(flert.word_probabilities(words)[0], plain, atol=1e-6)
    assert not np.allclose(flert.word_probabilities(words, contexts=context)[0], plain, atol=1e-4)


def test_an_empty_list_is_refused(tagger: Predictor):
    with pytest.raises(PredictError, match="non-empty list of word lists"):
        tagger.predict_words([])


@pytest.mark.parametrize(
    ("sentences", "message"),
    [
        ([["fine"], ["also", 3]], r"sentences\[1\]: expected a list of strings, got a int: 3"),
        (["a plain string"], r"sentences\[0\]: expected a list of words, got str"),
        ([["fine"], None], r"sentences\[1\]: expected a list of words, got NoneType"),
    ],
)
def test_items_that_are_not_lists_of_strings_are_named(tagger: Predictor, sentences: list, message: str):
    with pytest.raises(PredictError, match=message):
        tagger.predict_words(sentences)


def test_contexts_must_pair_with_the_sentences_and_batches_must_hold_something(tagger: Predictor):
    with pytest.raises(PredictError, match="got 1 for 2"):
        tagger.predict_words([["a"], ["b"]], contexts=[((), ())])
    with pytest.raises(PredictError, match="batch_size must be at least 1"):
        tagger.predict_words([["a"]], batch_size=0)


def test_a_base_model_without_id2label_is_refused(tmp_path: Path):
    folder = build_tiny_model(tmp_path / "base", labels=None)
    _save_preprocessing(folder, TINY_LABELS)
    with pytest.raises(ModelError, match="no id2label"):
        Predictor.load(folder)


def test_labels_that_disagree_with_the_preprocessing_contract_are_refused(tmp_path: Path, short_window_model: Path):
    folder = tmp_path / "model"
    shutil.copytree(short_window_model, folder)
    contract = json.loads((folder / "preprocessing.json").read_text())
    contract["labels"] = [*TINY_LABELS[:1], *reversed(TINY_LABELS[1:])]
    (folder / "preprocessing.json").write_text(json.dumps(contract))
    with pytest.raises(ModelError, match=r"differ from preprocessing\.json"):
        Predictor.load(folder)


class RandomBackend:
    """Logits drawn from each token id and position, so every window and subword reads differently."""

    name = "random"

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        seeded = (input_ids[..., None] * 7919 + np.arange(input_ids.shape[1])[None, :, None] * 104729) % 1009
        return (np.sin(seeded * np.arange(1, len(TINY_LABELS) + 1)) * 4).astype(np.float32)


def reference_probabilities(predictor: Predictor, words: list[str], aggregation: str) -> np.ndarray:
    """One sentence read back window by window with `merge_windows`, the loop the training stage uses."""
    from ner_pipeline.decoding import softmax
    from ner_pipeline.preprocessing import merge_windows

    windows = predictor.encoder.encode(words)
    values = []
    for window in windows:
        probs = softmax(RandomBackend().logits(np.array([window.input_ids]), np.ones((1, len(window.input_ids))))[0])
        per_token: list = [None] * len(window.word_ids)
        for i, w in enumerate(window.word_ids):
            if w >= 0 and (i == 0 or window.word_ids[i - 1] != w):
                block = probs[[j for j, v in enumerate(window.word_ids) if v == w]]
                pick = {"first": block[0], "average": block.mean(0), "max": block[block.max(-1).argmax()]}
                per_token[i] = pick[aggregation]
        values.append(per_token)
    return np.stack(merge_windows([w.word_ids for w in windows], values, len(words)))


@pytest.mark.parametrize("aggregation", ["first", "average", "max"])
def test_the_vectorised_read_back_picks_what_merge_windows_picks(tagger: Predictor, aggregation: str):
    predictor = Predictor(RandomBackend(), tagger.tokenizer, tagger.prep, max_batch_tokens=40)
    sentences = [sentence(n, offset=n) + ["Schwarzenegger"] * (n % 3) for n in (1, 7, 30, 2, 45, 13)] + [[]]
    got = predictor.word_probabilities(sentences, aggregation=aggregation)  # type: ignore[arg-type]
    for words, probs in zip(sentences, got, strict=True):
        if words:
            expected = reference_probabilities(predictor, words, aggregation)
            np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_remembered_subwords_are_the_ones_a_sentence_call_gives(tagger: Predictor):
    sentences = [["Schwarzenegger", "'s", "U.S.", "café", "e\u0301té", "1,000", "東京"], ["the", "Schwarzenegger"]]
    first = tagger._subwords(sentences)
    assert first == tagger.encoder.subwords(sentences)
    assert tagger._subwords(sentences) == first  # now from the cache
