"""The stage graph: which stages exist, what each reads, how to key, run or look one up, and the walk over them.

Both the Prefect flow and the CLI walk the plan with `walk`, so they compute the same artifact keys, share one
cache and decide promotion the same way; the flow only hands in Prefect tasks as the steps. Nothing here knows
about Prefect.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ner_pipeline.artifacts import Artifact, ArtifactStore
from ner_pipeline.config import PipelineConfig, RegistryConfig
from ner_pipeline.errors import ConfigError
from ner_pipeline.integrity import VerifyMode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What a stage may need beyond config and upstream artifacts: where MLflow is and the open run."""

    tracking_uri: str | None = None
    run_id: str | None = None


Keyer = Callable[[PipelineConfig, Mapping[str, Artifact], RunContext], str]
Runner = Callable[[PipelineConfig, Mapping[str, Artifact], ArtifactStore, RunContext], Artifact]
Checker = Callable[[PipelineConfig, Artifact], None]


@dataclass(frozen=True)
class StageSpec:
    """How to key and build one stage from the pipeline config and its upstream artifacts."""

    name: str
    upstream: tuple[str, ...]
    key: Keyer
    run: Runner
    # Holds an artifact, however it was obtained (built, looked up, or served from Prefect's cache), to config
    # that its key leaves out (ingest: data.scheme); raises the error building it would have raised.
    check: Checker | None = None


def _ingest_spec() -> StageSpec:
    from ner_pipeline import ingest

    return StageSpec(
        "ingest",
        (),
        key=lambda cfg, up, ctx: ingest.ingest_key(cfg.data),
        run=lambda cfg, up, store, ctx: ingest.run_ingest(cfg.data, store),
        check=lambda cfg, artifact: ingest.check_scheme(cfg.data, artifact),
    )


def _tokenize_spec() -> StageSpec:
    from ner_pipeline import tokenize

    return StageSpec(
        "tokenize",
        ("ingest",),
        key=lambda cfg, up, ctx: tokenize.tokenize_key(cfg.model, cfg.tokenize, up["ingest"].key),
        run=lambda cfg, up, store, ctx: tokenize.run_tokenize(cfg.model, cfg.tokenize, up["ingest"], store),
    )


def _train_spec() -> StageSpec:
    from ner_pipeline import train

    return StageSpec(
        "train",
        ("tokenize",),
        key=lambda cfg, up, ctx: train.train_key(cfg.model, cfg.train, up["tokenize"].key),
        run=lambda cfg, up, store, ctx: train.run_train(cfg.model, cfg.train, up["tokenize"], store),
    )


def _evaluate_spec() -> StageSpec:
    from ner_pipeline import evaluate

    return StageSpec(
        "evaluate",
        ("ingest", "train"),
        key=lambda cfg, up, ctx: evaluate.evaluate_key(cfg.evaluate, up["ingest"].key, up["train"].key),
        run=lambda cfg, up, store, ctx: evaluate.run_evaluate(cfg.evaluate, up["ingest"], up["train"], store),
    )


def _export_spec() -> StageSpec:
    from ner_pipeline import export

    return StageSpec(
        "export",
        ("ingest", "train"),
        key=lambda cfg, up, ctx: export.export_key(cfg.export, up["ingest"].key, up["train"].key),
        run=lambda cfg, up, store, ctx: export.run_export(cfg.export, up["ingest"], up["train"], store),
    )


def _register_spec() -> StageSpec:
    from ner_pipeline import registry

    def key(cfg: PipelineConfig, up: Mapping[str, Artifact], ctx: RunContext) -> str:
        return registry.register_key(cfg.registry, {s: a.key for s, a in up.items()}, _uri(ctx))

    def run(cfg: PipelineConfig, up: Mapping[str, Artifact], store: ArtifactStore, ctx: RunContext) -> Artifact:
        from ner_pipeline.tracking import git_commit

        extra = {
            "model.base": cfg.model.name_or_path,
            "config.name": cfg.name,
            "config.hash": cfg.fingerprint(),
            "git.commit": git_commit(),
        }
        return registry.run_register(cfg.registry, up, store, _uri(ctx), ctx.run_id, extra)

    # export is used when the config enables it (its ONNX files travel with the registered model)
    return StageSpec("register", ("ingest", "train", "evaluate", "export"), key=key, run=run)


