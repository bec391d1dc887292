"""The Prefect task of the batch inference flow."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from ner_pipeline import batch
from ner_pipeline.config import PipelineConfig


# No Prefect caching: the library caches each chunk in the artifact store, which the CLI shares.
@task(name="batch-predict", cache_policy=NO_CACHE)
def batch_predict_task(
    config: PipelineConfig, source: str, output: str, model: str | None, options: dict, tags: dict[str, str]
) -> batch.BatchResult:
    """Tag the corpus chunk by chunk, reusing the chunks already computed."""
    return batch.run_job(config, source, output, model, tags, **options)
