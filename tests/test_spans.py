"""IOB schemes and entity spans."""

from __future__ import annotations

import pytest

from ner_pipeline.errors import DataError
from ner_pipeline.spans import (
    Span,
    TagColumn,
    check_tag,
    describe_i_start,
    entity_starts,
    entity_type,
    entity_types,
    extract_spans,
    label_list,
    split_tag,
    to_iob2,
)


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


def test_empty_and_all_outside_sequences():
    assert to_iob2([]) == ([], 0)
    assert to_iob2(["O", "O"]) == (["O", "O"], 0)
    assert extract_spans([]) == []
    assert extract_spans(["O", "O"]) == []


def test_iob1_b_between_neighbours_of_one_type_is_kept():
    tags, changed = to_iob2(["I-LOC", "B-LOC", "I-LOC", "O"])
    assert tags == ["B-LOC", "B-LOC", "I-LOC", "O"] and changed == 1
    assert extract_spans(tags) == [Span(0, 1, "LOC"), Span(1, 3, "LOC")]


def test_to_iob2_is_idempotent():
    once, _ = to_iob2(["I-ORG", "O", "I-PER", "I-PER", "I-LOC", "B-LOC"])
    assert to_iob2(once) == (once, 0)


def test_hyphenated_types_keep_their_full_name():
    tags, changed = to_iob2(["I-geo-loc", "I-geo-loc", "B-other"])
    assert tags == ["B-geo-loc", "I-geo-loc", "B-other"] and changed == 1
    assert extract_spans(tags) == [Span(0, 2, "geo-loc"), Span(2, 3, "other")]


def test_i_of_another_type_ends_the_current_entity():
    assert extract_spans(["B-PER", "I-PER", "I-ORG", "O"]) == [Span(0, 2, "PER"), Span(2, 3, "ORG")]


def test_to_iob2_rejects_bad_tags():
    with pytest.raises(ValueError, match="tag 'E-PER' is not O"):
        to_iob2(["B-PER", "E-PER"])


@pytest.mark.parametrize("bad", ["X-PER", "B-", None, 3])
def test_check_tag_names_where_the_bad_tag_is(bad: object):
    check_tag("I-geo-loc", "a.txt line 1")  # a good tag passes
    with pytest.raises(DataError, match=r"^a\.txt line 2: tag .* is not O, B-<type> or I-<type>$"):
        check_tag(bad, "a.txt line 2")


def test_entity_type_merges_b_and_i_and_keeps_o():
    assert [entity_type(t) for t in ("B-PER", "I-PER", "O", "B-geo-loc")] == ["PER", "PER", "O", "geo-loc"]


def test_extract_spans_reads_entities_as_seqeval_scores_them():
    from seqeval.metrics.sequence_labeling import get_entities

    tags = ["I-LOC", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-ORG", "I-MISC", "O", "I-MISC"]
    assert [(s.label, s.start, s.end - 1) for s in extract_spans(tags)] == get_entities(tags)


@pytest.mark.parametrize("bad", ["B-ORG\u00a0", "B-\u200bORG", "O\u00a0", "I-PER\ufeff", "B-ORG\t", "B-OR G"])
def test_check_tag_refuses_invisible_characters_in_a_tag(bad: str):
    with pytest.raises(DataError, match=r"^a\.txt line 2: tag .* contains .* \(U\+[0-9A-F]{4}\); remove it"):
        check_tag(bad, "a.txt line 2")


def test_tag_column_refuses_a_column_of_chunk_tags_only():
    column = TagColumn()
    for i, tag in enumerate(["B-NP", "O", "B-VP", "B-PP", "I-NP", "B-SBAR"]):
        column.add(tag, f"a.txt line {i + 1}")
    with pytest.raises(DataError, match=r"^a\.txt line 1: tag 'B-NP' is a phrase-chunk tag: .* \(NP, PP, SBAR, VP\)"):
        column.close()
    mixed = TagColumn()
    for tag in ["B-NP", "B-PER"]:
        mixed.add(tag, "b.txt")
    mixed.close()  # a real type among them: an NER column
    TagColumn().close()  # no entities at all: nothing to say


def test_tag_column_checks_every_tag_it_is_given():
    column = TagColumn()
    column.add("B-PER", "a.txt line 1")
    with pytest.raises(DataError, match=r"^a\.txt line 2: tag 'X-PER'"):
        column.add("X-PER", "a.txt line 2")


@pytest.mark.parametrize(
    ("tags", "first_i", "b_start"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], None, True),  # IOB2
        (["I-PER", "I-PER", "O", "I-LOC"], 0, False),  # IOB1
        (["I-LOC", "B-LOC", "O"], 0, False),  # IOB1's B- between two LOC entities is not a start
        (["B-PER", "O", "I-LOC"], 2, True),  # a mix
        (["B-PER", "I-LOC"], 1, True),  # I- of another type starts an entity
        (["O", "O"], None, False),
    ],
)
def test_entity_starts_tell_iob1_from_iob2(tags: list[str], first_i: int | None, b_start: bool):
    assert entity_starts(tags) == (first_i, b_start)


def test_describe_i_start_says_what_comes_before():
    assert describe_i_start(["I-PER"], 0) == "I-PER at the start of a sentence"
    assert describe_i_start(["O", "I-PER"], 1) == "I-PER after O"
    assert describe_i_start(["B-LOC", "I-PER"], 1) == "I-PER after B-LOC"