def _uri(ctx: RunContext) -> str:
    if ctx.tracking_uri is None:
        raise ConfigError("the register stage needs an MLflow tracking URI (tracking.enabled: true)")
    return ctx.tracking_uri


def open_store(config: PipelineConfig, verify: VerifyMode | None = None) -> ArtifactStore:
    """The config's artifact cache (a folder, or object storage: `remote.open_artifact_store`), checking an
    artifact's files before reuse as `cache.verify` says, or as `verify` overrides it."""
    from ner_pipeline.remote import open_artifact_store

    return open_artifact_store(config.artifacts_root, config.cache, verify, os.environ)


SPEC_FACTORIES: dict[str, Callable[[], StageSpec]] = {
    "ingest": _ingest_spec,
    "tokenize": _tokenize_spec,
    "train": _train_spec,
    "evaluate": _evaluate_spec,
    "export": _export_spec,
    "register": _register_spec,
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


def enabled(stage: str, config: PipelineConfig) -> bool:
    """Whether the config turns a stage on (register needs tracking; export and register can be switched off)."""
    if stage == "register":
        return config.registry.enabled and config.tracking.enabled
    if stage == "export":
        return config.export.enabled
    return True


def plan(config: PipelineConfig, selected: Sequence[str]) -> list[str]:
    """The stages to visit, in order: every enabled stage up to the last selected one."""
    chosen = [s for s in selected if enabled(s, config)]
    if not chosen:
        return []
    last = max(STAGES.index(s) for s in chosen)
    return [s for s in STAGES[: last + 1] if enabled(s, config)]


def stage_key(
    stage: str, config: PipelineConfig, upstream: Mapping[str, Artifact], ctx: RunContext | None = None
) -> str:
    """The artifact key of `stage` for this config and these upstream artifacts."""
    return spec(stage).key(config, upstream, ctx or RunContext())


def run_stage(
    stage: str,
    config: PipelineConfig,
    upstream: Mapping[str, Artifact],
    store: ArtifactStore,
    ctx: RunContext | None = None,
) -> Artifact:
    """Build (or reuse from cache) the artifact of `stage`."""
    return spec(stage).run(config, upstream, store, ctx or RunContext())


def lookup_stage(
    stage: str,
    config: PipelineConfig,
    upstream: Mapping[str, Artifact],
    store: ArtifactStore,
    ctx: RunContext | None = None,
) -> Artifact:
    """Return the cached artifact of a stage that is not being run, or explain how to build it."""
    return store.require(stage, stage_key(stage, config, upstream, ctx))


StepFn = Callable[[str, PipelineConfig, Mapping[str, Artifact], RunContext], Artifact]
PromoteFn = Callable[[str, RegistryConfig, str], str]


def walk(
    config: PipelineConfig,
    selected: Sequence[str],
    build: StepFn,
    lookup: StepFn,
    *,
    on_stage: Callable[[Artifact], RunContext | None] | None = None,
    promote: PromoteFn | None = None,
    ctx: RunContext | None = None,
    announce: bool = True,
) -> RunSummary:
    """Visit the planned stages in order: build the selected ones, look up the others, report each artifact.

    This is the one loop over the stage graph. `run_pipeline` passes the library's functions; the Prefect flow
    passes its tasks, so both select, key, reuse and promote the same way.

    Args:
        config: The resolved config.
        selected: Stages to build (see `select_stages`); the others up to the last selected one are looked up.
        build: Builds, or reuses from the cache, the artifact of a selected stage (e.g. `run_stage`).
        lookup: Returns the cached artifact of a stage that is not selected (e.g. `lookup_stage`).
        on_stage: Called with each artifact, e.g. to log it to MLflow; may return the context for the stages
            after it (the MLflow run that holds the model, once train tells which model this is).
        promote: Runs the promotion gate for a version (tracking URI, registry config, version) and returns
            the decision's summary; called only as `promote_new_version` decides.
        ctx: Tracking URI and open MLflow run, for the register stage.
        announce: Log a line as each stage starts (with its key when it is to be built) and ends (computed or
            cache hit, seconds); off for a dry walk that only checks the cache.

    Returns:
        The stages' artifacts, which were computed now, and the promotion decision if the gate ran.
    """
    ctx = ctx or RunContext()
    summary = RunSummary(config.name, {}, [], ctx.tracking_uri, ctx.run_id)
    for name in plan(config, selected):
        upstream = {u: summary.stages[u] for u in spec(name).upstream if u in summary.stages}
        started = time.monotonic()
        if announce:  # a stage to build says its key as it starts (which training is this?)
            what = f"key {stage_key(name, config, upstream, ctx)}" if name in selected else "(from the cache)"
            logger.info("%-8s started   %s", name, what)
        artifact = (build if name in selected else lookup)(name, config, upstream, ctx)
        if (check := spec(name).check) is not None:
            check(config, artifact)
        if name in selected and not artifact.cached:
            summary.computed.append(name)
        if announce:
            result = "computed" if name in summary.computed else "cache hit"
            elapsed = time.monotonic() - started  # the location, not the path: a remote one is not downloaded
            logger.info("%-8s %-9s key %s  %.1f s  %s", name, result, artifact.key, elapsed, artifact.location)
        summary.stages[name] = artifact
        if on_stage is not None:
            # tracking may answer with the MLflow run that holds this model (known once train is), for register
            ctx = on_stage(artifact) or ctx
            summary.run_id = ctx.run_id
    if promote is not None:
        promote_new_version(config, summary, promote)
    return summary


def promote_new_version(config: PipelineConfig, summary: RunSummary, promote: PromoteFn) -> None:
    """With `registry.auto_promote`, run the gate for a version this run registered and record its decision.

    A version found already registered (register was a cache hit) had its gate decide when it was registered; a
    rerun must not pile refusals on the audit trail, so it is left to `ner-pipeline promote`.
    """
    registered = summary.stages.get("register")
    if registered is None or not config.registry.auto_promote or not summary.tracking_uri:
        return
    version = str(registered.stats["version"])
    if "register" not in summary.computed:
        logger.info(
            "version %s was registered earlier and its gate decided then (rerun: ner-pipeline promote)", version
        )
        return
    summary.decision = promote(summary.tracking_uri, config.registry, version)
    logger.info(summary.decision)


def run_pipeline(
    config: PipelineConfig,
    store: ArtifactStore,
    stages: Sequence[str] | None = None,
    on_stage: Callable[[Artifact], None] | None = None,
    ctx: RunContext | None = None,
) -> dict[str, Artifact]:
    """Run the stages in order without an orchestrator (the flow walks the same plan through Prefect tasks).

    Args:
        config: The resolved config.
        store: Where artifacts live.
        stages: Stages to run; the others are looked up in the cache. None runs all.
        on_stage: Called with each artifact, e.g. to log it to MLflow.
        ctx: Tracking URI and open MLflow run, for the register stage.
    """
    summary = walk(
        config,
        list(stages or STAGES),
        build=lambda name, cfg, upstream, c: run_stage(name, cfg, upstream, store, c),
        lookup=lambda name, cfg, upstream, c: lookup_stage(name, cfg, upstream, store, c),
        on_stage=on_stage,
        ctx=ctx,
    )
    return summary.stages


HEADLINE_METRICS = ("test_f1", "test_f1_strict", "test_f1_ci_low", "test_f1_ci_high", "validation_f1")


@dataclass
class RunSummary:
    """What a pipeline run produced, for the CLI's closing lines and the Prefect artifact."""

    config_name: str
    stages: dict[str, Artifact]
    computed: list[str]
    tracking_uri: str | None = None
    run_id: str | None = None
    decision: str | None = None

    @property
    def registered(self) -> dict[str, str] | None:
        """name/version of the model version this run registered (or found already registered)."""
        artifact = self.stages.get("register")
        return {k: str(artifact.stats[k]) for k in ("name", "version")} if artifact else None

    @property
    def onnx_dir(self) -> str | None:
        artifact = self.stages.get("export")
        return str(artifact.location) if artifact else None

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
            lines.append(f"| {name} | {result} | `{artifact.key}` | `{artifact.location}` |")
        if self.metrics:
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics.items()]
        if self.onnx_dir:
            lines += [
                "",
                f"ONNX variants in `{self.onnx_dir}` (serving default: {self.stages['export'].stats.get('default')}).",
            ]
        if self.registered:
            lines += ["", f"Registered model `{self.registered['name']}` version {self.registered['version']}."]
        if self.decision:
            lines += ["", f"Promotion: {self.decision}"]
        if self.run_id:
            when = "trained in this pipeline run" if "train" in self.computed else "trained earlier"
            lines += ["", f"MLflow run `{self.run_id}` at `{self.tracking_uri}` holds this model ({when})."]
        return "\n".join(lines)
