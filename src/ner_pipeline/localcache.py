"""The bounded local cache of a remote artifact store: local copies of remote artifacts, made only when read.

A remote artifact is copied to `<local_dir>/<root digest>/<stage>/<key>/` the first time a consumer asks for its
`Artifact.path`, each file checked against the manifest's sha256 on arrival. The copies of all roots share
`cache.local_max_gb`: after a new copy, the least recently used complete copies go until the cache fits, never
one a process on this machine is using (each process holds a shared lock on every copy it has read until it ends;
eviction needs the exclusive lock). Builds of a remote store run here too (`.tmp-*`), and so does training's work
folder (`.work-*`), which eviction leaves alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ner_pipeline.errors import ArtifactError
from ner_pipeline.objectstore import download_verified, open_fs

if TYPE_CHECKING:
    from ner_pipeline.artifacts import Artifact

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # as `artifacts.MANIFEST` (not imported: artifacts imports this module's type)
GB = 1024**3

# Copies this process has read, by folder: the lock file held shared (so no process evicts it) and which build
# of the key it is (the manifest's `created`).
_HELD: dict[str, tuple[IO[str], str]] = {}
# flock locks belong to open files, not threads: threads of one process take turns here instead.
_GUARD = threading.RLock()


def default_local_dir(env: Mapping[str, str]) -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/ner-pipeline/artifacts`."""
    base = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "ner-pipeline" / "artifacts"


@dataclass(frozen=True)
class LocalCopies:
    """Local copies of one remote root's artifacts, in a cache folder bounded to `max_bytes` (all roots together).

    Plain data, so an `Artifact` carrying it can be pickled (Prefect persists task results) and still download
    itself in another process.
    """

    local_dir: Path
    root_url: str
    max_bytes: int
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def folder(self) -> Path:
        """This root's part of the cache."""
        return self.local_dir / hashlib.sha256(self.root_url.encode()).hexdigest()[:16]

    def copy_path(self, stage: str, key: str) -> Path:
        return self.folder / stage / key

    def lock_file(self, stage: str, key: str, purpose: str) -> Path:
        lock_dir = self.folder / stage / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return lock_dir / f"{key}.{purpose}.lock"

    def materialise(self, artifact: Artifact) -> Path:
        """The local copy of a remote artifact, downloaded and verified unless this build of it is already here.

        Raises:
            ArtifactError: a file arrived missing or different from the manifest; the remote artifact is removed
                so the next run rebuilds it (one line naming the file).
        """
        folder = self.copy_path(artifact.stage, artifact.key)
        with _GUARD:
            held = _HELD.get(str(folder))
            if held is not None and held[1] == artifact.created:
                return folder
            with self._using(artifact, folder), self._fetching(artifact):
                if _created(folder) != artifact.created:
                    self._download(artifact, folder)
                os.utime(folder)  # least recently used goes first
        self.evict()
        return folder

    @contextmanager
    def _using(self, artifact: Artifact, folder: Path) -> Iterator[None]:
        """Hold the copy shared for the rest of the process (taken first, so no eviction runs in between)."""
        _release(folder)  # an older build of the key (rebuilt in this process): let go of it first
        handle = self.lock_file(artifact.stage, artifact.key, "copy").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_SH)
            yield
        except BaseException:
            handle.close()
            raise
        _HELD[str(folder)] = (handle, artifact.created)

    @contextmanager
    def _fetching(self, artifact: Artifact) -> Iterator[None]:
        """One process at a time downloads or replaces a copy; the others wait and find it there."""
        with self.lock_file(artifact.stage, artifact.key, "fetch").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _download(self, artifact: Artifact, folder: Path) -> None:
        fs, prefix = open_fs(str(artifact.location), self.storage_options)
        tmp = folder.with_name(f".tmp-{artifact.key}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            records = artifact.manifest.get("files") or {}
            problems = download_verified(fs, f"{prefix}/{artifact.manifest['upload']}", records, tmp)
            if problems:
                from ner_pipeline.remote import discard_remote

                logger.warning("%s: artifact %s is damaged: %s", artifact.stage, artifact.key, "; ".join(problems))
                discard_remote(fs, prefix, artifact.created)
                raise ArtifactError(
                    f"{problems[0]}; the damaged {artifact.stage} artifact {artifact.key} was removed from the "
                    "store, run again to rebuild it"
                )
            (tmp / MANIFEST).write_text(json.dumps(artifact.manifest, indent=2, sort_keys=True), encoding="utf-8")
            self.replace_copy(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = sum(r["size"] for r in records.values())
        logger.info(
            "%s: downloaded %s (%d files, %d bytes) to %s",
            artifact.stage,
            artifact.location,
            len(records),
            size,
            folder,
        )

    @staticmethod
    def replace_copy(source: Path, folder: Path) -> None:
        """Move a complete folder into place as the copy, replacing an older one; the caller holds its lock."""
        if folder.exists():
            trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(source, folder)

    def adopt(self, artifact: Artifact, built: Path) -> None:
        """Keep a folder this process just built and published as the artifact's local copy (no download later)."""
        folder = self.copy_path(artifact.stage, artifact.key)
        with _GUARD, self._using(artifact, folder), self._fetching(artifact):
            self.replace_copy(built, folder)
        self.evict()

    def evict(self) -> list[Path]:
        """Delete least recently used complete copies until the cache fits `max_bytes`; return what went."""
        copies = [p for p in self.local_dir.glob("*/*/*") if not p.name.startswith(".") and (p / MANIFEST).is_file()]
        sized = sorted((p.stat().st_mtime, p, _size(p)) for p in copies)
        total = sum(size for *_, size in sized)
        removed: list[Path] = []
        for _, path, size in sized:
            if total <= self.max_bytes:
                break
            if str(path) in _HELD:
                continue  # this process reads it
            with (path.parent / ".locks" / f"{path.name}.copy.lock").open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another process on this machine is reading it
                trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            total -= size
            removed.append(path)
            logger.info("local cache over %.1f GB: evicted %s (%d bytes)", self.max_bytes / GB, path, size)
        return removed


def _created(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("created")
    except (OSError, json.JSONDecodeError):
        return None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _release(folder: Path) -> None:
    held = _HELD.pop(str(folder), None)
    if held is not None:
        held[0].close()
