"""The artifact store on object storage (`artifacts_root: s3://bucket/prefix`, or any fsspec URL).

Layout below the root, as on disk plus one level:

    <stage>/<key>/manifest.json              written last: present means complete
    <stage>/<key>/<upload id>/<files>        one upload per build attempt, so workers never overwrite each other
    <stage>/.work-<key>/<piece>/...          training checkpoints, each with `_complete.json` written last

Object stores have no rename, so a build runs into a local temporary folder (in the local cache), uploads its files
under a fresh upload id, and then creates the manifest with a conditional put (S3 `If-None-Match: *`; an exclusive
create elsewhere). The first worker to create it wins; a worker that loses deletes its own upload and returns the
winner's artifact. Guarantees across machines: exactly one artifact per key, never a partial one served. Not
guaranteed: that only one machine works on a key; the fcntl locks (`claim_work`, the build lock) hold on one
machine only, so two machines may build (or train) the same key at once, and one of them throws its result away.

A lookup reads the manifest and checks sizes with one listing; nothing is downloaded until a consumer reads
`Artifact.path` (`ner_pipeline.localcache`), where every file is checked against its sha256.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ner_pipeline.artifacts import MANIFEST, Artifact, ArtifactStore, Producer, produce_with_manifest
from ner_pipeline.errors import ArtifactError
from ner_pipeline.integrity import NO_RECORDS, VerifyMode, file_records
from ner_pipeline.localcache import GB, LocalCopies, default_local_dir
from ner_pipeline.objectstore import (
    check_root_url,
    download_verified,
    is_remote_root,
    listing,
    modified,
    open_fs,
    put_if_absent,
    remove_prefix,
    sha256_object,
    upload_folder,
)

if TYPE_CHECKING:
    from ner_pipeline.cacheconfig import CacheConfig

logger = logging.getLogger(__name__)

COMPLETE = "_complete.json"  # written last into each published piece of work
UPLOAD_TIME = "%Y%m%dT%H%M%SZ"


def open_artifact_store(
    root: str, cache: CacheConfig, verify: VerifyMode | None = None, env: Mapping[str, str] | None = None
) -> ArtifactStore:
    """The artifact store at `root`: a URL (`s3://bucket/prefix`, any fsspec protocol) gives the remote store,
    with local copies in `cache.local_dir` (default from $XDG_CACHE_HOME in `env`); a plain path the local one.

    Args:
        verify: Overrides `cache.verify` (a quick preflight compares sizes only).
    """
    verify = verify or cache.verify
    if not is_remote_root(root):
        return ArtifactStore(root, verify=verify)
    local_dir = Path(cache.local_dir) if cache.local_dir else default_local_dir(env or {})
    copies = LocalCopies(local_dir, root, int(cache.local_max_gb * GB), dict(cache.storage_options))
    return RemoteArtifactStore(root, copies, verify, grace_s=cache.upload_grace_hours * 3600)


def read_manifest(fs: Any, prefix: str) -> dict[str, Any] | None:
    """The manifest below `prefix`, or None when there is none (the artifact is absent or incomplete)."""
    try:
        return json.loads(fs.cat_file(f"{prefix}/{MANIFEST}"))
    except FileNotFoundError:
        return None


def discard_remote(fs: Any, prefix: str, created: str) -> bool:
    """Remove the artifact below `prefix` if its manifest is still the one written at `created`: the manifest first
    (the artifact is gone in that one step), then its upload. Returns whether it was removed."""
    manifest = read_manifest(fs, prefix)
    if manifest is None or manifest.get("created") != created:
        return False
    fs.rm_file(f"{prefix}/{MANIFEST}")
    fs.invalidate_cache(prefix)
    remove_prefix(fs, f"{prefix}/{manifest['upload']}")
    return True


def upload_age(name: str, now: float) -> float | None:
    """Seconds since an upload id (`<UTC time>-<hex>`) was made; None for a name that is not one."""
    try:
        made = datetime.strptime(name.split("-", 1)[0], UPLOAD_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None
    return now - made.timestamp()


class RemoteArtifactStore(ArtifactStore):
    """Stage artifacts below a root URL, with local copies in a bounded cache (see the module docstring).

    Args:
        url: The root, e.g. `s3://bucket/prefix` (credentials come from the environment).
        copies: The local cache for this root.
        verify: Kept for the interface; a lookup compares sizes by listing, a download checks every sha256.
        grace_s: Uploads and work prefixes without a manifest are abandoned after this long (`prune`).
    """

    is_remote = True

    def __init__(self, url: str, copies: LocalCopies, verify: VerifyMode = "sha256", grace_s: float = 86400.0):
        self.url = check_root_url(url)
        self.fs, self.base = open_fs(self.url, copies.storage_options)
        self.root = self.url  # type: ignore[assignment]  # named in messages; local work lives in `copies`
        self.copies = copies
        self.verify = verify
        self.grace_s = grace_s

    def _prefix(self, stage: str, key: str) -> str:
        return f"{self.base}/{stage}/{key}"

    def location(self, stage: str, key: str) -> str:
        return f"{self.url}/{stage}/{key}"

    def path(self, stage: str, key: str) -> Path:
        """The local copy's folder (what `Artifact.path` fills)."""
        return self.copies.copy_path(stage, key)

    def _lock_file(self, stage: str, key: str, purpose: str) -> Path:
        return self.copies.lock_file(stage, key, purpose)

    def _artifact(self, stage: str, key: str, manifest: dict[str, Any], cached: bool) -> Artifact:
        return Artifact(stage, key, self.location(stage, key), manifest, cached, copies=self.copies)

    def read(self, stage: str, key: str) -> Artifact | None:
        try:
            manifest = read_manifest(self.fs, self._prefix(stage, key))
        except (OSError, json.JSONDecodeError) as exc:
            where = f"{self.location(stage, key)}/{MANIFEST}"
            raise ArtifactError(f"{where}: unreadable manifest ({exc}); delete the prefix to rebuild") from exc
        return None if manifest is None else self._artifact(stage, key, manifest, cached=True)

    def damage(self, artifact: Artifact, mode: VerifyMode | None = None) -> list[str]:
        """What is wrong with a remote artifact's files, one line per file (naming its URL).

        `size` (the default for lookups) lists the upload once; `sha256` streams every file through a hash.
        """
        records = artifact.manifest.get("files")
        if records is None or "upload" not in artifact.manifest:
            return [NO_RECORDS]
        upload = artifact.manifest["upload"]
        prefix = f"{self._prefix(artifact.stage, artifact.key)}/{upload}"
        found = listing(self.fs, prefix)
        problems: list[str] = []
        for relative, record in records.items():
            url = f"{artifact.location}/{upload}/{relative}"
            info = found.get(relative)
            if info is None:
                problems.append(f"{url}: missing")
            elif int(info["size"]) != record["size"]:
                problems.append(f"{url}: {info['size']} bytes, the manifest says {record['size']}")
            elif mode == "sha256" and sha256_object(self.fs, f"{prefix}/{relative}") != record["sha256"]:
                problems.append(f"{url}: sha256 differs from the manifest (same size, content overwritten)")
        return problems

    def _discard_locked(self, artifact: Artifact) -> bool:
        removed = discard_remote(self.fs, self._prefix(artifact.stage, artifact.key), artifact.created)
        if removed:
            logger.info("%s: discarded %s", artifact.stage, artifact.location)
        return removed

    def _produce(
        self,
        stage: str,
        key: str,
        producer: Producer,
        inputs: Mapping[str, str] | None,
        config: Any,
    ) -> Artifact:
        """Publish the missing artifact unless another worker does first (module docstring)."""
        artifact = self._publish(stage, key, producer, inputs, config)
        if not artifact.cached:
            self._forget_work(stage, key)
        return artifact

    def _publish(
        self,
        stage: str,
        key: str,
        producer: Producer,
        inputs: Mapping[str, str] | None,
        config: Any,
    ) -> Artifact:
        """Build locally, upload under a fresh upload id, then create the manifest unless another worker did."""
        local = self.copies.folder / stage
        for stale in local.glob(f".tmp-{key}-*"):  # we hold the build lock: leftovers of killed builds
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("%s: cache miss %s, building", stage, key)
        upload = f"{datetime.now(UTC):{UPLOAD_TIME}}-{uuid.uuid4().hex[:8]}"
        prefix = self._prefix(stage, key)
        tmp = local / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            manifest = produce_with_manifest(tmp, stage, key, producer, inputs, config, {"upload": upload})
            sent = upload_folder(self.fs, tmp, f"{prefix}/{upload}", exclude=(MANIFEST,))
            if put_if_absent(self.fs, f"{prefix}/{MANIFEST}", (tmp / MANIFEST).read_bytes()):
                artifact = self._artifact(stage, key, manifest, cached=False)
                self.copies.adopt(artifact, tmp)
                logger.info("%s: wrote %s (%d bytes uploaded)", stage, artifact.location, sent)
                return artifact
        except BaseException:
            remove_prefix(self.fs, f"{prefix}/{upload}")
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        remove_prefix(self.fs, f"{prefix}/{upload}")
        winner = self.read(stage, key)
        if winner is None:
            raise ArtifactError(f"{self.location(stage, key)}: another worker published it and it is gone again")
        logger.info("%s: published first by another worker, reusing %s (this upload removed)", stage, winner.location)
        return winner

    def list(self) -> list[Artifact]:
        """All complete artifacts, oldest first (one manifest read each)."""
        self.fs.invalidate_cache(self.base)
        found = []
        for path in self.fs.glob(f"{self.base}/*/*/{MANIFEST}"):
            stage, key = path.split("/")[-3:-1]
            if not stage.startswith(".") and not key.startswith("."):
                artifact = self.read(stage, key)
                found += [artifact] if artifact is not None else []
        return sorted(found, key=lambda a: a.created)

    def work_dir(self, stage: str, key: str) -> Path:
        """A local scratch folder for a resumable build, holding the newest work another worker published
        (`publish_work`), so training resumes where a killed worker left it."""
        folder = self.copies.folder / stage / f".work-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock(stage, key, "restore"):  # torchrun's ranks on one machine restore once
            self._restore_work(stage, key, folder)
        return folder

    def _restore_work(self, stage: str, key: str, folder: Path) -> None:
        prefix = self._prefix(stage, f".work-{key}")
        for marker in [r for r in listing(self.fs, prefix) if r.rpartition("/")[2] == COMPLETE]:
            piece = marker.rpartition("/")[0]
            target = folder / piece
            if target.exists():
                continue
            records = json.loads(self.fs.cat_file(f"{prefix}/{marker}"))["files"]
            tmp = target.with_name(f".restore-{target.name}-{uuid.uuid4().hex[:8]}")
            problems = download_verified(self.fs, f"{prefix}/{piece}", records, tmp)
            if problems:
                logger.warning("%s: not resuming from %s: %s", stage, piece, "; ".join(problems))
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            os.rename(tmp, target)
            logger.info("%s: restored %s from %s", stage, piece, self.location(stage, f".work-{key}"))

    def publish_work(self, stage: str, key: str, folder: Path) -> None:
        """Upload a finished piece of work below `work_dir` (a checkpoint), its `_complete.json` last; then remove
        the pieces published beside it before (older checkpoints)."""
        work = self.copies.folder / stage / f".work-{key}"
        piece = folder.relative_to(work).as_posix()
        prefix = self._prefix(stage, f".work-{key}")
        records = file_records(folder)
        sent = upload_folder(self.fs, folder, f"{prefix}/{piece}")
        self.fs.pipe_file(f"{prefix}/{piece}/{COMPLETE}", json.dumps({"files": records}).encode())
        parent, _, name = piece.rpartition("/")
        under = f"{parent}/" if parent else ""
        older = {r[len(under) :].split("/")[0] for r in listing(self.fs, prefix) if r.startswith(under)} - {name}
        for other in older:
            remove_prefix(self.fs, f"{prefix}/{under}{other}")
        logger.info("%s: published %s (%d bytes) to %s", stage, piece, sent, self.location(stage, f".work-{key}"))

    def _forget_work(self, stage: str, key: str) -> None:
        remove_prefix(self.fs, self._prefix(stage, f".work-{key}"))
        shutil.rmtree(self.copies.folder / stage / f".work-{key}", ignore_errors=True)

    def remove_leftovers(self) -> list[Path]:
        """Delete uploads no manifest names and work prefixes of finished or abandoned keys (untouched for
        `grace_s`), then the local cache's own leftovers (see `pruning.remove_leftovers`)."""
        from ner_pipeline.pruning import remove_leftovers

        removed: list[Path] = []
        now = time.time()
        for stage_path in self._dirs(self.base):
            stage = stage_path.rpartition("/")[2]
            for entry in self._dirs(stage_path):
                name = entry.rpartition("/")[2]
                if name.startswith(".work-"):
                    times = [t for i in listing(self.fs, entry).values() if (t := modified(i)) is not None]
                    finished = self.read(stage, name.removeprefix(".work-")) is not None
                    doomed = [entry] if finished or (times and now - max(times) > self.grace_s) else []
                else:
                    kept = (read_manifest(self.fs, entry) or {}).get("upload")
                    doomed = [
                        u
                        for u in self._dirs(entry)
                        if (n := u.rpartition("/")[2]) != kept and (upload_age(n, now) or 0) > self.grace_s
                    ]
                for prefix in doomed:
                    remove_prefix(self.fs, prefix)
                    removed.append(Path(prefix))
                    logger.info("removed leftover %s", self.fs.unstrip_protocol(prefix))
        return removed + remove_leftovers(self, self.copies.folder)

    def _dirs(self, prefix: str) -> list[str]:
        self.fs.invalidate_cache(prefix)
        try:
            return [i["name"].rstrip("/") for i in self.fs.ls(prefix, detail=True) if i["type"] == "directory"]
        except FileNotFoundError:
            return []
