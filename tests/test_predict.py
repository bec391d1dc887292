"""Predictor: exact character offsets, long texts, aggregation strategies, errors, word-level labels."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_LABELS, build_tiny_model

from ner_pipeline.config import TokenizeConfig
from ner_pipeline.errors import ModelError, PredictError
from ner_pipeline.predict import Predictor, split_words
from ner_pipeline.tokenize import load_tokenizer, make_preprocessing

TRICKY = "Zoë  Ødegård\tmet\nJosé-María in São Paulo!! 🎉🎉 (naïve café)… ‘quoted’ e\u0301té 東京 x"


@pytest.fixture(scope="module")
def everything_is_a_person(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose head always says B-PER, so every word is an entity and every offset is checked."""
    folder = tmp_path_factory.mktemp("b-per-model")
    torch.manual_seed(0)
    build_tiny_model(folder, labels=TINY_LABELS)
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0]))  # B-PER wins everywhere
    model.save_pretrained(folder)
    make_preprocessing(load_tokenizer(str(folder)), TokenizeConfig(max_length=64, stride=8), TINY_LABELS).save(folder)
    return folder


# Per-token label distributions (O, B-LOC, I-LOC, B-PER, I-PER) of the hand-made model below: a word's first
# subword leans to B-PER, its other subwords lean harder to B-LOC, and O has the most mass on average, so the
# three aggregation strategies read the same word three ways.
FIRST_SUBWORD = [0.45, 0.05, 0.0, 0.5, 0.0]
OTHER_SUBWORDS = [0.45, 0.55, 0.0, 0.0, 0.0]
ELSEWHERE = [0.98, 0.005, 0.005, 0.005, 0.005]
SPLIT_WORD = "Schwarzenegger"  # three WordPieces in the MiniLM vocabulary


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's n x n Hadamard matrix: rows of ±1, mutually orthogonal; every row but the first has zero mean."""
    h = torch.ones(1, 1)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


