"""Entity spans and the IOB tagging schemes: the one place that knows what a B-/I- tag means."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ner_pipeline.errors import DataError

OUTSIDE = "O"
# The phrase types of a CoNLL-2000/2003 chunk column (B-NP, I-VP, ...). A tag column made only of these is the
# chunk column: the file lacks its NER column, and reading on would train a phrase chunker named NER.
CHUNK_TYPES = frozenset({"NP", "VP", "PP", "ADJP", "ADVP", "SBAR", "PRT", "CONJP", "INTJ", "LST", "UCP"})


@dataclass(frozen=True, order=True)
class Span:
    """An entity over words `start` (inclusive) to `end` (exclusive)."""

    start: int
    end: int
    label: str


def split_tag(tag: str) -> tuple[str, str | None]:
    """Split `B-PER` into ("B", "PER"); `O` gives ("O", None).

    Raises:
        ValueError: the tag is neither `O` nor `B-`/`I-` followed by a type.
    """
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, sep, label = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not label:
        raise ValueError(f"tag '{tag}' is not O, B-<type> or I-<type>")
    return prefix, label


def _invisible(text: str) -> str | None:
    """The first whitespace, control or format character (no-break space, zero-width space, BOM) in `text`."""
    return next((c for c in text if c.isspace() or unicodedata.category(c) in ("Cc", "Cf")), None)


def check_tag(tag: Any, where: str) -> None:
    """Accept `O`, `B-<type>` or `I-<type>`; anything else (a non-string too) is bad input.

    A type holding an invisible character is refused too: `B-ORG\\xa0` would otherwise become a type of its own
    that looks like `ORG` in every report.

    Raises:
        DataError: names `where` (file and line, or split and sentence) and the tag.
    """
    if isinstance(tag, str):
        hidden = _invisible(tag)
        if hidden is not None:
            name = unicodedata.name(hidden, "a control character")
            raise DataError(
                f"{where}: tag {tag!r} contains {name.lower()} (U+{ord(hidden):04X}); remove it, or it becomes an "
                "entity type of its own"
            )
        try:
            split_tag(tag)
            return
        except ValueError:
            pass
    raise DataError(f"{where}: tag {tag!r} is not O, B-<type> or I-<type>")


@dataclass
class TagColumn:
    """The tags of one file (or Hub split) as they are read: each tag checked once, then the column as a whole.

    `add` runs `check_tag`; `close` refuses a column whose entity types are all phrase-chunk types (`CHUNK_TYPES`),
    which is what a CoNLL file without its NER column shows in its last column.
    """

    first_use: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (tag, where first seen)
    _seen: set[Any] = field(default_factory=set)

    def add(self, tag: Any, where: str) -> None:
        """Check one tag read at `where` (see `check_tag`)."""
        if isinstance(tag, str) and tag in self._seen:
            return
        check_tag(tag, where)
        self._seen.add(tag)
        label = split_tag(tag)[1]
        if label is not None and label not in self.first_use:
            self.first_use[label] = (tag, where)

    def close(self) -> None:
        """Check the column's set of types.

        Raises:
            DataError: every type is a chunk type; names where the first one occurs.
        """
        types = set(self.first_use)
        if types and types <= CHUNK_TYPES:
            tag, where = next(iter(self.first_use.values()))  # the first chunk tag read
            raise DataError(
                f"{where}: tag {tag!r} is a phrase-chunk tag: every type in this column ({', '.join(sorted(types))}) "
                "is a chunk type, so the NER column is missing; the NER tag must be the last column"
            )


def entity_type(tag: str) -> str:
    """`B-PER` and `I-PER` give `PER`; `O` stays `O`."""
    return OUTSIDE if tag == OUTSIDE else str(split_tag(tag)[1])


def to_iob2(tags: Sequence[str]) -> tuple[list[str], int]:
    """Convert IOB1 (or repair broken IOB2) tags to IOB2.

    An `I-X` that starts an entity (after `O`, at the start, or after another type) becomes `B-X`. In IOB1 that is
    the normal encoding; in IOB2 input it is a repair, so the count is returned for the caller to report.

    Returns:
        The IOB2 tags and the number of tags changed.
    """
    out: list[str] = []
    changed = 0
    previous: str | None = None
    for tag in tags:
        prefix, label = split_tag(tag)
        if prefix == "I" and previous != label:
            out.append(f"B-{label}")
            changed += 1
        else:
            out.append(tag)
        previous = label
    return out, changed


def entity_starts(tags: Sequence[str]) -> tuple[int | None, bool]:
    """Where IOB1 and IOB2 differ: the first I-start of a sequence and whether it has a B-start.

    An I-start is an `I-X` whose previous tag is not of type X: how IOB1 starts an entity, a break in IOB2. A
    B-start is a `B-X` whose previous tag is not of type X: how IOB2 starts one (IOB1 writes `B-X` only between
    two adjacent X entities, never as a start).

    Returns:
        The index of the first I-start (None when there is none) and whether any B-start occurs.
    """
    first_i: int | None = None
    any_b = False
    previous: str | None = None
    for i, tag in enumerate(tags):
        prefix, label = split_tag(tag)
        if label is not None and previous != label:
            if prefix == "I" and first_i is None:
                first_i = i
            any_b = any_b or prefix == "B"
        previous = label
    return first_i, any_b


def describe_i_start(tags: Sequence[str], index: int) -> str:
    """`I-PER after O`, `I-PER after B-LOC` or `I-PER at the start of a sentence`, for error messages."""
    if index == 0:
        return f"{tags[0]} at the start of a sentence"
    return f"{tags[index]} after {tags[index - 1]}"


def extract_spans(tags: Sequence[str]) -> list[Span]:
    """Return the entities of an IOB2 sequence; a stray `I-X` starts a new entity, as conlleval does.

    The reading is seqeval's own (`get_entities`, what its default conlleval mode scores), so span F1, the
    bootstrap interval and the error buckets count exactly the entities behind seqeval's F1. Only the shape is
    ours: seqeval gives (type, first, last); a `Span` ends one past the last word, so `words[start:end]` is the
    entity, and it is hashable for set comparisons. Tags are not validated here: readers check them on input
    (`check_tag`), and predicted tags come from the model's own label list.
    """
    from seqeval.metrics.sequence_labeling import get_entities  # imports scikit-learn: only when spans are read

    return [Span(first, last + 1, label) for label, first, last in get_entities(list(tags))]


def entity_types(labels: Sequence[str]) -> list[str]:
    """Return the sorted entity types named by a label list."""
    return sorted({split_tag(t)[1] for t in labels if t != OUTSIDE} - {None})  # type: ignore[arg-type]


def label_list(types: Sequence[str]) -> list[str]:
    """Return the canonical label order: `O`, then for each sorted type its `B-` and `I-` tags."""
    labels = [OUTSIDE]
    for label in sorted(set(types)):
        labels += [f"B-{label}", f"I-{label}"]
    return labels
