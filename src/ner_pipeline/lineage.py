"""What decides a stage's output besides its config and inputs: the code it runs and the libraries it calls.

Each stage declares the modules whose code decides its output (`STAGE_CODE`) and the distributions whose versions
do (`STAGE_LIBRARIES`). `stage_lineage` turns both into a record that enters the artifact key
(`artifacts.artifact_key`) and the manifest, so `ner-pipeline artifacts list` can tell which artifacts the
installed code and libraries would no longer produce.

A module's fingerprint hashes its syntax tree without docstrings and source positions: comments, docstrings and
formatting do not count; every other change in the module does, whether or not the stage uses the changed
function (so a changed log message also rebuilds: conservative, never stale). An entry `module:name` covers one
top-level function or class of a module the stage only borrows from, and only that definition, not the helpers
it calls. Keys cascade (a key contains its upstream keys), so an upstream stage's code and libraries are covered
for everything downstream of it. What is deliberately not covered is listed, with the reason, in `NOT_DECIDING`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
FINGERPRINT_LENGTH = 16
ABSENT = "absent"

# Modules (relative to ner_pipeline) whose code decides each stage's output.
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest", "readers", "schemes", "sources", "spans"),
    "tokenize": ("tokenize", "preprocessing"),
    # entity_scores picks the best checkpoint (validation F1); the collator and window merging used in training
    # live in preprocessing, covered through the tokenize key
    # callbacks decide when training stops (early stopping, divergence)
    "train": ("train", "scoring", "callbacks", "checkpoints", "evaluate:entity_scores"),
    "evaluate": ("evaluate", "predict", "backends", "decoding", "words", "report", "plots", "predictions"),
    # the parity check runs the predictors and entity_scores, and decides which variants are accepted
    "export": ("export", "predict", "backends", "decoding", "words", "evaluate:entity_scores"),
    "register": ("registry.register", "registry.tags", "registry.pyfunc", "registry.gate"),
}

# Modules the stages' code imports that do not decide what a stage writes; a test checks that every module a
# declared module imports is declared for its stage or an upstream one, or listed here.
NOT_DECIDING: dict[str, str] = {
    "artifacts": "the cache itself",
    "config": "config values enter the keys as values",
    "errors": "error messages only",
    "modelref": "resolves a model reference; the resolved files' hashes are in the keys",
    "plots": "training curves are pictures beside the model (evaluate declares it for its figures)",
    "registry.client": "how the registry is reached, not what is registered",
    "registry.catalog": "the gate fetches a production model with it at promotion time, after registration",
    "registry.card": "the model card is written to the registry beside the version, not into the register artifact",
}

# Distributions whose versions decide each stage's output (upstream ones are covered by the cascade).
STAGE_LIBRARIES: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "tokenize": ("transformers", "tokenizers"),
    "train": ("torch", "transformers", "accelerate", "seqeval"),
    "evaluate": ("seqeval", "transformers", "torch"),
    "export": ("optimum-onnx", "onnx", "onnxruntime", "torch", "transformers"),
    "register": ("mlflow",),
}


def _reads_hub(config: Any) -> bool:
    data = config.get("data") if isinstance(config, Mapping) else None
    return isinstance(data, Mapping) and data.get("source") == "hub"


# Libraries that decide a stage's output only for some configs, given the canonical config its key hashes:
# `datasets` decides what a Hub source yields; local files are parsed by our own readers, and the Arrow files
# ingest writes with it are read back by later versions, so for them an upgrade changes nothing.
CONDITIONAL_LIBRARIES: dict[str, tuple[Callable[[Any], bool], tuple[str, ...]]] = {
    "ingest": (_reads_hub, ("datasets",)),
}


def source_fingerprint(source: str, name: str | None = None, origin: str = "<source>") -> str:
    """The fingerprint of Python source, blind to comments, docstrings and formatting.

    Args:
        source: The module's source text.
        name: A top-level function or class to fingerprint alone; None for the whole module.
        origin: File name for error messages.

    Raises:
        SyntaxError: the source does not parse.
        KeyError: `name` is not defined at the top level.
    """
    tree: ast.AST = ast.parse(source, filename=origin)
    if name is not None:
        found = [n for n in tree.body if getattr(n, "name", None) == name]  # type: ignore[attr-defined]
        if not found:
            raise KeyError(f"{origin}: no top-level definition '{name}'")
        tree = found[-1]
    _strip_docstrings(tree)
    dumped = ast.dump(tree, annotate_fields=True, include_attributes=False)
    return hashlib.sha256(dumped.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.body[0] if node.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = node.body[1:] or [ast.Pass()]


@functools.cache
def module_fingerprint(entry: str) -> str:
    """The fingerprint of `module` or `module:name` under ner_pipeline, computed once per process."""
    module, _, name = entry.partition(":")
    path = PACKAGE_DIR.joinpath(*module.split(".")).with_suffix(".py")
    return source_fingerprint(path.read_text(encoding="utf-8"), name or None, str(path))


@functools.cache
def library_version(distribution: str) -> str:
    """The installed version of a distribution, or "absent"; read once per process."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return ABSENT


def stage_libraries(stage: str, config: Any = None) -> tuple[str, ...]:
    """The distributions deciding `stage`'s output for this (canonical) key config."""
    libraries = STAGE_LIBRARIES.get(stage, ())
    condition, extra = CONDITIONAL_LIBRARIES.get(stage, (None, ()))
    if condition is not None and condition(config):
        libraries = (*libraries, *extra)
    return libraries


def stage_lineage(stage: str, config: Any = None) -> dict[str, dict[str, str]]:
    """The code fingerprints and library versions deciding `stage`'s output; empty for an unknown stage.

    Args:
        stage: Stage name.
        config: The canonical config the stage's key hashes (decides conditional libraries).

    Returns:
        {"code": {module: fingerprint}, "libraries": {distribution: version}}
    """
    if stage not in STAGE_CODE:
        return {}
    return {
        "code": {entry: module_fingerprint(entry) for entry in STAGE_CODE[stage]},
        "libraries": {dist: library_version(dist) for dist in stage_libraries(stage, config)},
    }


def stale_reasons(stage: str, recorded: Mapping[str, Any] | None) -> list[str]:
    """Why an artifact's recorded lineage differs from what the installed code and libraries would record.

    Libraries added only for some configs are compared when recorded; the stage's other declarations always.

    Returns:
        One short reason per difference; empty when the artifact is current (or its stage is unknown).
    """
    if stage not in STAGE_CODE:
        return []
    if not recorded:
        return ["no code/library lineage recorded (written by an older ner-pipeline)"]
    code, libraries = recorded.get("code", {}), recorded.get("libraries", {})
    reasons = [f"code of {entry} changed" for entry in STAGE_CODE[stage] if code.get(entry) != _current(entry)]
    reasons += [f"{entry} no longer decides this stage" for entry in code if entry not in STAGE_CODE[stage]]
    for dist in dict.fromkeys([*STAGE_LIBRARIES[stage], *libraries]):
        now, then = library_version(dist), libraries.get(dist, "not recorded")
        if now != then:
            reasons.append(f"{dist} {then} -> {now}")
    return reasons


def _current(entry: str) -> str | None:
    try:
        return module_fingerprint(entry)
    except (OSError, SyntaxError, KeyError):  # the module or definition is gone
        return None