@pytest.fixture(scope="module")
def subwords_disagree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT whose label distribution depends only on the token id: FIRST_SUBWORD for SPLIT_WORD's first
    piece, OTHER_SUBWORDS for its other pieces, ELSEWHERE for every other token.

    Every layer's attention and feed-forward output is zeroed (each layer passes its input on), position and
    type embeddings are zeroed, and each token's embedding is one of three orthogonal Hadamard rows, which
    LayerNorm leaves unchanged; the classifier maps each row to the log of its distribution.
    """
    from transformers import AutoModelForTokenClassification

    folder = tmp_path_factory.mktemp("subwords-disagree")
    build_tiny_model(folder, labels=TINY_LABELS)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    first, *others = load_tokenizer(str(folder))(SPLIT_WORD, add_special_tokens=False)["input_ids"]
    assert others and first not in others
    rows = hadamard(model.config.hidden_size)[1:4]  # ELSEWHERE, FIRST_SUBWORD, OTHER_SUBWORDS
    log_probs = torch.log(torch.tensor([ELSEWHERE, FIRST_SUBWORD, OTHER_SUBWORDS]).clamp_min(1e-6))
    with torch.no_grad():
        embeddings = model.bert.embeddings
        embeddings.word_embeddings.weight.copy_(rows[0].expand_as(embeddings.word_embeddings.weight))
        embeddings.word_embeddings.weight[first] = rows[1]
        embeddings.word_embeddings.weight[others] = rows[2]
        embeddings.position_embeddings.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
        for layer in model.bert.encoder.layer:
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.weight.zero_()
                dense.bias.zero_()
        model.classifier.weight.copy_(log_probs.T @ rows / model.config.hidden_size)
        model.classifier.bias.zero_()
    model.save_pretrained(folder)
    make_preprocessing(load_tokenizer(str(folder)), TokenizeConfig(max_length=64, stride=8), TINY_LABELS).save(folder)
    return folder


def test_split_words_offsets_give_back_the_exact_substrings():
    words = split_words(TRICKY)
    assert all(TRICKY[start:end] == word for word, start, end in words)
    surfaces = [w for w, _, _ in words]
    assert "Ødegård" in surfaces and "José-María" in surfaces and "e\u0301té" in surfaces and "東京" in surfaces
    assert "🎉" in surfaces and "!" in surfaces


def test_entities_point_at_the_original_text_for_unicode_whitespace_and_emoji(everything_is_a_person: Path):
    predictor = Predictor.load(everything_is_a_person)
    [entities] = predictor.predict(TRICKY)
    assert len(entities) == len(split_words(TRICKY))
    for entity in entities:
        assert TRICKY[entity.start : entity.end] == entity.text
        assert entity.label == "PER" and 0.0 < entity.score <= 1.0


def test_entities_near_the_end_of_a_5000_word_text_are_found(everything_is_a_person: Path):
    text = " ".join(f"word{i}" for i in range(5000))
    predictor = Predictor.load(everything_is_a_person)
    [entities] = predictor.predict([text])
    assert len(entities) == 5000
    assert entities[-1].text == "word4999" and entities[-1].end == len(text)


def test_words_in_give_one_label_per_word_even_across_windows(everything_is_a_person: Path):
    predictor = Predictor.load(everything_is_a_person)
    sentences = [["a"] * 300, ["Paris"], ["x", "y"]]
    labels = predictor.predict_words(sentences)
    assert [len(s) for s in labels] == [300, 1, 2]


@pytest.mark.parametrize("aggregation", ["first", "average", "max"])
def test_every_aggregation_strategy_returns_entities(everything_is_a_person: Path, aggregation: str):
    [entities] = Predictor.load(everything_is_a_person).predict("Kathmandu Schwarzenegger", aggregation=aggregation)
    assert [e.text for e in entities] == ["Kathmandu", "Schwarzenegger"]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("first", [("PER", "Schwarzenegger", 10, 24)]), ("average", []), ("max", [("LOC", "Schwarzenegger", 10, 24)])],
)
def test_aggregation_strategies_read_a_word_whose_subwords_disagree_differently(
    subwords_disagree: Path, aggregation: str, expected: list
):
    text = f"Paris met {SPLIT_WORD}"
    [entities] = Predictor.load(subwords_disagree).predict(text, aggregation=aggregation)
    assert [(e.label, e.text, e.start, e.end) for e in entities] == expected


def test_aggregated_word_probabilities_are_the_first_the_mean_or_the_most_confident_subwords(subwords_disagree: Path):
    predictor = Predictor.load(subwords_disagree)
    pieces = len(predictor.tokenizer.tokenize(SPLIT_WORD))
    expected = {
        "first": FIRST_SUBWORD,
        "average": (np.array(FIRST_SUBWORD) + (pieces - 1) * np.array(OTHER_SUBWORDS)) / pieces,
        "max": OTHER_SUBWORDS,
    }
    for aggregation, word in expected.items():
        [probs] = predictor.word_probabilities([["Paris", SPLIT_WORD]], aggregation=aggregation)  # type: ignore[arg-type]
        np.testing.assert_allclose(probs, [ELSEWHERE, word], atol=1e-4, err_msg=aggregation)


def test_bad_inputs_get_clear_errors(everything_is_a_person: Path):
    predictor = Predictor.load(everything_is_a_person)
    with pytest.raises(PredictError, match="non-empty list"):
        predictor.predict([])
    with pytest.raises(PredictError, match=r"texts\[1\]: expected a string, got int"):
        predictor.predict(["fine", 3])  # type: ignore[list-item]
    assert predictor.predict([""]) == [[]]


def test_a_folder_without_preprocessing_json_or_config_is_refused(tmp_path: Path, everything_is_a_person: Path):
    folder = tmp_path / "model"
    shutil.copytree(everything_is_a_person, folder)
    (folder / "preprocessing.json").unlink()
    with pytest.raises(ModelError, match=r"no preprocessing\.json"):
        Predictor.load(folder)
    with pytest.raises(ModelError, match="not a model folder"):
        Predictor.load(tmp_path / "missing")


def test_cli_predict_reads_arguments_files_and_jsonl(everything_is_a_person: Path, tmp_path: Path):
    import json

    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    texts = tmp_path / "texts.txt"
    texts.write_text("Ada Lovelace\n\nAlan Turing\n")
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"text": "Grace Hopper"}) + "\n")
    model = ["--model", str(everything_is_a_person), "--backend", "torch"]
    result = CliRunner().invoke(app, ["predict", "Marie Curie", "--file", str(texts), "--jsonl", str(lines), *model])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["text"] for r in rows] == ["Marie Curie", "Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert rows[0]["entities"][0] == {**rows[0]["entities"][0], "text": "Marie", "start": 0, "end": 5}
    lines.write_text("not json\n")
    bad = CliRunner().invoke(app, ["predict", "--jsonl", str(lines), *model])
    assert bad.exit_code == 1 and "in.jsonl line 1" in bad.output


class SeededBackend:
    """Logits drawn from each token id and position: every label, stray I- tags and adjacent B- tags occur."""

    name = "seeded"

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        seeded = (input_ids[..., None] * 7919 + np.arange(input_ids.shape[1])[None, :, None] * 104729) % 1009
        return (np.sin(seeded * np.arange(1, len(TINY_LABELS) + 1)) * 4).astype(np.float32)


def test_entities_are_the_spans_seqeval_reads_from_the_word_labels_with_their_mean_score(
    everything_is_a_person: Path,
):
    from ner_pipeline.spans import extract_spans

    loaded = Predictor.load(everything_is_a_person)
    predictor = Predictor(SeededBackend(), loaded.tokenizer, loaded.prep)
    texts = [TRICKY, "Angela Merkel met Emmanuel Macron in Paris.\nThe U.S. and S&P's 1,000 points.", "x"]
    found = predictor.predict(texts)
    for text, entities in zip(texts, found, strict=True):
        expected = []
        for line_start, line in ((m.start(), m.group()) for m in re.finditer(r"[^\n]+", text)):
            words = split_words(line)
            [probs] = predictor.word_probabilities([[w for w, _, _ in words]])
            best = probs.argmax(-1)
            for span in extract_spans([predictor.labels[k] for k in best]):
                score = float(np.mean([probs[j, best[j]] for j in range(span.start, span.end)]))
                start, end = line_start + words[span.start][1], line_start + words[span.end - 1][2]
                expected.append((span.label, start, end, score))
        assert [(e.label, e.start, e.end) for e in entities] == [x[:3] for x in expected]
        np.testing.assert_allclose([e.score for e in entities], [x[3] for x in expected], atol=1e-6)
    assert sum(map(len, found)) > 10
