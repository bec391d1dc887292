"""Test-set predictions as a file: what the evaluate stage writes and the promotion gate reads back.

One JSON object per line, one line per test sentence, in test-split order:

    {"tokens": ["Obama", "visits", "Paris"], "gold": ["B-PER", "O", "B-LOC"], "pred": ["B-PER", "O", "O"],
     "document_id": 0}

`document_id` is there so a model trained with document context can be run again on the same sentences with the
same neighbours. The file is what lets the gate compare two versions sentence by sentence (a paired bootstrap);
scores alone cannot say whether a difference is noise.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from ner_pipeline.errors import ArtifactError

PREDICTIONS_FILE = "predictions.jsonl"


class PredictedSentence(NamedTuple):
    """One test sentence: its words, gold tags, a model's predicted tags and its document (None: unknown)."""

    tokens: list[str]
    gold: list[str]
    pred: list[str]
    document_id: int | None = None


def write_predictions(
    path: Path,
    tokens: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    doc_ids: Sequence[int] | None = None,
) -> str:
    """Write one JSON line per sentence to `path` (through a temporary file); return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for i, (words, g, p) in enumerate(zip(tokens, gold, pred, strict=True)):
            row = {"tokens": list(words), "gold": list(g), "pred": list(p)}
            if doc_ids is not None:
                row["document_id"] = int(doc_ids[i])
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return file_sha256(path)


def read_predictions(path: Path) -> list[PredictedSentence]:
    """Read a predictions file back.

    Raises:
        ArtifactError: a line that is not a JSON object with equally long tokens, gold and pred lists.
    """
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                obj = json.loads(line)
                row = PredictedSentence(obj["tokens"], obj["gold"], obj["pred"], obj.get("document_id"))
            except (ValueError, KeyError, TypeError) as exc:
                raise ArtifactError(f"{path} line {number}: not a prediction row ({exc})") from None
            if not len(row.tokens) == len(row.gold) == len(row.pred):
                raise ArtifactError(
                    f"{path} line {number}: {len(row.tokens)} tokens, {len(row.gold)} gold and {len(row.pred)} "
                    "predicted tags"
                )
            rows.append(row)
    return rows


def sentences_fingerprint(rows: Iterable[PredictedSentence]) -> str:
    """The ingest fingerprint of the sentences (words and gold tags) the predictions cover.

    Equal to the ingest artifact's `test_fingerprint` when the rows are its test split, so predictions can be
    matched to the `data.test_fingerprint` a version carries.
    """
    from ner_pipeline.ingest import Sentence, fingerprint

    return fingerprint(Sentence(list(r.tokens), list(r.gold)) for r in rows)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
