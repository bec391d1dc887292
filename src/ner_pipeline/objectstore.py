"""Object storage through fsspec: opening a root URL, exclusive creates, listings with sizes and ages, and
copying verified files both ways. `ner_pipeline.remote` builds the artifact store on it.

Credentials never pass through here: s3fs/botocore read them from the environment or the standard chains
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, instance roles), and botocore reads a
custom endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO, moto, Ceph); gcsfs and adlfs use Google's and
Azure's chains. A root URL carrying credentials is refused, so a URL in a log line never holds a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ner_pipeline.integrity import CHUNK, sha256_file

logger = logging.getLogger(__name__)

# fsspec options that carry secrets: they belong in the environment, never in a config file.
SECRET_OPTIONS = frozenset(
    {"key", "secret", "token", "password", "session_token", "account_key", "sas_token", "credential", "credentials"}
)
SECRET_OPTIONS |= {f"aws_{n}" for n in ("access_key_id", "secret_access_key", "session_token")}


def is_remote_root(root: str | Path) -> bool:
    """True for a URL (`s3://`, `gs://`, `az://`, `file://`, any fsspec protocol); a plain path is local."""
    from ner_pipeline.configfile import is_uri

    return isinstance(root, str) and is_uri(root)


def check_root_url(url: str) -> str:
    """A root URL without its trailing slash (a plain path unchanged); refuses credentials in a URL.

    Raises:
        ValueError: the URL carries a user name, password or query string (the URL is not repeated).
    """
    if not is_remote_root(url):
        return url
    parts = urlsplit(url)
    if "@" in parts.netloc or parts.query:
        raise ValueError(
            "credentials do not belong in the URL (got a URL with a user or query, not shown); set them in the "
            "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, "
            "AZURE_STORAGE_*)"
        )
    return url.rstrip("/")


def check_storage_options(options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """`options` unless one of them (at any depth) names a secret.

    Raises:
        ValueError: naming the option.
    """
    for name, value in options.items():
        if name.lower() in SECRET_OPTIONS:
            raise ValueError(
                f"{where}{name}: credentials do not belong in config files; set them in the environment "
                "(e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) (got a secret, not shown)"
            )
        if isinstance(value, Mapping):
            check_storage_options(value, f"{where}{name}.")
    return dict(options)


def open_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system of `url` and the path within it (fsspec reuses one instance per set of options)."""
    import fsspec

    return fsspec.url_to_fs(url, **dict(storage_options or {}))


def is_local_fs(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def put_if_absent(fs: Any, path: str, data: bytes) -> bool:
    """Create the object `path` holding `data` only if it does not exist yet, in one atomic step.

    S3 gets a PUT with `If-None-Match: *` (s3fs `mode="create"`); a local or mounted file system a hard link of a
    complete temporary file, which fails when the name exists. Other protocols use their driver's exclusive
    create (`mode="create"`).

    Returns:
        True when this call created it, False when it existed.
    """
    if is_local_fs(fs):
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        Path(tmp).write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def listing(fs: Any, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object below `prefix` with its details (size, time), by path relative to it; one fresh listing."""
    fs.invalidate_cache(prefix)
    try:
        found = fs.find(prefix, detail=True)
    except FileNotFoundError:
        return {}
    start = len(prefix.rstrip("/")) + 1
    return {name[start:]: info for name, info in found.items() if info.get("type", "file") != "directory"}


def modified(info: Mapping[str, Any]) -> float | None:
    """When an object was last written, as a POSIX timestamp, from whatever its driver reports."""
    for name in ("LastModified", "mtime", "updated", "last_modified", "created"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def sha256_object(fs: Any, path: str) -> str:
    """The sha256 of an object, streamed in 1 MiB chunks (nothing kept on disk)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload_folder(fs: Any, folder: Path, prefix: str, exclude: tuple[str, ...] = ()) -> int:
    """Copy every file below `folder` to `prefix`, keeping relative paths; return the bytes sent."""
    sent = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative not in exclude:
            fs.put_file(str(path), f"{prefix}/{relative}")
            sent += path.stat().st_size
    return sent


def download_verified(fs: Any, prefix: str, records: Mapping[str, Mapping[str, Any]], folder: Path) -> list[str]:
    """Copy the recorded files below `prefix` into `folder` and check each against its size and sha256.

    Returns:
        One line per file that is missing or differs (naming its URL); empty when all arrived intact.
    """
    problems: list[str] = []
    for relative, record in records.items():
        source, target = f"{prefix}/{relative}", folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(source, str(target))
        except FileNotFoundError:
            problems.append(f"{fs.unstrip_protocol(source)}: missing")
            continue
        size = target.stat().st_size
        if size != record["size"]:
            problems.append(f"{fs.unstrip_protocol(source)}: {size} bytes, the manifest says {record['size']}")
        elif sha256_file(target) != record["sha256"]:
            problems.append(f"{fs.unstrip_protocol(source)}: sha256 differs from the manifest")
    return problems


def remove_prefix(fs: Any, prefix: str) -> None:
    """Delete every object below `prefix` (nothing there is fine)."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(prefix, recursive=True)
    fs.invalidate_cache(prefix)
