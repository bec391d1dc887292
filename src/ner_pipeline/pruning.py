"""What may leave the artifact cache: all but the newest artifacts, or the stale ones; never a protected lineage.

An artifact is stale when the installed code or libraries would not build it any more (its recorded lineage
differs, see `lineage.stale_reasons`), when its manifest predates file hashes (it cannot be verified, so a lookup
rebuilds it anyway), or when an upstream artifact it was built from is stale: no run of the current pipeline
computes its key again.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ner_pipeline.errors import ArtifactError
from ner_pipeline.integrity import NO_RECORDS
from ner_pipeline.lineage import stale_reasons

if TYPE_CHECKING:
    from ner_pipeline.artifacts import Artifact, ArtifactStore

logger = logging.getLogger(__name__)


def staleness(artifacts: Iterable[Artifact]) -> dict[str, list[str]]:
    """Why each artifact is stale, by key; an artifact that is current maps to an empty list."""
    by_key = {a.key: a for a in artifacts}
    found: dict[str, list[str]] = {}

    def reasons(artifact: Artifact) -> list[str]:
        if artifact.key not in found:
            found[artifact.key] = []  # a cycle cannot happen (keys hash their inputs), but never recurse twice
            own = stale_reasons(artifact.stage, artifact.lineage)
            if artifact.manifest.get("files") is None:
                own.append(NO_RECORDS)
            for stage, key in artifact.inputs.items():
                upstream = by_key.get(key)
                if upstream is not None and reasons(upstream):
                    own.append(f"built from stale {stage} {key}")
            found[artifact.key] = own
        return found[artifact.key]

    for artifact in by_key.values():
        reasons(artifact)
    return found


def with_lineage(keep: set[str], artifacts: Iterable[Artifact]) -> set[str]:
    """`keep` plus every artifact upstream of a kept one, so lineage stays resolvable."""
    by_key = {a.key: a for a in artifacts}
    keep = set(keep)
    frontier = list(keep)
    while frontier:
        artifact = by_key.get(frontier.pop())
        for upstream in artifact.inputs.values() if artifact else []:
            if upstream not in keep:
                keep.add(upstream)
                frontier.append(upstream)
    return keep


def prune(
    store: ArtifactStore, keep_last: int, protected: set[str] | None = None, dry_run: bool = False
) -> list[Artifact]:
    """Delete all but the newest `keep_last` artifacts of each stage (see `ArtifactStore.prune`)."""
    if keep_last < 0:
        raise ArtifactError(f"--keep-last must be >= 0 (got {keep_last})")
    everything = store.list()
    keep: set[str] = set(protected or set())
    by_stage: dict[str, list[Artifact]] = {}
    for artifact in everything:
        by_stage.setdefault(artifact.stage, []).append(artifact)
    for artifacts in by_stage.values():
        keep.update(a.key for a in artifacts[len(artifacts) - keep_last :] if keep_last)
    keep = with_lineage(keep, everything)
    return _remove(store, [a for a in everything if a.key not in keep], dry_run)


def prune_stale(store: ArtifactStore, protected: set[str] | None = None, dry_run: bool = False) -> list[Artifact]:
    """Delete the artifacts the installed code and libraries would not build again (see `staleness`).

    What `protected` names (keys on registered model versions) stays, and so does its lineage, stale or not.

    Returns:
        The artifacts removed (or that would be, with dry_run).
    """
    everything = store.list()
    stale = staleness(everything)
    keep = with_lineage(set(protected or set()), everything)
    return _remove(store, [a for a in everything if stale[a.key] and a.key not in keep], dry_run)


def _remove(store: ArtifactStore, artifacts: list[Artifact], dry_run: bool) -> list[Artifact]:
    if dry_run:
        return artifacts
    for artifact in artifacts:
        if store.discard(artifact):  # vanishes in one step (a rename, or the remote manifest's deletion)
            logger.info("pruned %s/%s", artifact.stage, artifact.key)
    store.remove_leftovers()
    return artifacts


def remove_leftovers(store: ArtifactStore, root: Path | None = None) -> list[Path]:
    """Delete what killed builds left behind and nobody is working on: temporary build folders, and work
    folders (training checkpoints) of keys whose artifact is complete. The work folder of an unfinished key
    stays, so its training can still resume.

    Args:
        root: The local folder to clean (default: the store's root; a remote store's local cache).

    Returns:
        The folders removed.
    """
    removed: list[Path] = []
    root = Path(store.root) if root is None else root
    for stage_dir in (p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for folder in [*stage_dir.glob(".tmp-*"), *stage_dir.glob(".trash-*"), *stage_dir.glob(".work-*")]:
            kind, _, rest = folder.name.partition("-")
            # .tmp-<key>-<pid>-<hex>, .trash-<key>-<hex>, .work-<key>
            key = rest if kind == ".work" else rest.rsplit("-", 2 if kind == ".tmp" else 1)[0]
            if kind == ".work" and store.read(stage_dir.name, key) is None:
                continue  # resumable
            with store.try_lock(stage_dir.name, key, "work" if kind == ".work" else "build") as free:
                if free:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                    logger.info("removed leftover %s", folder)
    return removed
