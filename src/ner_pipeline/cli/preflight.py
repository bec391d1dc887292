"""Checks `run` and `stage` make before any stage runs (and before Prefect starts), each failing in one line.

- The base model can be loaded (`modelref.check_base_model`, which the Prefect flows run too): a folder that
  exists, an installed `package:`, or a Hub id the Hub knows or the Hugging Face cache holds (the Hub probed once,
  with a short timeout). With the Hub unreachable and a cached copy, the process switches to offline mode, so
  transformers does not retry the Hub for every file.
- The stages this run does not build are in the artifact cache; if one is not, the error prints the command
  that builds it, with the user's own flags.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from ner_pipeline import modelref, pipeline
from ner_pipeline.artifacts import Artifact
from ner_pipeline.cli.hints import Invocation
from ner_pipeline.config import PipelineConfig
from ner_pipeline.errors import ArtifactError

logger = logging.getLogger(__name__)


def check_base_model(cfg: PipelineConfig, stages: Sequence[str], origin: str) -> None:
    """`modelref.check_base_model` with this process's environment (the Prefect flows run the same check).

    Raises:
        ModelError: one line naming the config field and the fix.
    """
    modelref.check_base_model(cfg, stages, origin, os.environ)


def check_cached_inputs(
    cfg: PipelineConfig, selected: Sequence[str], tracking_uri: str | None, invocation: Invocation
) -> None:
    """Check that every stage the run looks up instead of building is in the cache.

    A dry walk: selected stages are only keyed, the others looked up, as the real walk will.

    Raises:
        ArtifactError: naming the missing stages and the `run` command that builds them (the user's flags kept).
    """
    # Sizes only: the run itself checks every byte of what it reuses (cache.verify); this check stays quick.
    store = pipeline.open_store(cfg, verify="size")
    planned = pipeline.plan(cfg, selected)
    missing: list[Artifact] = []

    def keyed(
        name: str, config: PipelineConfig, upstream: Mapping[str, Artifact], ctx: pipeline.RunContext
    ) -> Artifact:
        key = pipeline.stage_key(name, config, upstream, ctx)
        return Artifact(name, key, store.location(name, key))

    def looked_up(
        name: str, config: PipelineConfig, upstream: Mapping[str, Artifact], ctx: pipeline.RunContext
    ) -> Artifact:
        found = store.get(name, pipeline.stage_key(name, config, upstream, ctx))
        if found is None:
            missing.append(keyed(name, config, upstream, ctx))  # keyed anyway: the stages after it need its key
            return missing[-1]
        return found

    if all(s in selected for s in planned):
        return
    pipeline.walk(cfg, selected, build=keyed, lookup=looked_up, ctx=pipeline.RunContext(tracking_uri), announce=False)
    if not missing:
        return
    last = planned.index(missing[-1].stage)
    wider = [s for s in planned if s in selected or planned.index(s) <= last]
    everything = wider == pipeline.plan(cfg, pipeline.STAGES)
    retry = invocation.command("run", *([] if everything else [w for s in wider for w in ("--only", s)]))
    names = ", ".join(f"{a.stage} {a.key}" for a in missing)
    raise ArtifactError(
        f"not in the artifact cache ({store.root}) for this config, and this run does not build them: {names}; "
        f"build them too: {retry}"
    )
