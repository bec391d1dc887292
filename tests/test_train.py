"""Train: a real small fine-tuning run, interrupt-and-resume, caching, and data-parallel training under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PACKAGED_MODEL, REPO_ROOT, free_port, write_tiny_config

from ner_pipeline import pipeline
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import load_config
from ner_pipeline.evaluate import entity_scores
from ner_pipeline.ingest import load_splits, read_labels
from ner_pipeline.predict import Predictor
from ner_pipeline.train import read_history, train_key

pytestmark = pytest.mark.slow


def stages_up_to(config: Path, last: str, *overrides: str):
    cfg = load_config(config, list(overrides))
    store = ArtifactStore(cfg.artifacts_root)
    return cfg, store, pipeline.run_pipeline(cfg, store, stages=pipeline.STAGES[: pipeline.STAGES.index(last) + 1])


def test_small_wnut_run_learns_well_beyond_an_untrained_model(tmp_path: Path):
    config = write_tiny_config(
        tmp_path,
        Path(PACKAGED_MODEL),
        data={"max_sentences": None},
        train={"epochs": 2, "batch_size": 16, "learning_rate": 1e-4},
    )
    _, _, done = stages_up_to(config, "train")
    history = read_history(done["train"])
    assert len(history) == 2
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]

    # What an untrained head on the same encoder scores: the floor the trained model must clear by far.
    labels = read_labels(done["ingest"])
    validation = load_splits(done["ingest"])["validation"]
    gold = [[labels[i] for i in row] for row in validation["ner_tags"]]
    trained = Predictor.load(done["train"].path / "model")
    trained_f1 = entity_scores(gold, trained.predict_words(validation["tokens"]))["f1"]
    assert trained_f1 == pytest.approx(done["train"].stats["best_eval_f1"], abs=1e-6)
    import torch

    torch.manual_seed(0)
    trained.backend.model.classifier.reset_parameters()  # same encoder, a fresh random head
    untrained_f1 = entity_scores(gold, trained.predict_words(validation["tokens"]))["f1"]
    assert trained_f1 > max(0.1, 5 * untrained_f1)


RUN_TRAIN = """
import sys
from ner_pipeline.config import load_config
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline import pipeline
cfg = load_config(sys.argv[1])
pipeline.run_pipeline(cfg, ArtifactStore(cfg.artifacts_root), stages=["ingest", "tokenize", "train"])
"""


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path: Path, tiny_base_dir: Path):
    config = write_tiny_config(
        tmp_path, tiny_base_dir, data={"max_sentences": 200}, train={"save_steps": 5, "max_steps": 60, "batch_size": 4}
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_TRAIN, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    work = tmp_path / "artifacts" / "train"
    deadline = time.monotonic() + 240
    checkpoint = None
    while time.monotonic() < deadline and checkpoint is None:
        found = sorted(work.glob(".work-*/checkpoints/checkpoint-*/trainer_state.json"))
        checkpoint = found[0].parent if found else None
        if proc.poll() is not None:
            pytest.fail(f"training ended before a checkpoint: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    assert checkpoint is not None, "no checkpoint within 240 s"
    time.sleep(0.5)  # let the checkpoint's files settle; the kill may still land mid-way through a later one
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ArtifactStore(tmp_path / "artifacts")
    assert [a.stage for a in store.list()] == ["ingest", "tokenize"], "a killed run must not leave a train artifact"

    _, _, done = stages_up_to(config, "train")
    stats = done["train"].stats
    assert stats["resumed_from_step"] >= 5 and stats["resumed_from_step"] % 5 == 0
    assert stats["global_step"] == 60
    assert (done["train"].path / "model" / "model.safetensors").is_file()
    assert not list(work.glob(".work-*")), "the work folder is removed once the artifact is complete"


def test_unchanged_training_is_a_cache_hit_and_a_new_learning_rate_is_not(tmp_path: Path, tiny_base_dir: Path):
    config = write_tiny_config(tmp_path, tiny_base_dir, train={"max_steps": 3})
    _, _, first = stages_up_to(config, "train")
    _, _, again = stages_up_to(config, "train")
    assert again["train"].cached and again["train"].key == first["train"].key
    other = load_config(config, ["train.learning_rate=3e-5"])
    assert train_key(other.model, other.train, first["tokenize"].key) != first["train"].key
    faster = load_config(config, ["train.num_threads=1"])
    assert train_key(faster.model, faster.train, first["tokenize"].key) == first["train"].key


def test_training_runs_data_parallel_under_torchrun(tmp_path: Path, tiny_base_dir: Path):
    config = write_tiny_config(
        tmp_path, tiny_base_dir, train={"max_steps": 6, "batch_size": 4}, registry={"enabled": False}
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "ner_pipeline.cli",
            "stage",
            "train",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [manifest] = (tmp_path / "artifacts" / "train").glob("*/manifest.json")
    stats = json.loads(manifest.read_text())["stats"]
    assert stats["world_size"] == 2
    assert stats["global_step"] == 6
