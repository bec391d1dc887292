"""Raw text the way training saw it: CoNLL/PTB word splitting, invisible characters, sentences and their context."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_LABELS, biased_model, build_tiny_model

from ner_pipeline.backends import TorchBackend
from ner_pipeline.config import TokenizeConfig
from ner_pipeline.errors import PredictError
from ner_pipeline.predict import Predictor
from ner_pipeline.tokenize import encode_split, load_tokenizer, make_preprocessing
from ner_pipeline.words import INVISIBLE_CHARS, split_sentences, split_words

INVISIBLES = "\u200b\u200c\u200d\u00ad\ufeff\u2060"


def words_of(text: str) -> list[str]:
    words = split_words(text)
    assert all(text[start:end] == word for word, start, end in words)
    return [word for word, _, _ in words]


def sentences_of(text: str) -> list[str]:
    return [text[s.char_start : s.char_end] for s in split_sentences(text, split_words(text))]


# --- words ---------------------------------------------------------------------------------------------------------


def test_abbreviations_and_initialisms_keep_their_period_and_a_sentence_end_does_not():
    text = "U.S. officials met Mr. Smith of Acme Inc. in ST. LOUIS on Jan. 3 at 9 a.m. and left."
    assert words_of(text) == [
        "U.S.", "officials", "met", "Mr.", "Smith", "of", "Acme", "Inc.", "in", "ST.", "LOUIS",
        "on", "Jan.", "3", "at", "9", "a.m.", "and", "left", ".",
    ]  # fmt: skip
    assert words_of("He wrote No. 5, not No. It ended.") == [
        "He", "wrote", "No.", "5", ",", "not", "No", ".", "It", "ended", ".",
    ]  # fmt: skip
    assert words_of("the U.S.-based J. Smith") == ["the", "U.S.-based", "J.", "Smith"]


def test_numbers_with_separators_are_one_word_and_signs_and_units_split_as_in_conll():
    text = "1,000 rose 3.5 % to $ 12.50 (+44 .500 1996-12-06 3:30 9/11) -0.5 10-year 25th US$5m 1,234.5."
    assert words_of(text) == [
        "1,000", "rose", "3.5", "%", "to", "$", "12.50", "(", "+44", ".500", "1996-12-06", "3:30", "9/11", ")",
        "-", "0.5", "10-year", "25th", "US$", "5m", "1,234.5", ".",
    ]  # fmt: skip
    assert words_of("in Paris,France") == ["in", "Paris", ",", "France"]  # a comma splits unless between digits


def test_ampersand_names_stay_one_word_and_a_lone_ampersand_is_its_own():
    assert words_of("S&P 500, AT&T and Procter & Gamble") == [
        "S&P", "500", ",", "AT&T", "and", "Procter", "&", "Gamble",
    ]  # fmt: skip


def test_clitics_split_penn_treebank_style_and_names_with_apostrophes_do_not():
    text = "Germany's O'Brien didn't say I'm sure; the players' coach ’s they’re"
    assert words_of(text) == [
        "Germany", "'s", "O'Brien", "did", "n't", "say", "I", "'m", "sure", ";", "the", "players", "'",
        "coach", "’s", "they", "’re",
    ]  # fmt: skip
    assert words_of("Israel 's message , do n't") == ["Israel", "'s", "message", ",", "do", "n't"]


def test_punctuation_splits_and_runs_of_dots_or_dashes_stay_together():
    assert words_of('He said: "Go!" ... -- (now)?!') == [
        "He", "said", ":", '"', "Go", "!", '"', "...", "--", "(", "now", ")", "?", "!",
    ]  # fmt: skip
    assert words_of("see http://example.org/a?b=1. or mail@reuters.com.") == [
        "see", "http://example.org/a?b=1", ".", "or", "mail@reuters.com", ".",
    ]  # fmt: skip


def test_list_numbers_open_a_line_as_conll_results_tables_do():
    assert words_of("1. Michael Schumacher\n 2. Damon Hill") == ["1.", "Michael", "Schumacher", "2.", "Damon", "Hill"]
    assert words_of("finished 2. Then") == ["finished", "2", ".", "Then"]


@pytest.mark.parametrize("mark", list(INVISIBLES))
def test_invisible_characters_never_start_end_or_make_a_word(mark: str):
    text = f"{mark}Angela{mark} Merkel{mark} {mark} visited Zu{mark}rich .{mark}"
    words = words_of(text)
    assert mark not in "".join(w[0] + w[-1] for w in words)
    assert all(w.strip(INVISIBLE_CHARS) == w for w in words)
    if mark == "\u200b":  # the zero-width space separates words, as a space does
        assert words == ["Angela", "Merkel", "visited", "Zu", "rich", "."]
    else:  # the others join: they sit inside the word they are written in
        assert words == ["Angela", "Merkel", "visited", f"Zu{mark}rich", "."]


def test_a_zero_width_space_between_names_splits_them():
    assert words_of("Angela\u200bMerkel") == ["Angela", "Merkel"]


def test_emoji_flags_and_joined_sequences_are_one_word_each():
    text = "🇩🇪🇫🇷 Angela Merkel visited Zürich 🇨🇭 with 👨‍👩‍👧 👍🏽🎉🎉"
    assert words_of(text) == [
        "🇩🇪", "🇫🇷", "Angela", "Merkel", "visited", "Zürich", "🇨🇭", "with", "👨‍👩‍👧", "👍🏽", "🎉", "🎉",
    ]  # fmt: skip


def test_combining_accents_stay_on_their_letters():
    text = "Jose\u0301 Mari\u0301a visited Zu\u0308rich !\u0301"
    assert words_of(text) == ["Jose\u0301", "Mari\u0301a", "visited", "Zu\u0308rich", "!\u0301"]


def test_crlf_and_other_line_breaks_end_sentences_and_never_join_words():
    text = "SOCCER - JAPAN WIN\r\nNadim Ladki\r\n\r\nAL-AIN , United Arab Emirates 1996-12-06\u2028Japan began ."
    assert "\r" not in "".join(words_of(text))
    assert sentences_of(text) == [
        "SOCCER - JAPAN WIN",
        "Nadim Ladki",
        "AL-AIN , United Arab Emirates 1996-12-06",
        "Japan began .",
    ]


def test_sentences_end_at_terminators_before_a_capital_but_not_after_abbreviations():
    text = 'He left. "Why?" she asked. Mr. Smith works at the U.S. Treasury... and stayed. 3 more came.'
    assert sentences_of(text) == [
        "He left.",
        '"Why?" she asked.',
        "Mr. Smith works at the U.S. Treasury... and stayed.",
        "3 more came.",
    ]
    assert sentences_of("... The view.") == ["... The view."]  # a text may open with an ellipsis


def test_a_20000_character_document_keeps_exact_offsets():
    paragraph = (
        "Angela\u200bMerkel met U.S. officials in Zürich on Jan. 3, 1996.\r\n"
        "S&P rose 1,000 points; the company's shares didn't fall 🎉.\n"
        "E\u0301mile Zola\u00ad wrote \ufeffbooks. "
    )
    text = (paragraph * (20_000 // len(paragraph) + 1))[:20_000]
    words = split_words(text)
    assert len(text) == 20_000 and len(words) > 3000
    assert all(text[start:end] == word for word, start, end in words)
    assert all(start < end for _, start, end in words)
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(words))  # ordered, never overlapping
    sentences = split_sentences(text, words)
    assert sentences[0].start == 0 and sentences[-1].end == len(words)
    assert all(a.end == b.start for a, b in itertools.pairwise(sentences))


def test_conll_2003_sentences_joined_by_spaces_split_back_into_their_own_tokens(conll_dir: Path):
    from ner_pipeline.ingest import read_single_file

    sentences = read_single_file(conll_dir / "test.txt")
    tokens = sum(len(s.tokens) for s in sentences)
    split = [words_of(" ".join(s.tokens)) for s in sentences]
    identical = sum(words == s.tokens for words, s in zip(split, sentences, strict=True))
    lost = sum(sum((Counter(s.tokens) - Counter(words)).values()) for words, s in zip(split, sentences, strict=True))
    # measured: 98.7 % of test sentences come back identical and 0.09 % of tokens are cut otherwise (`kick-`,
    # `...I`, `+$0.50`: corpus quirks); the letters-and-digits pattern before gave 73 % and 2.8 %
    assert identical / len(sentences) > 0.985 and lost / tokens < 0.002


# --- entities --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inside_person_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every word I-PER: a stray I- starts an entity that runs to the end of its sentence."""
    return biased_model(tmp_path_factory.mktemp("i-per"), "I-PER")


