"""The one walk over the stage graph, with plain functions as steps: what runs, what is looked up, when to promote."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from ner_pipeline import pipeline
from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import PipelineConfig, RegistryConfig

URI = "sqlite:///nowhere.db"


class Steps:
    """Records the calls of a walk; `cached` names the stages whose build is a cache hit."""

    def __init__(self, cached: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.cached = cached
        self.calls: list[tuple[str, str, list[str]]] = []
        self.promoted: list[str] = []

    def artifact(self, stage: str, cached: bool) -> Artifact:
        stats = {"name": "ner-x", "version": "4"} if stage == "register" else {}
        return Artifact(stage, f"{stage}-key", Path(stage), {"stats": stats}, cached=cached)

    def build(self, stage: str, cfg: PipelineConfig, up: Mapping[str, Artifact], ctx: pipeline.RunContext) -> Artifact:
        self.calls.append(("build", stage, sorted(up)))
        return self.artifact(stage, stage in self.cached)

    def lookup(self, stage: str, cfg: PipelineConfig, up: Mapping[str, Artifact], ctx: pipeline.RunContext) -> Artifact:
        self.calls.append(("lookup", stage, sorted(up)))
        return self.artifact(stage, True)

    def promote(self, uri: str, cfg: RegistryConfig, version: str) -> str:
        self.promoted.append(version)
        return f"PROMOTE {cfg.model_name} v{version}"


def walk(steps: Steps, selected: list[str], auto_promote: bool = True) -> pipeline.RunSummary:
    config = PipelineConfig.model_validate({"registry": {"auto_promote": auto_promote}})
    ctx = pipeline.RunContext(tracking_uri=URI, run_id="r1")
    return pipeline.walk(config, selected, steps.build, steps.lookup, promote=steps.promote, ctx=ctx)


def test_walk_builds_the_selected_stages_and_looks_up_their_upstream():
    steps = Steps()
    summary = walk(steps, ["evaluate"])
    assert steps.calls == [
        ("lookup", "ingest", []),
        ("lookup", "tokenize", ["ingest"]),
        ("lookup", "train", ["tokenize"]),
        ("build", "evaluate", ["ingest", "train"]),
    ]
    assert summary.computed == ["evaluate"] and list(summary.stages) == ["ingest", "tokenize", "train", "evaluate"]
    assert steps.promoted == [] and summary.decision is None


def test_the_gate_runs_for_a_version_registered_now_and_not_for_one_found_registered():
    fresh = Steps()
    summary = walk(fresh, list(pipeline.STAGES))
    assert summary.computed == list(pipeline.STAGES)
    assert fresh.promoted == ["4"] and summary.decision == "PROMOTE ner-model v4"

    rerun = Steps(cached={"register"})
    summary = walk(rerun, list(pipeline.STAGES))
    assert "register" not in summary.computed
    assert rerun.promoted == [] and summary.decision is None


def test_the_gate_does_not_run_without_auto_promote():
    steps = Steps()
    assert walk(steps, list(pipeline.STAGES), auto_promote=False).decision is None
    assert steps.promoted == []


def test_run_pipeline_stops_at_the_last_stage_asked_for(tmp_path: Path):
    from ner_pipeline.artifacts import ArtifactStore
    from ner_pipeline.errors import ArtifactError

    config = PipelineConfig.model_validate({"artifacts_root": str(tmp_path)})
    with pytest.raises(ArtifactError, match="run the 'ingest' stage first"):
        pipeline.run_pipeline(config, ArtifactStore(tmp_path), stages=["tokenize"])
