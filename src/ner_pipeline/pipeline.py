"""The stage graph: which stages exist, what each reads, and how to key, run or look one up.

Both the Prefect flow and the CLI go through these functions, so they compute the same artifact keys and share
one cache. Nothing here knows about Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ner_pipeline.artifacts import Artifact, ArtifactStore
from ner_pipeline.config import PipelineConfig
from ner_pipeline.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """How to key and build one stage from the pipeline config and its upstream artifacts."""

    name: str
    upstream: tuple[str, ...]
    key: Callable[[PipelineConfig, Mapping[str, Artifact]], str]
    run: Callable[[PipelineConfig, Mapping[str, Artifact], ArtifactStore], Artifact]


def _ingest_spec() -> StageSpec:
    from ner_pipeline import ingest

    return StageSpec(
        "ingest",
        (),
        key=lambda cfg, up: ingest.ingest_key(cfg.data),
        run=lambda cfg, up, store: ingest.run_ingest(cfg.data, store),
    )


def _tokenize_spec() -> StageSpec:
    from ner_pipeline import tokenize

    return StageSpec(
        "tokenize",
        ("ingest",),
        key=lambda cfg, up: tokenize.tokenize_key(cfg.model, cfg.tokenize, up["ingest"].key),
        run=lambda cfg, up, store: tokenize.run_tokenize(cfg.model, cfg.tokenize, up["ingest"], store),
    )


def _train_spec() -> StageSpec:
    from ner_pipeline import train

    return StageSpec(
        "train",
        ("tokenize",),
        key=lambda cfg, up: train.train_key(cfg.model, cfg.train, up["tokenize"].key),
        run=lambda cfg, up, store: train.run_train(cfg.model, cfg.train, up["tokenize"], store),
    )


def _evaluate_spec() -> StageSpec:
    from ner_pipeline import evaluate

    return StageSpec(
        "evaluate",
        ("ingest", "train"),
        key=lambda cfg, up: evaluate.evaluate_key(cfg.evaluate, up["ingest"].key, up["train"].key),
        run=lambda cfg, up, store: evaluate.run_evaluate(cfg.evaluate, up["ingest"], up["train"], store),
    )


SPEC_FACTORIES: dict[str, Callable[[], StageSpec]] = {
    "ingest": _ingest_spec,
    "tokenize": _tokenize_spec,
    "train": _train_spec,
    "evaluate": _evaluate_spec,
}
STAGES: tuple[str, ...] = tuple(SPEC_FACTORIES)


def check_stage(stage: str) -> str:
    """Return `stage` if it names a stage, else raise a ConfigError listing the stages."""
    if stage not in SPEC_FACTORIES:
        raise ConfigError(f"unknown stage '{stage}'; stages are: {', '.join(STAGES)}")
    return stage


def spec(stage: str) -> StageSpec:
    """Return the spec of a stage (imports its module only when asked)."""
    return SPEC_FACTORIES[check_stage(stage)]()


def select_stages(only: Sequence[str] | None = None, from_stage: str | None = None) -> list[str]:
    """Return the stages to (re)run, in order; the others are looked up in the cache.

    Args:
        only: Run exactly these stages.
        from_stage: Run this stage and every stage after it.

    Raises:
        ConfigError: an unknown stage name, or both arguments given.
    """
    if only and from_stage:
        raise ConfigError("give either --only or --from, not both")
    for name in [*(only or []), *([from_stage] if from_stage else [])]:
        check_stage(name)
    if only:
        return [s for s in STAGES if s in only]
    if from_stage:
        return list(STAGES[STAGES.index(from_stage) :])
    return list(STAGES)


def stage_key(stage: str, config: PipelineConfig, upstream: Mapping[str, Artifact]) -> str:
    """The artifact key of `stage` for this config and these upstream artifacts."""
    return spec(stage).key(config, upstream)


def run_stage(
    stage: str, config: PipelineConfig, upstream: Mapping[str, Artifact], store: ArtifactStore
) -> Artifact:
    """Build (or reuse from cache) the artifact of `stage`."""
    return spec(stage).run(config, upstream, store)


def lookup_stage(
    stage: str, config: PipelineConfig, upstream: Mapping[str, Artifact], store: ArtifactStore
) -> Artifact:
    """Return the cached artifact of a stage that is not being run, or explain how to build it."""
    return store.require(stage, stage_key(stage, config, upstream))


def run_pipeline(
    config: PipelineConfig,
    store: ArtifactStore,
    stages: Sequence[str] | None = None,
    on_stage: Callable[[Artifact], None] | None = None,
) -> dict[str, Artifact]:
    """Run the stages in order without an orchestrator (the flow does the same through Prefect tasks).

    Args:
        config: The resolved config.
        store: Where artifacts live.
        stages: Stages to run; the others are looked up in the cache. None runs all.
        on_stage: Called with each artifact, e.g. to log it to MLflow.
    """
    selected = set(stages or STAGES)
    last = max(STAGES.index(s) for s in selected)
    done: dict[str, Artifact] = {}
    for name in STAGES[: last + 1]:
        upstream = {u: done[u] for u in spec(name).upstream}
        runner = run_stage if name in selected else lookup_stage
        done[name] = runner(name, config, upstream, store)
        if on_stage is not None:
            on_stage(done[name])
    return done


HEADLINE_METRICS = ("test_f1", "test_f1_strict", "test_f1_ci_low", "test_f1_ci_high", "validation_f1")


@dataclass
class RunSummary:
    """What a pipeline run produced, for the CLI's closing lines and the Prefect artifact."""

    config_name: str
    stages: dict[str, Artifact]
    computed: list[str]
    tracking_uri: str | None = None
    run_id: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        evaluated = self.stages.get("evaluate")
        stats = evaluated.stats if evaluated else {}
        return {k: stats[k] for k in HEADLINE_METRICS if k in stats}

    def to_markdown(self) -> str:
        """A Markdown report: one row per stage, then the headline metrics."""
        lines = [
            f"# ner-pipeline run: {self.config_name}",
            "",
            "| stage | result | key | path |",
            "|---|---|---|---|",
        ]
        for name, artifact in self.stages.items():
            result = "computed" if name in self.computed else "cache hit"
            lines.append(f"| {name} | {result} | `{artifact.key}` | `{artifact.path}` |")
        if self.metrics:
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics.items()]
        if self.run_id:
            lines += ["", f"MLflow run `{self.run_id}` at `{self.tracking_uri}`."]
        return "\n".join(lines)
