"""File records of an artifact and their checks: is what is on disk what the build wrote?

A manifest lists every file of its artifact with size and sha256. `check_files` compares the folder with that list
before the artifact is reused: `sha256` reads every byte (catches an overwrite of equal size), `size` only stats
(catches deleted and truncated files, in microseconds). Files added to the folder after the build are not damage
and are ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

VerifyMode = Literal["sha256", "size"]
VERIFY_MODES: tuple[VerifyMode, ...] = ("sha256", "size")
CHUNK = 1 << 20
NO_RECORDS = "no file hashes in the manifest (written by an older ner-pipeline)"


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of one file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file below `folder`, by POSIX path relative to it.

    Args:
        folder: The artifact folder.
        exclude: Relative paths to leave out (the manifest itself).
    """
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative not in exclude:
            records[relative] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return records


def check_files(folder: Path, records: Mapping[str, Mapping[str, Any]] | None, mode: VerifyMode) -> list[str]:
    """What is wrong with the recorded files below `folder`, one line per file; empty when all are intact.

    Args:
        folder: The artifact folder.
        records: The manifest's `files`; None for a manifest written before files were recorded.
        mode: "sha256" to hash every file, "size" to compare sizes only.
    """
    if records is None:
        return [NO_RECORDS]
    if mode not in VERIFY_MODES:
        raise ValueError(f"unknown verify mode {mode!r}; expected one of {VERIFY_MODES}")
    problems: list[str] = []
    for relative, record in records.items():
        path = folder / relative
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if size != record["size"]:
            problems.append(f"{path}: {size} bytes, the manifest says {record['size']}")
        elif mode == "sha256" and sha256_file(path) != record["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (same size, content overwritten)")
    return problems
