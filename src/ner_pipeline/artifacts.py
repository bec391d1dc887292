"""Content-addressed, atomically written, verified stage artifacts.

Each stage writes to `<root>/<stage>/<key>/`, where the key hashes the stage name, a stage version constant, the
stage's config, the keys of its upstream artifacts, and the fingerprints of the code and the versions of the
libraries that decide the stage's output (`ner_pipeline.lineage`). The manifest records that lineage and each
file's size and sha256; a lookup checks the files before reuse and removes a damaged artifact, with a warning
naming the file, so it is rebuilt instead of served (`ner_pipeline.integrity`).

A build is written into a hidden temporary folder and renamed into place with its `manifest.json` already inside,
so a folder at the final path is always complete; a killed build leaves only a hidden temporary folder, which is
never served and is cleaned by the next build of the same key. An exclusive file lock per key makes concurrent
builds of one key (overlapping scheduled runs) end with one artifact: the second waits and then returns the
first's result. Those locks hold on one machine; a root on object storage (`ner_pipeline.remote`) publishes with
a conditional put instead.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ner_pipeline import __version__
from ner_pipeline.errors import ArtifactError
from ner_pipeline.integrity import NO_RECORDS, VerifyMode, check_files, file_records
from ner_pipeline.keys import KEY_LENGTH, artifact_key, canonical, hash_files, key_lineage

if TYPE_CHECKING:
    from ner_pipeline.localcache import LocalCopies

logger = logging.getLogger(__name__)
# Fills the folder it is given with a stage's files; returns the stage's metrics for the manifest.
Producer = Callable[[Path], Mapping[str, Any]]

MANIFEST = "manifest.json"
__all__ = ["KEY_LENGTH", "Artifact", "ArtifactStore", "artifact_key", "hash_files", "write_json_atomic"]


@dataclass(frozen=True)
class Artifact:
    """A complete stage output: a folder on disk, or a prefix on object storage copied to disk when first read.

    `location` is where it lives (a local folder, or the URL of its prefix: safe to log); `path` is the local
    folder to read its files from. For a remote artifact, `copies` downloads it into the bounded local cache the
    first time `path` is asked for, so looking an artifact up, keying on it or logging it never downloads it.
    """

    stage: str
    key: str
    location: Path | str
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)
    cached: bool = field(default=False, compare=False)
    copies: LocalCopies | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> Path:
        """The artifact's folder on local disk (a remote artifact is downloaded and verified the first time)."""
        if self.copies is None:
            return Path(self.location)
        return self.copies.materialise(self)

    def files(self, *parts: str) -> Path:
        """The artifact's local folder holding at least its files at or below `parts` (relative paths such as
        `model` or `dataset/test`): a remote artifact downloads only those."""
        if self.copies is None:
            return Path(self.location)
        return self.copies.materialise(self, parts)

    @property
    def stats(self) -> dict[str, Any]:
        """Stage statistics and metrics recorded in the manifest."""
        return self.manifest.get("stats", {})

    @property
    def inputs(self) -> dict[str, str]:
        """Upstream artifact keys by stage name."""
        return self.manifest.get("inputs", {})

    @property
    def created(self) -> str:
        return self.manifest.get("created", "")

    @property
    def lineage(self) -> dict[str, Any] | None:
        """Code fingerprints and library versions the artifact was built with (None: an older manifest)."""
        return self.manifest.get("lineage")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def produce_with_manifest(
    folder: Path,
    stage: str,
    key: str,
    producer: Producer,
    inputs: Mapping[str, str] | None,
    config: Any,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `producer` into `folder`, then write the manifest there (lineage, stats, size and sha256 of each file)
    and return it. `extra` adds fields (a remote build records its upload id)."""
    started = time.monotonic()
    stats = dict(producer(folder))
    manifest = {
        "stage": stage,
        "key": key,
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "inputs": dict(inputs or {}),
        "config": canonical(config),
        "stats": stats,
        "duration_s": round(time.monotonic() - started, 3),
        "package_version": __version__,
        "lineage": key_lineage(stage, key),
        "files": file_records(folder, exclude=(MANIFEST,)),
        **(extra or {}),
    }
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def folder_size(path: Path) -> int:
    """Total size in bytes of the files below `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ArtifactStore:
    """Stage artifacts below one root folder.

    Args:
        root: The cache folder.
        verify: How a lookup checks an artifact's files before reuse: "sha256" (every byte) or "size".
    """

    is_remote = False  # checkpoints are published as saved only to a remote root (`ner_pipeline.remote`)

    def __init__(self, root: str | Path, verify: VerifyMode = "sha256") -> None:
        self.root = Path(root)
        self.verify: VerifyMode = verify

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def location(self, stage: str, key: str) -> Path | str:
        """Where the artifact of `key` lives or would live (safe to log)."""
        return self.path(stage, key)

    def publish_work(self, stage: str, key: str, folder: Path) -> None:
        """Share a finished piece of work (a checkpoint) below `work_dir` with other machines: nothing to do here,
        the work folder is already where the next attempt looks."""

    def read(self, stage: str, key: str) -> Artifact | None:
        """Return the complete artifact for `key` as its manifest describes it, without checking its files."""
        folder = self.path(stage, key)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc}); delete the folder to rebuild") from exc
        return Artifact(stage=stage, key=key, location=folder, manifest=manifest, cached=True)

    def get(self, stage: str, key: str) -> Artifact | None:
        """Return the complete, intact artifact for `key`, or None when there is none.

        A damaged artifact (a file missing, truncated or overwritten, or a manifest without file hashes) is
        removed with a WARNING naming the files, so the caller rebuilds it instead of serving it.
        """
        return self._intact(self.read(stage, key), locked=False)

    def damage(self, artifact: Artifact, mode: VerifyMode | None = None) -> list[str]:
        """What is wrong with an artifact's files, one line per file; empty when it is intact."""
        return check_files(artifact.path, artifact.manifest.get("files"), mode or self.verify)

    def _intact(self, artifact: Artifact | None, locked: bool) -> Artifact | None:
        if artifact is None:
            return None
        problems = self.damage(artifact)
        if not problems:
            return artifact
        verdict = "cannot be verified" if problems == [NO_RECORDS] else "is damaged"
        reasons = "; ".join(problems)
        logger.warning("%s: artifact %s %s, rebuilding it: %s", artifact.stage, artifact.key, verdict, reasons)
        if locked:
            self._discard_locked(artifact)
        else:
            self.discard(artifact)
        return None

    def discard(self, artifact: Artifact) -> bool:
        """Remove an artifact that must not be reused (damaged, or a record that no longer holds), so the next
        `build` of its key makes a new one.

        Only that very artifact goes: under the key's build lock, and only when the folder still holds the
        manifest read (same `created`), so a fresh one written meanwhile by another run stays. It is moved aside
        in one rename, so readers see the whole artifact or none.

        Returns:
            Whether it was removed.
        """
        with self._lock(artifact.stage, artifact.key):
            return self._discard_locked(artifact)

    def _discard_locked(self, artifact: Artifact) -> bool:
        current = self.read(artifact.stage, artifact.key)
        if current is None or current.created != artifact.created:
            return False
        trash = current.path.with_name(f".trash-{artifact.key}-{uuid.uuid4().hex[:8]}")
        os.rename(current.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("%s: discarded %s", artifact.stage, artifact.key)
        return True

    def require(self, stage: str, key: str) -> Artifact:
        """Return the artifact for `key` or raise naming what is missing."""
        artifact = self.get(stage, key)
        if artifact is None:
            raise ArtifactError(
                f"no {stage} artifact {key} under {self.root}; run the '{stage}' stage first "
                f"(ner-pipeline run --only {stage}, with the same --config and --set flags)"
            )
        return artifact

    def work_dir(self, stage: str, key: str) -> Path:
        """A persistent scratch folder for a resumable build (e.g. training checkpoints).

        It survives a killed build so the next attempt can resume, and is removed once the artifact is complete.
        """
        folder = self.root / stage / f".work-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextmanager
    def claim_work(self, stage: str, key: str) -> Iterator[None]:
        """Hold, across processes, the right to work on `key` in its work folder (e.g. a whole training run).

        A second run of the same key waits here and then finds the artifact built. A lock of its own, so the
        holder can still call `build` (which takes the build lock) inside it.
        """
        with self._lock(stage, key, "work"):
            yield

    def _lock_file(self, stage: str, key: str, purpose: str) -> Path:
        lock_dir = self.root / stage / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return lock_dir / (f"{key}.lock" if purpose == "build" else f"{key}.{purpose}.lock")

    @contextmanager
    def _lock(self, stage: str, key: str, purpose: str = "build") -> Iterator[None]:
        with self._lock_file(stage, key, purpose).open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def build(
        self,
        stage: str,
        key: str,
        producer: Producer,
        *,
        inputs: Mapping[str, str] | None = None,
        config: Any = None,
    ) -> Artifact:
        """Return the artifact for `key`, building it with `producer` only when it does not exist yet.

        Args:
            stage: Stage name.
            key: The artifact key (see `artifact_key`).
            producer: Writes the stage's files into the folder it is given and returns stats for the manifest.
            inputs: Upstream artifact keys, recorded in the manifest.
            config: The stage config, recorded in the manifest.

        Returns:
            The complete artifact; `cached` tells whether it already existed.
        """
        existing = self.get(stage, key)
        if existing is not None:
            logger.info("%s: cache hit %s (%s)", stage, key, existing.location)
            return existing
        with self._lock(stage, key):
            existing = self._intact(self.read(stage, key), locked=True)
            if existing is not None:  # another process finished it while we waited
                logger.info("%s: built concurrently by another run, reusing %s", stage, existing.location)
                return existing
            return self._produce(stage, key, producer, inputs, config)

    def _produce(
        self,
        stage: str,
        key: str,
        producer: Producer,
        inputs: Mapping[str, str] | None,
        config: Any,
    ) -> Artifact:
        """Build the missing artifact (the caller holds the key's build lock) and drop its work folder."""
        manifest = self._write(stage, key, producer, inputs, config)
        shutil.rmtree(self.root / stage / f".work-{key}", ignore_errors=True)
        logger.info("%s: wrote %s", stage, self.path(stage, key))
        return Artifact(stage=stage, key=key, location=self.path(stage, key), manifest=manifest, cached=False)

    def _write(
        self,
        stage: str,
        key: str,
        producer: Producer,
        inputs: Mapping[str, str] | None,
        config: Any,
    ) -> dict[str, Any]:
        """Build into a fresh temporary folder and rename it into place with its manifest; return the manifest.

        The caller holds the key's build lock, so temporary folders of this key are leftovers of killed builds.
        """
        for stale in (self.root / stage).glob(f".tmp-{key}-*"):
            logger.info("%s: removing an interrupted build %s", stage, stale)
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("%s: cache miss %s, building", stage, key)
        tmp = self.root / stage / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            manifest = produce_with_manifest(tmp, stage, key, producer, inputs, config)
            os.rename(tmp, self.path(stage, key))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def list(self) -> list[Artifact]:
        """All complete artifacts, oldest first."""
        found: list[Artifact] = []
        if not self.root.is_dir():
            return found
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for folder in stage_dir.iterdir():
                if folder.name.startswith("."):
                    continue
                artifact = self.read(stage_dir.name, folder.name)
                if artifact is not None:
                    found.append(artifact)
        return sorted(found, key=lambda a: a.created)

    def prune(self, keep_last: int, protected: set[str] | None = None, dry_run: bool = False) -> list[Artifact]:
        """Delete all but the newest `keep_last` artifacts of each stage.

        Artifacts whose key is in `protected` (e.g. keys recorded on registered model versions) are kept, and so
        is every upstream artifact of a kept one, so lineage stays resolvable. Leftovers of killed builds go too
        (see `remove_leftovers`).

        Returns:
            The artifacts removed (or that would be, with dry_run).
        """
        from ner_pipeline.pruning import prune

        return prune(self, keep_last, protected, dry_run)

    def prune_stale(self, protected: set[str] | None = None, dry_run: bool = False) -> list[Artifact]:
        """Delete the artifacts the installed code and libraries would not build again; `protected` keys and
        their lineage stay (see `pruning.prune_stale`)."""
        from ner_pipeline.pruning import prune_stale

        return prune_stale(self, protected, dry_run)

    def remove_leftovers(self) -> list[Path]:
        """Delete what killed builds left behind and nobody is working on (see `pruning.remove_leftovers`)."""
        from ner_pipeline.pruning import remove_leftovers

        return remove_leftovers(self)

    @contextmanager
    def try_lock(self, stage: str, key: str, purpose: str) -> Iterator[bool]:
        """Like `_lock`, but yields False at once when another process holds the lock."""
        with self._lock_file(stage, key, purpose).open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
