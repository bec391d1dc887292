"""IOB schemes and entity spans."""

from __future__ import annotations

import pytest

from ner_pipeline.spans import Span, entity_types, extract_spans, label_list, split_tag, to_iob2


def test_iob1_runs_become_b_then_i():
    tags, changed = to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC"])
    assert tags == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert changed == 2


def test_i_after_another_type_starts_a_new_entity():
    tags, changed = to_iob2(["B-PER", "I-LOC", "I-LOC"])
    assert tags == ["B-PER", "B-LOC", "I-LOC"] and changed == 1


def test_valid_iob2_is_left_alone():
    tags = ["B-ORG", "I-ORG", "O", "B-PER"]
    assert to_iob2(tags) == (tags, 0)


def test_extract_spans_end_is_exclusive_and_adjacent_b_splits():
    assert extract_spans(["B-PER", "I-PER", "B-PER", "O", "B-LOC"]) == [
        Span(0, 2, "PER"),
        Span(2, 3, "PER"),
        Span(4, 5, "LOC"),
    ]


def test_stray_i_starts_an_entity_like_conlleval():
    assert extract_spans(["O", "I-MISC", "I-MISC", "I-ORG"]) == [Span(1, 3, "MISC"), Span(3, 4, "ORG")]


def test_entity_at_the_end_is_closed():
    assert extract_spans(["O", "B-LOC", "I-LOC"]) == [Span(1, 3, "LOC")]


@pytest.mark.parametrize("bad", ["X-PER", "B-", "PER", "b-PER", ""])
def test_bad_tags_are_rejected(bad: str):
    with pytest.raises(ValueError, match="is not O, B-<type> or I-<type>"):
        split_tag(bad)


def test_label_order_is_o_then_sorted_types_in_b_i_pairs():
    assert label_list(["PER", "LOC", "ORG", "LOC"]) == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert entity_types(["O", "B-geo-loc", "I-geo-loc", "B-person"]) == ["geo-loc", "person"]