TRICKY_TEXTS = [
    "\ufeffAngela\u200bMerkel\u200d visited U.S. officials.\r\nS&P rose 1,000 points.",
    "🇩🇪🇫🇷 Angela Merkel visited Zürich 🇨🇭 with Emmanuel Macron.",
    "Jose\u0301 Mari\u0301a met Procter & Gamble's CEO\u00ad\u2060",
    "\u200b\u200d \u00ad",
]


def test_every_word_entity_points_at_its_exact_visible_text(person_model: Path):
    predictor = Predictor.load(person_model)  # every word B-PER: one entity per word
    for text, entities in zip(TRICKY_TEXTS, predictor.predict(TRICKY_TEXTS), strict=True):
        assert [e.text for e in entities] == [w for w, _, _ in split_words(text)]
        for entity in entities:
            assert text[entity.start : entity.end] == entity.text and entity.text
            assert entity.text[0] not in INVISIBLES and entity.text[-1] not in INVISIBLES


def test_an_entity_runs_over_inner_invisible_characters_but_never_across_a_sentence(inside_person_model: Path):
    predictor = Predictor.load(inside_person_model)
    [first, _, third, empty] = predictor.predict(TRICKY_TEXTS)
    assert [e.text for e in first] == ["Angela\u200bMerkel\u200d visited U.S. officials.", "S&P rose 1,000 points."]
    assert [e.text for e in third] == ["Jose\u0301 Mari\u0301a met Procter & Gamble's CEO"]
    assert empty == []


