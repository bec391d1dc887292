"""Training checkpoints: which ones a killed run left complete, the one to resume from, and what it had done; and
whether the weights a finished run saved are all there.

The train stage keeps checkpoints in a persistent work folder of the artifact store, so a run that dies resumes from
the newest complete checkpoint when the stage runs again with the same inputs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ner_pipeline.errors import ArtifactError

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # what save_pretrained writes instead when it shards the weights
# Written last by Trainer._save_checkpoint: a checkpoint folder without it was cut short by a kill.
TRAINER_STATE = "trainer_state.json"


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The checkpoints in `folder` that were written to the end, as (step, path), oldest first."""
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = path.name.rsplit("-", 1)[-1]
        if step.isdigit() and (path / TRAINER_STATE).is_file():
            found.append((int(step), path))
    return sorted(found)


def last_checkpoint(folder: Path) -> tuple[str | None, int]:
    """The newest complete checkpoint in `folder` and its step (None, 0 when there is none)."""
    found = complete_checkpoints(folder)
    return (str(found[-1][1]), found[-1][0]) if found else (None, 0)


def remove_incomplete_checkpoints(folder: Path) -> None:
    """Delete checkpoint folders a kill cut short; training rewrites them when it gets there again."""
    complete = {path for _, path in complete_checkpoints(folder)}
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if path not in complete:
            logger.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)


def tokens_seen(checkpoint: str | Path) -> int:
    """The non-padding input tokens the run had trained on when it wrote `checkpoint`."""
    saved = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))
    return int(saved.get("num_input_tokens_seen", 0))


def check_saved_weights(model_dir: Path) -> None:
    """Check that `save_pretrained` left complete safetensors weights in `model_dir` (one file, or every shard).

    Reading each file's header catches a missing, empty or truncated file (safetensors checks that the header's
    tensors fit in the file) without loading the weights.

    Raises:
        ArtifactError: names the file and what is wrong with it.
    """
    from safetensors import SafetensorError, safe_open

    index = model_dir / WEIGHTS_INDEX
    names = (
        sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        if index.is_file()
        else [WEIGHTS]
    )
    for name in names:
        path = model_dir / name
        problem = "missing" if not path.is_file() else "empty" if path.stat().st_size == 0 else None
        if problem is None:
            try:
                with safe_open(str(path), framework="pt") as weights:
                    problem = None if list(weights.keys()) else "without tensors"
            except SafetensorError as exc:
                problem = f"unreadable ({exc})"
        if problem is not None:
            raise ArtifactError(f"{path}: {problem} after saving the model; the train artifact was not written")
