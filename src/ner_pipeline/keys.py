"""Content addresses of stage outputs: what goes into an artifact key, and the file hashes that feed keys.

A key hashes the stage name, a stage version constant, the stage's config, the keys of its upstream artifacts, and
the fingerprints of the code and the versions of the libraries that decide the stage's output
(`ner_pipeline.lineage`). The same key names the artifact on local disk and on object storage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ner_pipeline.lineage import stage_lineage

KEY_LENGTH = 20

# The lineage that went into each key computed in this process, for the manifest of the artifact built under it.
_KEY_LINEAGE: dict[str, dict[str, Any]] = {}


def canonical(value: Any) -> Any:
    """`value` as plain JSON-able data: pydantic models dumped, paths as strings, tuples as lists."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def artifact_key(stage: str, version: str, config: Any, inputs: Mapping[str, str] | None = None) -> str:
    """Return the content address of a stage output.

    Args:
        stage: Stage name, e.g. "tokenize".
        version: The stage's version constant; bump it when the stage's output format changes.
        config: The stage's config section (pydantic model or JSON-able mapping) plus anything else that
            decides the output, such as the base model reference or source file hashes.
        inputs: Upstream artifact keys by stage name.

    Returns:
        A hex digest of KEY_LENGTH characters. Besides the arguments it hashes the stage's lineage: the
        fingerprints of the code and the versions of the libraries that decide its output (see `lineage`).
    """
    config = canonical(config)
    lineage = stage_lineage(stage, config)
    payload = {
        "stage": stage,
        "version": version,
        "config": config,
        "inputs": dict(sorted((inputs or {}).items())),
        "lineage": lineage,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    key = hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]
    _KEY_LINEAGE[key] = lineage
    return key


def key_lineage(stage: str, key: str) -> dict[str, Any]:
    """The lineage hashed into `key` when this process computed it (else the stage's current lineage)."""
    return _KEY_LINEAGE.get(key) or stage_lineage(stage)


def hash_files(paths: list[Path]) -> str:
    """Return the sha256 of the named files' contents, in the given order, with their names."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
