"""The tagging scheme of a data set: IOB2 (entities start with B-), IOB1 (they start with I-), or a mix.

Ingest reads the scheme off each split, holds it to the declared `data.scheme` (iob2: an I-start is an error naming
the file and line; iob1: converted; auto: IOB2 kept, IOB1 converted, a mix repaired with a warning), and stores what
it found in the artifact's stats, so a cache hit is held to the declared scheme without reading the data again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import DataConfig
from ner_pipeline.errors import DataError
from ner_pipeline.readers import Sentence
from ner_pipeline.spans import describe_i_start, entity_starts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchemeFinding:
    """What a split's tags show: `iob2` (no I-starts), `iob1` (I-starts, no B-starts) or `mixed` (both).

    See `spans.entity_starts` for I- and B-starts.
    """

    detected: str
    b_starts: bool
    first_i_start: str | None = None  # where and what, e.g. "data/train.txt line 14: I-PER after O"


def detect_scheme(sentences: Iterable[Sentence]) -> SchemeFinding:
    """Read the tagging scheme off a split's tags (as read, before conversion)."""
    first: str | None = None
    any_b = False
    for s in sentences:
        index, b_start = entity_starts(s.tags)
        any_b = any_b or b_start
        if first is None and index is not None:
            first = f"{s.token_origin(index)}: {describe_i_start(s.tags, index)}"
    detected = "iob2" if first is None else "mixed" if any_b else "iob1"
    return SchemeFinding(detected, any_b, first)


def iob2_violation(first_i_start: str) -> DataError:
    """The error for an I-start in data declared IOB2."""
    return DataError(
        f"{first_i_start} starts an entity, but data.scheme is iob2 (entities start with B-); "
        "set data.scheme=iob1 or auto if the file is IOB1"
    )


def check_split(sentences: Iterable[Sentence], declared: str) -> SchemeFinding:
    """Detect a split's scheme and hold it to the declared one (only iob2 can refuse input).

    Raises:
        DataError: `declared` is iob2 and the split has an I-start; names its file and line.
    """
    finding = detect_scheme(sentences)
    if declared == "iob2" and finding.first_i_start:
        raise iob2_violation(finding.first_i_start)
    return finding


def scheme_summary(findings: Mapping[str, SchemeFinding]) -> dict[str, Any]:
    """The scheme of the whole data set (iob2, iob1 or mixed, as for one split), per split, and its first I-start."""
    first = next((f.first_i_start for f in findings.values() if f.first_i_start), None)
    overall = "iob2" if first is None else "mixed" if any(f.b_starts for f in findings.values()) else "iob1"
    return {"detected": overall, "splits": {s: f.detected for s, f in findings.items()}, "first_i_start": first}


def log_scheme(summary: Mapping[str, Any], changes: Mapping[str, int], declared: str) -> None:
    """Say what the conversion did: INFO for IOB1 input; a WARNING for a mix when the scheme was left to auto."""
    if summary["detected"] == "iob1":
        first = summary["first_i_start"]
        logger.info("IOB1 input (first I-start: %s): converted to IOB2, tags changed: %s", first, dict(changes))
    elif summary["detected"] == "mixed":
        log = logger.warning if declared == "auto" else logger.info
        log(
            "the tags mix IOB1 and IOB2 (entities start with I- and with B-; first I-start: %s): repaired to IOB2, "
            "tags changed: %s; set data.scheme=iob1 if the input is IOB1",
            summary["first_i_start"],
            dict(changes),
        )


def check_scheme(cfg: DataConfig, artifact: Artifact) -> None:
    """Hold an ingest artifact to the declared `data.scheme`, as reading the data would have.

    The key leaves the scheme out (equal input gives one dataset), so a cache hit reads no data: the scheme found
    when the artifact was built, stored in its stats, decides instead. Called on every use of an ingest artifact,
    built or looked up.

    Raises:
        DataError: the config declares iob2 and the data has an I-start; the same message as reading it.
    """
    first = artifact.stats.get("scheme", {}).get("first_i_start")
    if cfg.scheme == "iob2" and first:
        raise iob2_violation(first)
