"""The preprocessing contract and its encoder: subword label alignment, windows that map every word back once,
document context, and a prefix space decided by the contract's model type."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import PACKAGED_MODEL

from ner_pipeline.config import TokenizeConfig
from ner_pipeline.errors import ModelError
from ner_pipeline.preprocessing import (
    IGNORE,
    Preprocessing,
    WordEncoder,
    load_tokenizer,
    merge_windows,
    needs_prefix_space,
    window_spans,
)
from ner_pipeline.tokenize import make_preprocessing

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(PACKAGED_MODEL)


def prep_for(tokenizer, **kwargs) -> Preprocessing:
    return make_preprocessing(tokenizer, TokenizeConfig(**kwargs), LABELS)


def encoder_for(tokenizer, **kwargs) -> WordEncoder:
    return WordEncoder(tokenizer, prep_for(tokenizer, **kwargs))


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RoBERTa-style folder: a byte-level BPE tokenizer trained on a few sentences, and a RoBERTa config."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaTokenizerFast

    folder = tmp_path_factory.mktemp("roberta-style")
    corpus = ["Angela Merkel visited Paris", "the river flooded Paris again", "the cat sat on a mat"] * 10
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    specials = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>"}
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, unk_token="<unk>", pad_token="<pad>", **specials)
    tokenizer.save_pretrained(folder)
    RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=2, num_hidden_layers=1
    ).save_pretrained(folder)
    return folder


def test_first_subword_is_labelled_and_the_rest_ignored(tokenizer):
    words = ["Schwarzenegger", "visited", "Kathmandu"]
    [window] = encoder_for(tokenizer).encode(words, [1, 0, 3])
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
    [window] = encoder_for(tokenizer, label_all_subwords=True).encode(["Schwarzenegger", "visited"], [1, 0])
    name_labels = [label for word, label in zip(window.word_ids, window.labels, strict=True) if word == 0]
    assert name_labels[0] == 1 and set(name_labels[1:]) == {2}


def test_long_sentence_windows_cover_every_word_and_merge_back_exactly_once(tokenizer):
    words = [f"word{i % 7}x{i}" for i in range(300)]
    windows = encoder_for(tokenizer, max_length=32, stride=8).encode(words, [0] * len(words))
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
    windows = encoder_for(tokenizer, max_length=16, stride=2).encode(words, [0, 1, 0])
    assert {w for window in windows for w in window.word_ids if w >= 0} == {0, 1, 2}
    assert all(len(w.input_ids) <= 16 for w in windows)


def test_document_context_is_unlabelled_and_within_budget(tokenizer):
    encoder = encoder_for(tokenizer, max_length=24, stride=4, document_context=True)
    left = ["the", "day", "before", "yesterday", "it", "rained", "hard", "all", "over", "the", "city"] * 2
    right = ["and", "then", "the", "sun", "came", "out", "again", "today", "over", "the", "river"] * 2
    [window] = encoder.encode(["Paris", "flooded"], [3, 0], left, right)
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


def test_a_roberta_tokenizer_loaded_without_prefix_space_gets_it_from_the_contracts_model_type(roberta_dir: Path):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(roberta_dir)  # loaded directly: no add_prefix_space
    assert not plain.add_prefix_space
    prep = make_preprocessing(plain, TokenizeConfig(max_length=32, stride=4), LABELS)
    assert prep.model_type == "roberta" and prep.add_prefix_space
    encoder = WordEncoder(plain, prep)
    words = ["Paris", "flooded", "again"]
    reference = AutoTokenizer.from_pretrained(roberta_dir, add_prefix_space=True)
    assert encoder.subwords([words]) == [[reference.encode(" " + w, add_special_tokens=False) for w in words]]
    [window] = encoder.encode(words, [3, 0, 0])
    tokens = reference.convert_ids_to_tokens(window.input_ids)
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and tokens[1].startswith("Ġ")
    assert window.labels[1] == 3  # the first subword of "Paris"


def test_a_contract_without_the_prefix_space_field_takes_it_from_the_model_type():
    fields = {"max_length": 64, "stride": 8, "label_all_subwords": False, "document_context": False, "labels": LABELS}
    assert Preprocessing.model_validate({**fields, "model_type": "roberta"}).add_prefix_space
    assert not Preprocessing.model_validate({**fields, "model_type": "bert"}).add_prefix_space
    assert not Preprocessing(**fields, model_type="roberta", add_prefix_space=False).add_prefix_space


def test_each_encoder_owns_the_special_token_layout_of_its_tokenizer(tokenizer, roberta_dir: Path):
    bert = encoder_for(tokenizer)
    roberta = WordEncoder(load_tokenizer(str(roberta_dir)), prep_for(load_tokenizer(str(roberta_dir))))
    assert [tokenizer.convert_ids_to_tokens(ids) for ids in bert.layout] == [["[CLS]"], ["[SEP]"]]
    assert [roberta.tokenizer.convert_ids_to_tokens(ids) for ids in roberta.layout] == [["<s>"], ["</s>"]]
    assert bert.budget == 256 - 2 and roberta.budget == 256 - 2
