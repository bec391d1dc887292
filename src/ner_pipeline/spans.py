"""Entity spans and the IOB tagging schemes: the one place that knows what a B-/I- tag means."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ner_pipeline.errors import DataError

OUTSIDE = "O"


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


def check_tag(tag: Any, where: str) -> None:
    """Accept `O`, `B-<type>` or `I-<type>`; anything else (a non-string too) is bad input.

    Raises:
        DataError: names `where` (file and line, or split and sentence) and the tag.
    """
    if isinstance(tag, str):
        try:
            split_tag(tag)
            return
        except ValueError:
            pass
    raise DataError(f"{where}: tag {tag!r} is not O, B-<type> or I-<type>")


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
