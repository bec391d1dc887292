"""The `ner-training` flow: ingest → tokenize → train → evaluate → export → register, one MLflow run per model.

Stages not selected with `only`/`from_stage` are looked up in the artifact cache; selected ones run, and are
themselves cache hits when nothing they depend on changed. The walk over the stages and the promotion decision
are the library's (`ner_pipeline.pipeline.walk`); this flow only hands it Prefect tasks as the steps. MLflow gets
a run per trained model (`ner_pipeline.modelruns`): a rerun that computes nothing adds none and names the run that
holds the model; a rerun that recomputes evaluate or export logs into that run.

`ner-training-conll2003` is the same flow on a local CoNLL-2003 folder that each machine must name (`data_path`).

Installed as `ner_pipeline_flows.training`; `prefect deploy` loads this file by path from the project root.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from ner_pipeline import pipeline
from ner_pipeline.artifacts import Artifact
from ner_pipeline.config import RegistryConfig
from ner_pipeline.errors import ConfigError
from ner_pipeline_flows.server import prefect_api
from ner_pipeline_tasks.config import check_model_task, load_config_task, show_library_logs
from ner_pipeline_tasks.registry import promote_task
from ner_pipeline_tasks.stages import build_stage, lookup_task
from ner_pipeline_tasks.tracking import end_run_task, open_tracking_task, track_stage_task

CONLL_MINILM_CONFIG = "configs/experiment/minilm.yaml"


@flow(name="ner-training", log_prints=False)
def training_flow(
    config_path: str = "configs/quickstart.yaml",
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    from_stage: str | None = None,
) -> pipeline.RunSummary:
    """Run the NER training pipeline.

    Args:
        config_path: YAML config; a relative path is read from the working directory.
        overrides: `key=value` config overrides, e.g. `["train.learning_rate=3e-5"]`.
        only: Run exactly these stages, reusing cached upstream artifacts.
        from_stage: Run this stage and every later one.
    """
    show_library_logs()
    config = load_config_task(config_path, list(overrides or []))
    selected = pipeline.select_stages(only, from_stage)
    check_model_task(config, list(selected), config_path, list(overrides or []))
    runs = open_tracking_task(config, {"prefect.flow_run_id": str(flow_run.get_id())})
    ctx = pipeline.RunContext(tracking_uri=runs.tracking_uri if runs else None)

    def on_stage(artifact: Artifact) -> pipeline.RunContext | None:
        nonlocal runs
        if runs is None:
            return None
        runs = track_stage_task(config, runs, artifact)
        return pipeline.RunContext(tracking_uri=runs.tracking_uri, run_id=runs.run_id)

    def promote(tracking_uri: str, cfg: RegistryConfig, version: str) -> str:
        return promote_task(tracking_uri, cfg, version).summary()

    try:
        summary = pipeline.walk(
            config, selected, build=build_stage, lookup=lookup_task, on_stage=on_stage, promote=promote, ctx=ctx
        )
    except BaseException:
        end_run_task(runs, "FAILED")
        raise
    end_run_task(runs, "FINISHED")
    create_markdown_artifact(summary.to_markdown(), key="ner-training-summary", description="Stages and metrics")
    get_run_logger().info("summary: %s", json.dumps(summary.metrics))
    return summary


@flow(name="ner-training-conll2003", log_prints=False)
def conll2003_flow(
    data_path: str,
    config_path: str = CONLL_MINILM_CONFIG,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    from_stage: str | None = None,
) -> pipeline.RunSummary:
    """Run the training pipeline on a local CoNLL-2003 folder, which has no default: each machine names its own.

    Args:
        data_path: Folder holding train.txt, validation.txt and test.txt (a relative path: to the project root).
        config_path: YAML config (default: the packaged MiniLM on CoNLL-2003).
        overrides: `key=value` config overrides, applied after `data.path`.
        only: Run exactly these stages.
        from_stage: Run this stage and every later one.
    """
    if not data_path.strip():
        raise ConfigError(
            "parameter data_path is empty: name the CoNLL-2003 folder (train.txt, validation.txt, test.txt), e.g. "
            "prefect deployment run 'ner-training-conll2003/weekly' --param data_path=/data/conll2003"
        )
    with_path = [f"data.path={data_path}", *(overrides or [])]
    return training_flow.fn(config_path, with_path, only, from_stage)


def run_training(**parameters: Any) -> pipeline.RunSummary:
    """Run `training_flow` as `ner-pipeline run` does: against PREFECT_API_URL if set, else against a temporary
    server that dies with this process (see `ner_pipeline_flows.server`)."""
    with prefect_api():
        return training_flow(**parameters)


if __name__ == "__main__":
    run_training()
