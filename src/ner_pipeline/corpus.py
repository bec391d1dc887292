"""Reading a corpus to tag: `.txt` lines, JSONL with a text field or Parquet with a text column, from a file or a
folder, local or behind any fsspec URL (`s3://...`, `memory://...`).

Every text keeps an id: the record's own `id` field or column when it has one, else `<file>:<line>` (txt, JSONL,
1-based) or `<file>:<row>` (Parquet, 0-based). Blank `.txt` lines are skipped, keeping the line numbers of the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from ner_pipeline.errors import DataError

logger = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass
class Corpus:
    """Texts to tag with their ids, in reading order."""

    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def _filesystem(source: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(source)
    return fs, path


def corpus_files(source: str) -> tuple[Any, list[str]]:
    """The filesystem and the corpus files of `source` (a file, or a folder's files with a known suffix, sorted).

    Raises:
        DataError: nothing there, or a folder without `.txt`/`.jsonl`/`.parquet` files.
    """
    fs, path = _filesystem(source)
    if not fs.exists(path):
        raise DataError(f"{source}: no such file or folder")
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(SUFFIXES))
        if not files:
            raise DataError(f"{source}: no {', '.join(SUFFIXES)} files in this folder")
        return fs, files
    if not path.endswith(SUFFIXES):
        raise DataError(f"{source}: expected a {', '.join(SUFFIXES)} file or a folder of them")
    return fs, [path]


def read_corpus(source: str, text_field: str = "text") -> Corpus:
    """Read every text of `source` (see the module docstring).

    Args:
        source: A file or folder path, or an fsspec URL.
        text_field: The JSONL field / Parquet column holding the text.

    Raises:
        DataError: an unreadable record, naming file and line (or column): invalid JSON, a missing or non-string
            text field, a Parquet file without the text column.
    """
    fs, files = corpus_files(source)
    corpus = Corpus(ids=[], texts=[])
    for path in files:
        name = path.rsplit("/", 1)[-1]
        if path.endswith(".parquet"):
            _read_parquet(fs, path, name, text_field, corpus)
        else:
            with fs.open(path, "r", encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if path.endswith(".txt"):
                        if line.strip():
                            corpus.ids.append(f"{name}:{number}")
                            corpus.texts.append(line.rstrip("\r\n"))
                    elif line.strip():
                        _add_json(line, f"{path} line {number}", f"{name}:{number}", text_field, corpus)
    logger.info("%s: %d texts from %d file(s)", source, len(corpus), len(files))
    return corpus


def _add_json(line: str, where: str, default_id: str, text_field: str, corpus: Corpus) -> None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise DataError(f"{where}: expected an object with a string field '{text_field}'")
    corpus.ids.append(str(record["id"]) if record.get("id") is not None else default_id)
    corpus.texts.append(record[text_field])


def _read_parquet(fs: Any, path: str, name: str, text_field: str, corpus: Corpus) -> None:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        schema = pq.read_schema(handle)
        columns = [text_field] + (["id"] if "id" in schema.names else [])
        if text_field not in schema.names:
            raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)})")
        handle.seek(0)
        table = pq.read_table(handle, columns=columns)
    texts = table.column(text_field).to_pylist()
    ids = table.column("id").to_pylist() if "id" in columns else [None] * len(texts)
    for row, (text, id_) in enumerate(zip(texts, ids, strict=True)):
        if not isinstance(text, str):
            raise DataError(f"{path} row {row}: column '{text_field}' is not a string ({text!r})")
        corpus.ids.append(str(id_) if id_ is not None else f"{name}:{row}")
        corpus.texts.append(text)


def fingerprint(ids: list[str], texts: list[str]) -> str:
    """sha256 of ids and texts in order: what a chunk's (or a corpus') cache key sees of its content."""
    digest = hashlib.sha256()
    for id_, text in zip(ids, texts, strict=True):
        digest.update(id_.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()
