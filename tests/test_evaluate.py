"""Evaluate: seqeval numbers against a hand-computed example, span F1, bootstrap CI, error buckets, artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ner_pipeline.config import DataConfig, EvaluateConfig
from ner_pipeline.evaluate import (
    bootstrap_f1,
    entity_scores,
    error_buckets,
    evaluate_model,
    run_evaluate,
    span_f1,
    token_accuracy,
)
from ner_pipeline.ingest import read_evaluation_data

# Sentence 1: PER predicted one word short (boundary error), LOC predicted as ORG (type error).
# Sentence 2: exact. Sentence 3: a stray I-MISC, an entity for conlleval but not in strict IOB2.
GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"], ["O", "O"]]
PRED = [["B-PER", "O", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"], ["I-MISC", "O"]]


def test_conlleval_mode_matches_hand_computed_scores():
    # gold entities 3; predicted 4 (PER, ORG, ORG, MISC); exact matches 1
    scores = entity_scores(GOLD, PRED, "conlleval")
    assert scores["precision"] == pytest.approx(1 / 4)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))
    assert scores["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert scores["per_type"]["PER"]["f1"] == 0.0


def test_strict_mode_ignores_the_stray_i():
    scores = entity_scores(GOLD, PRED, "strict")
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)


def test_span_f1_ignores_type_and_token_accuracy_counts_words():
    # boundaries right: LOC/ORG in sentence 1 and ORG in sentence 2 → tp 2, fp 2, fn 1
    assert span_f1(GOLD, PRED) == pytest.approx(4 / 7)
    assert token_accuracy(GOLD, PRED) == pytest.approx(6 / 9)


def test_error_buckets_follow_the_documented_rules():
    assert error_buckets(GOLD, PRED) == {
        "LOC": {"boundary": 0, "type": 1, "missed": 0, "spurious": 0},
        "MISC": {"boundary": 0, "type": 0, "missed": 0, "spurious": 1},
        "PER": {"boundary": 1, "type": 0, "missed": 0, "spurious": 0},
    }
    missed = error_buckets([["B-PER", "O"]], [["O", "O"]])
    assert missed == {"PER": {"boundary": 0, "type": 0, "missed": 1, "spurious": 0}}


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    gold = GOLD * 40
    pred = [p if copy % 2 else g for copy in range(40) for g, p in zip(GOLD, PRED, strict=True)]
    point = entity_scores(gold, pred)["f1"]
    low, high = bootstrap_f1(gold, pred, samples=500, confidence=0.95, seed=1)
    assert low < point < high
    assert (low, high) == bootstrap_f1(gold, pred, samples=500, confidence=0.95, seed=1)
    assert (low, high) != bootstrap_f1(gold, pred, samples=500, confidence=0.95, seed=2)


def test_stage_writes_every_report_file_and_flat_metrics(wnut_tiny):
    store, ingest, train = wnut_tiny
    artifact = run_evaluate(EvaluateConfig(bootstrap_samples=50, worst_sentences=5), ingest, train, store)
    for name in ("report.json", "report.md", "confusion_matrix.png", "f1_by_type.png", "errors.jsonl"):
        assert (artifact.path / name).is_file(), name
    stats = artifact.stats
    for key in ("validation_f1", "test_f1", "test_f1_strict", "test_span_f1", "test_f1_ci_low", "test_token_accuracy"):
        assert 0.0 <= stats[key] <= 1.0, key
    report = json.loads((artifact.path / "report.json").read_text())
    assert report["splits"]["test"]["sentences"] == 240
    lines = (artifact.path / "errors.jsonl").read_text().splitlines()
    assert 0 < len(lines) <= 5
    assert {"tokens", "gold", "predicted"} <= set(json.loads(lines[0]))


def test_unknown_gold_types_are_reported_and_counted_as_misses(wnut_tiny, tmp_path: Path):
    _, _, train = wnut_tiny
    data = tmp_path / "new.conll"
    data.write_text("Zorblax B-alien\nlanded O\nin O\nParis B-geo-loc\n\n")
    splits = read_evaluation_data(str(data), DataConfig())
    report = evaluate_model(train.path / "model", splits, EvaluateConfig(bootstrap_samples=10), tmp_path / "out")
    test = report.splits["test"]
    assert test["unknown_types"] == ["alien"]
    assert test["conlleval"]["per_type"]["alien"]["recall"] == 0.0
    assert "alien" in (tmp_path / "out" / "report.md").read_text()


def test_cli_evaluate_scores_a_model_folder_on_one_file(wnut_tiny, tmp_path: Path):
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    _, _, train = wnut_tiny
    model = tmp_path / "model"
    shutil.copytree(train.path / "model", model)
    data = tmp_path / "test.conll"
    data.write_text("Obama B-person\nvisited O\nParis B-geo-loc\n\n")
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert "F1 (conlleval)" in result.output and (tmp_path / "r" / "report.md").is_file()
