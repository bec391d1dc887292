"""CoNLL-2003 splits as bench/infer.py scores them: gold words, sentences joined by spaces, whole documents."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from ner_pipeline.evaluate import entity_scores
from ner_pipeline.ingest import read_single_file

Offsets = list[tuple[int, int]]
Entities = list[tuple[int, int, str]]  # (start, end, label) per entity of one text


def word_offsets(tokens: list[str], start: int = 0) -> tuple[str, Offsets]:
    """Join words with spaces and remember where each word sits (counting from `start`)."""
    offsets, pos = [], start
    for word in tokens:
        offsets.append((pos, pos + len(word)))
        pos += len(word) + 1
    return " ".join(tokens), offsets


@dataclass
class Document:
    """A document's sentences, one a line, with every word's offsets and each sentence's word range."""

    text: str
    offsets: Offsets
    sentences: list[tuple[int, int]]


@dataclass
class Split:
    """A split's gold words and tags, its document ids, and its sentences joined by spaces."""

    tokens: list[list[str]]
    gold: list[list[str]]
    doc_ids: list[int]
    texts: list[str]
    offsets: list[Offsets]

    def documents(self) -> list[Document]:
        """Consecutive sentences of one document (`-DOCSTART-` to `-DOCSTART-`), separated by newlines."""
        documents: list[Document] = []
        for i, tokens in enumerate(self.tokens):
            if not documents or self.doc_ids[i] != self.doc_ids[i - 1]:
                documents.append(Document("", [], []))
            doc = documents[-1]
            start = len(doc.text) + 1 if doc.text else 0
            text, offsets = word_offsets(tokens, start)
            doc.text = f"{doc.text}\n{text}" if doc.sentences else text
            doc.sentences.append((len(doc.offsets), len(doc.offsets) + len(offsets)))
            doc.offsets += offsets
        return documents


def read_split(path: Path, limit: int | None = None) -> Split:
    sentences = read_single_file(path)[:limit]
    joined = [word_offsets(s.tokens) for s in sentences]
    return Split(
        tokens=[s.tokens for s in sentences],
        gold=[s.tags for s in sentences],
        doc_ids=[s.document_id for s in sentences],
        texts=[text for text, _ in joined],
        offsets=[offsets for _, offsets in joined],
    )


def load_splits_for_bench(data: Path, limit: int | None = None) -> dict[str, Split]:
    """Validation (for tuning) and test (for reporting), at most `limit` sentences each."""
    if not (data / "test.txt").is_file():
        raise SystemExit(f"CoNLL-2003 not found at {data}")
    return {name: read_split(data / f"{name}.txt", limit) for name in ("validation", "test")}


def to_tags(entities: Entities, offsets: Offsets) -> list[str]:
    """IOB2 tags for the words an entity's characters overlap (offsets ascending)."""
    tags = ["O"] * len(offsets)
    starts, ends = [a for a, _ in offsets], [b for _, b in offsets]
    for start, end, label in sorted(entities):
        inside = [i for i in range(bisect.bisect_right(ends, start), bisect.bisect_left(starts, end)) if tags[i] == "O"]
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + label
    return tags


def sentence_f1(split: Split, outputs: list[Entities]) -> float:
    """Entity F1 of the entities found in the split's first sentences joined by spaces (one output a sentence)."""
    offsets = split.offsets[: len(outputs)]
    predicted = [to_tags(ents, off) for ents, off in zip(outputs, offsets, strict=True)]
    return entity_scores(split.gold[: len(outputs)], predicted)["f1"]
