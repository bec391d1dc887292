"""The `ner-training` flow: ingest → tokenize → train → evaluate → export → register, tracked in one MLflow run.

Stages not selected with `only`/`from_stage` are looked up in the artifact cache; selected ones run, and are
themselves cache hits when nothing they depend on changed. The walk over the stages and the promotion decision
are the library's (`ner_pipeline.pipeline.walk`); this flow only hands it Prefect tasks as the steps.

Installed as `ner_pipeline_flows.training`; `prefect deploy` loads this file by path from the project root.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from ner_pipeline import pipeline
from ner_pipeline.config import RegistryConfig
from ner_pipeline_tasks.config import load_config_task
from ner_pipeline_tasks.registry import promote_task
from ner_pipeline_tasks.stages import build_stage, lookup_task
from ner_pipeline_tasks.tracking import end_run_task, log_stage_task, start_run_task


@flow(name="ner-training", log_prints=False)
def training_flow(
    config_path: str = "configs/quickstart.yaml",
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    from_stage: str | None = None,
) -> pipeline.RunSummary:
    """Run the NER training pipeline.

    Args:
        config_path: YAML config, relative to the working directory.
        overrides: `key=value` config overrides, e.g. `["train.learning_rate=3e-5"]`.
        only: Run exactly these stages, reusing cached upstream artifacts.
        from_stage: Run this stage and every later one.
    """
    config = load_config_task(config_path, list(overrides or []))
    selected = pipeline.select_stages(only, from_stage)
    tracker = start_run_task(config, {"prefect.flow_run_id": str(flow_run.get_id())})
    ctx = pipeline.RunContext(
        tracking_uri=tracker.tracking_uri if tracker else None, run_id=tracker.run_id if tracker else None
    )

    def promote(tracking_uri: str, cfg: RegistryConfig, version: str) -> str:
        return promote_task(tracking_uri, cfg, version).summary()

    try:
        summary = pipeline.walk(
            config,
            selected,
            build=build_stage,
            lookup=lookup_task,
            on_stage=lambda artifact: log_stage_task(tracker, artifact),
            promote=promote,
            ctx=ctx,
        )
    except BaseException:
        end_run_task(tracker, "FAILED")
        raise
    end_run_task(tracker, "FINISHED")
    create_markdown_artifact(summary.to_markdown(), key="ner-training-summary", description="Stages and metrics")
    get_run_logger().info("summary: %s", json.dumps(summary.metrics))
    return summary


if __name__ == "__main__":
    training_flow()
