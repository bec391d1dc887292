"""The `ner-training` flow: ingest → tokenize → train → evaluate → register, tracked in one MLflow run.

Stages not selected with `only`/`from_stage` are looked up in the artifact cache; selected ones run, and are
themselves cache hits when nothing they depend on changed.
"""

from __future__ import annotations

import json
from dataclasses import replace

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from ner_pipeline import pipeline
from ner_pipeline.artifacts import Artifact
from tasks.config import load_config_task
from tasks.registry import promote_task
from tasks.stages import STAGE_TASKS, lookup_task
from tasks.tracking import end_run_task, log_stage_task, start_run_task


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
    logger = get_run_logger()
    config = load_config_task(config_path, list(overrides or []))
    selected = pipeline.select_stages(only, from_stage)
    tracker = start_run_task(config, {"prefect.flow_run_id": str(flow_run.get_id())})
    ctx = pipeline.RunContext(
        tracking_uri=tracker.tracking_uri if tracker else None, run_id=tracker.run_id if tracker else None
    )
    summary = pipeline.RunSummary(config.name, {}, [], ctx.tracking_uri, ctx.run_id)
    try:
        for name in pipeline.plan(config, selected):
            upstream = {u: summary.stages[u] for u in pipeline.spec(name).upstream if u in summary.stages}
            if name in selected:
                state = STAGE_TASKS[name](config, upstream, ctx, return_state=True)
                artifact: Artifact = state.result()
                if state.name == "Cached" or artifact.cached:
                    artifact = replace(artifact, cached=True)
                else:
                    summary.computed.append(name)
            else:
                artifact = lookup_task(name, config, upstream, ctx)
            logger.info("%s: %s %s", name, "computed" if name in summary.computed else "cache hit", artifact.path)
            summary.stages[name] = artifact
            log_stage_task(tracker, artifact)
        registered = summary.stages.get("register")
        if registered is not None and config.registry.auto_promote and ctx.tracking_uri:
            version = registered.stats["version"]
            if "register" in summary.computed:
                decision = promote_task(ctx.tracking_uri, config.registry, version)
                summary.decision = decision.summary()
                logger.info(summary.decision)
            else:  # the gate ran when this version was registered; a rerun must not pile refusals on the audit
                logger.info(
                    "version %s was registered earlier and its gate decided then (rerun: ner-pipeline promote)", version
                )
    except BaseException:
        end_run_task(tracker, "FAILED")
        raise
    end_run_task(tracker, "FINISHED")
    create_markdown_artifact(summary.to_markdown(), key="ner-training-summary", description="Stages and metrics")
    logger.info("summary: %s", json.dumps(summary.metrics))
    return summary


if __name__ == "__main__":
    training_flow()