def test_a_20000_character_document_is_tagged_with_exact_offsets(person_model: Path):
    text = ("Angela Merkel met U.S. officials in Zürich.\r\nS&P rose 1,000 points; it didn't fall 🎉. " * 300)[:20_000]
    [entities] = Predictor.load(person_model).predict(text)
    words = split_words(text)
    assert len(entities) == len(words)
    assert all(text[e.start : e.end] == e.text for e in entities)
    assert entities[-1].end == words[-1][2]


def test_a_lone_surrogate_is_refused_with_its_position(person_model: Path):
    with pytest.raises(PredictError, match=r"texts\[1\]: position 3 holds a lone surrogate"):
        Predictor.load(person_model).predict(["fine", "abc\ud800"])


# --- document context ------------------------------------------------------------------------------------------------


class RecordingBackend:
    """The real PyTorch backend, remembering every (unpadded) input it was given."""

    def __init__(self, inner: TorchBackend) -> None:
        self.inner, self.name, self.inputs = inner, inner.name, []

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.inputs += [row[mask.astype(bool)].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]
        return self.inner.logits(input_ids, attention_mask)


def recording_predictor(tmp_path: Path, document_context: bool) -> Predictor:
    torch.manual_seed(0)
    folder = build_tiny_model(tmp_path / f"model-{document_context}", labels=TINY_LABELS)
    tok_cfg = TokenizeConfig(max_length=64, stride=8, document_context=document_context)
    make_preprocessing(load_tokenizer(str(folder)), tok_cfg, TINY_LABELS).save(folder)
    loaded = Predictor.load(folder)
    return Predictor(RecordingBackend(loaded.backend), loaded.tokenizer, loaded.prep)  # type: ignore[arg-type]


DOCUMENT = "Angela Merkel visited Paris. She met Macron there.\nLater both flew to Berlin."
SENTENCES = [
    ["Angela", "Merkel", "visited", "Paris", "."],
    ["She", "met", "Macron", "there", "."],
    ["Later", "both", "flew", "to", "Berlin", "."],
]


def test_a_document_context_model_sees_each_sentence_with_its_neighbours_as_in_training(tmp_path: Path):
    predictor = recording_predictor(tmp_path, document_context=True)
    predictor.predict(DOCUMENT)
    paris = predictor.tokenizer.convert_tokens_to_ids("paris")
    berlin = predictor.tokenizer.convert_tokens_to_ids("berlin")
    assert len(predictor.backend.inputs) == 3  # one window per sentence
    assert all(paris in ids and berlin in ids for ids in predictor.backend.inputs)  # neighbours within two sentences
    # exactly what the tokenize stage built for these sentences as one training document
    split = {
        "tokens": SENTENCES,
        "ner_tags": [[0] * len(s) for s in SENTENCES],
        "document_id": [7] * 3,
        "id": [0, 1, 2],
    }
    columns, _ = encode_split(split, predictor.encoder)
    assert sorted(predictor.backend.inputs) == sorted(columns["input_ids"])


def test_without_document_context_each_line_is_alone_and_texts_never_share_context(tmp_path: Path):
    plain = recording_predictor(tmp_path, document_context=False)
    plain.predict(DOCUMENT)
    paris = plain.tokenizer.convert_tokens_to_ids("paris")
    assert len(plain.backend.inputs) == 2  # a sentence-level model reads each line whole, as one training unit
    assert sum(paris in ids for ids in plain.backend.inputs) == 1

    flert = recording_predictor(tmp_path, document_context=True)
    flert.predict(["Angela Merkel visited Paris.", "She met Macron there."])
    assert sum(paris in ids for ids in flert.backend.inputs) == 1  # two texts are two documents
