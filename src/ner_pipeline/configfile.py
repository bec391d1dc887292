"""Config files on disk: YAML with `extends:` and dotted overrides, the project root they belong to, and config
models whose relative paths are anchored at that root yet serialised as written.

The project root is the nearest folder at or above the loaded config file that holds `pyproject.toml`, else the
config file's own folder; without a config file, the working folder. One root serves the whole `extends:` chain
and the `--set` overrides (a Prefect worker has no meaningful working folder), so a relative path in a config
never depends on the shell's folder.

`load_config` anchors the config: path fields are made absolute in place, so every reader gets an absolute path.
Serialisation (`model_dump`, fingerprints, artifact keys, MLflow params) still shows each path as written and the
root is not a field: a team sharing a cache across checkouts, or one user running from another folder, gets the
same keys. Two data folders written alike differ in the ingest key by the hash of their files' content.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer
from pydantic_core import PydanticCustomError

from ner_pipeline.errors import ConfigError

PROJECT_MARKER = "pyproject.toml"
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SQLITE = "sqlite:///"


def find_project_root(config_file: Path) -> Path:
    """The nearest folder at or above `config_file` holding `pyproject.toml`, else the file's own folder."""
    folder = config_file.resolve().parent
    return next((d for d in (folder, *folder.parents) if (d / PROJECT_MARKER).is_file()), folder)


def is_uri(value: str) -> bool:
    """True for `scheme:...` (models:/, s3://, package:, http://), false for a file system path."""
    return bool(_URI_SCHEME.match(value))


def absolute_path(path: str | Path, base: Path) -> Path:
    """`path` with `~` expanded, made absolute against `base` when relative, with symlinks and `..` resolved."""
    expanded = Path(path).expanduser()
    return (expanded if expanded.is_absolute() else base / expanded).resolve()


def local_path(value: str | None, base: Path) -> str | None:
    """`value` made absolute against `base`, unless it is empty or a URI."""
    return value if not value or is_uri(value) else str(absolute_path(value, base))


def absolute_store_uri(uri: str, base: Path) -> str:
    """An MLflow tracking URI with its SQLite file made absolute against `base` and resolved.

    `sqlite:///mlruns/mlflow.db` becomes `sqlite:////<base>/mlruns/mlflow.db`, so equal stores get equal URIs
    whatever folder they were named from. Anything else (a server, `databricks`) is returned unchanged.
    """
    if not uri.startswith(_SQLITE):
        return uri
    path, sep, query = uri.removeprefix(_SQLITE).partition("?")
    if not path or path == ":memory:":
        return uri
    return f"{_SQLITE}{absolute_path(path, base)}{sep}{query}"


class Anchored(BaseModel):
    """A config model that can be rooted at a project folder (see the module docstring)."""

    # The project root, and each field resolved in place as (as written, resolved); set by `anchored`.
    _root: Path | None = PrivateAttr(None)
    _as_written: dict[str, tuple[Any, Any]] = PrivateAttr(default_factory=dict)

    @model_serializer(mode="wrap")
    def _serialize_as_written(self, handler: Any) -> Any:
        data = handler(self)
        for name, (written, resolved) in self._as_written.items():
            if name in data and getattr(self, name) == resolved:  # a later model_copy(update=...) wins
                data[name] = written
        return data

    @property
    def project_root(self) -> Path | None:
        """The folder relative paths resolve against; None when not anchored (relative then means the working
        folder, as for a config built in code)."""
        return self._root

    def resolve_path(self, path: str | Path) -> Path:
        """An absolute path for a path written in this config (relative: against the project root)."""
        return absolute_path(path, self._root or Path.cwd())

    def resolve_uri(self, uri: str) -> str:
        """A tracking URI with its SQLite file made absolute against the project root."""
        return absolute_store_uri(uri, self._root or Path.cwd())

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        """This model's path fields made absolute against `root` (none by default)."""
        return {}

    def anchored(self, root: Path) -> Self:
        """A copy rooted at `root`: path fields (here and in nested models) resolved, serialised as written."""
        nested = {name: value.anchored(root) for name, value in self if isinstance(value, Anchored)}
        paths = {k: v for k, v in self._resolved_paths(root).items() if v != getattr(self, k)}
        copy = self.model_copy(update={**nested, **paths})
        copy._root = root
        copy._as_written = {k: (getattr(self, k), v) for k, v in paths.items()}
        return copy


SEED_MAX = 2**32 - 1  # numpy's seeds are unsigned 32-bit


def _not_bool(value: Any) -> Any:
    # pydantic reads true as 1 for int and float fields: `train.batch_size=true` must fail instead.
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "must be a number, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Seed = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=SEED_MAX)]


class Section(Anchored):
    """A config section: unknown keys and non-finite numbers fail, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def fingerprint(self) -> str:
        """Return a stable sha256 of this section's values as written (used in artifact keys)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in a YAML config file, merged over the files its `extends:` chain names.

    Raises:
        ConfigError: a file is missing, not YAML, not a mapping, or the chain forms a cycle.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = read_yaml((path.parent / parent), (*seen, path.resolve()))
    return merge_dicts(base, raw)


def merge_dicts(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `delta`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into its dotted path and a YAML-parsed value.

    Raises:
        ConfigError: when the text has no `=` or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.learning_rate=3e-5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `key=value` overrides to a raw config mapping."""
    result = dict(raw)
    for text in overrides:
        path, value = parse_override(text)
        delta: dict[str, Any] = {path[-1]: value}
        for part in reversed(path[:-1]):
            delta = {part: delta}
        result = merge_dicts(result, delta)
    return result


@functools.cache
def max_export_opset() -> int | None:
    """The highest ONNX opset the installed exporter writes; None when torch is missing or does not say.

    optimum-onnx exports through torch.onnx's TorchScript exporter (`dynamo=False`), which only warns above its
    ceiling and then writes a graph ONNX Runtime may reject. The ceiling is read from torch/onnx/_constants.py
    without importing torch (1-2 s), so loading a config stays cheap.
    """
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    constants = Path(next(iter(spec.submodule_search_locations))) / "onnx" / "_constants.py"
    try:
        tree = ast.parse(constants.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        names = {getattr(t, "id", None) for t in getattr(node, "targets", ())}
        if "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET" in names and isinstance(node.value, ast.Constant):
            return int(node.value.value)
    return None


def _describe_error(err: Mapping[str, Any], origin: str) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "(root)"
    if err["type"] == "extra_forbidden":
        return f"{origin}: unknown field '{field}' (check the spelling)"
    message = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)
    got = err.get("input")
    shown = "" if isinstance(got, dict) or "(got " in message else f" (got {got!r})"
    return f"{origin}: {field}: {message}{shown}"


def describe_validation_error(exc: ValidationError, origin: str) -> str:
    """One line per validation error: `<origin>: <dotted.field>: <message> (got <value>)`."""
    return "\n".join(_describe_error(err, origin) for err in exc.errors())


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys (MLflow params, config diffs)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
