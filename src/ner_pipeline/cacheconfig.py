"""The `cache` config section: how the artifact cache checks what it reuses, and the local side of a remote one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from ner_pipeline.configfile import Float, Section, local_path
from ner_pipeline.integrity import VerifyMode
from ner_pipeline.objectstore import check_storage_options


class CacheConfig(Section):
    """How the artifact cache checks an artifact before reusing it; where a remote cache keeps local copies."""

    verify: VerifyMode = Field(
        "sha256",
        description="sha256: hash every file against the manifest (catches any change); size: compare sizes only "
        "(catches deleted and truncated files, not an overwrite of equal size). A remote artifacts_root compares "
        "sizes on lookup and hashes every file as it is downloaded.",
    )
    local_dir: str | None = Field(
        None,
        description="Local copies of a remote artifacts_root's artifacts, made when a stage reads them (None: "
        "${XDG_CACHE_HOME:-~/.cache}/ner-pipeline/artifacts; relative: to the project root).",
    )
    local_max_gb: Float = Field(
        20.0, gt=0, description="Size bound of local_dir: least recently used copies not in use are evicted."
    )
    storage_options: Annotated[dict[str, Any], AfterValidator(check_storage_options)] = Field(
        default_factory=dict,
        description="Non-secret fsspec options for a remote artifacts_root (e.g. {client_kwargs: {region_name: "
        "eu-west-1}}); credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL_S3, ...).",
    )
    upload_grace_hours: Float = Field(
        24.0,
        ge=0,
        description="`artifacts prune` removes remote uploads and training work no manifest names after this long.",
    )

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        return {"local_dir": local_path(self.local_dir, root)}
