"""Evaluate: seqeval numbers against a hand-computed example, span F1, bootstrap CI, error buckets, artifacts."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest

from ner_pipeline.config import DataConfig, EvaluateConfig
from ner_pipeline.errors import DataError
from ner_pipeline.evaluate import (
    bootstrap_f1,
    entity_scores,
    error_buckets,
    evaluate_model,
    run_evaluate,
    sentence_counts,
    span_f1,
    token_accuracy,
)
from ner_pipeline.ingest import read_evaluation_data

# Sentence 1: a PER split in two (B-PER, then a stray I-PER after O) and a LOC predicted as ORG.
# Sentence 2: exact. Sentence 3: a LOC predicted with I- only: an entity for conlleval, nothing in strict IOB2.
GOLD = [["B-PER", "I-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"], ["B-LOC", "I-LOC"]]
PRED = [["B-PER", "O", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"], ["I-LOC", "I-LOC"]]


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def test_conlleval_mode_matches_hand_computed_scores():
    # gold: PER[0:3] LOC[4:5] | ORG[0:2] | LOC[0:2]                      → 4 entities
    # pred: PER[0:1] PER[2:3] ORG[4:5] | ORG[0:2] | LOC[0:2] (stray I-)  → 5 entities; exact: ORG, LOC → 2
    scores = entity_scores(GOLD, PRED, "conlleval")
    assert (scores["precision"], scores["recall"], scores["support"]) == (pytest.approx(2 / 5), 2 / 4, 4)
    assert scores["f1"] == pytest.approx(_f1(2 / 5, 2 / 4))  # 4/9
    per_type = scores["per_type"]
    assert per_type["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # 2 pieces, neither right
    assert per_type["LOC"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert per_type["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}


def test_strict_mode_drops_entities_that_start_with_i():
    # pred in strict IOB2: PER[0:1] ORG[4:5] | ORG[0:2] | (nothing) → 3 entities; exact: ORG → 1
    scores = entity_scores(GOLD, PRED, "strict")
    assert (scores["precision"], scores["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 4))
    assert scores["f1"] == pytest.approx(_f1(1 / 3, 1 / 4))  # 2/7
    assert scores["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert scores["per_type"]["ORG"]["f1"] == pytest.approx(2 / 3)


def test_span_f1_ignores_type_and_token_accuracy_counts_words():
    # boundaries right: [4:5] (LOC read as ORG), ORG[0:2], LOC[0:2] → tp 3, fp 2 (the PER pieces), fn 1 (PER[0:3])
    assert span_f1(GOLD, PRED) == pytest.approx(_f1(3 / 5, 3 / 4))
    assert span_f1([["B-PER", "I-PER"]], [["B-ORG", "I-ORG"]]) == 1.0
    assert entity_scores([["B-PER", "I-PER"]], [["B-ORG", "I-ORG"]])["f1"] == 0.0
    assert token_accuracy(GOLD, PRED) == pytest.approx(7 / 10)


def test_error_buckets_on_the_hand_computed_example():
    assert error_buckets(GOLD, PRED) == {
        "LOC": {"boundary": 0, "type": 1, "missed": 0, "spurious": 0},
        "PER": {"boundary": 1, "type": 0, "missed": 0, "spurious": 0},
    }


def test_error_buckets_follow_the_documented_rules():
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "B-ORG", "O", "B-MISC", "O", "B-PER", "O", "B-LOC"],
    ]
    pred = [
        # PER one word short: boundary | LOC exact | spurious ORG | ORG missed | MISC → PER, wider: type (both wrong)
        # | one LOC across the gold PER and LOC: wrong type for PER, wrong boundary for LOC
        ["B-PER", "O", "O", "B-LOC", "B-ORG", "O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-LOC"],
    ]
    assert error_buckets(gold, pred) == {
        "LOC": {"boundary": 1, "type": 0, "missed": 0, "spurious": 0},
        "MISC": {"boundary": 0, "type": 1, "missed": 0, "spurious": 0},
        "ORG": {"boundary": 0, "type": 0, "missed": 1, "spurious": 1},
        "PER": {"boundary": 1, "type": 1, "missed": 0, "spurious": 0},
    }
    assert error_buckets(gold, gold) == {}


def test_per_sentence_counts_add_up_to_seqeval_on_messy_tags():
    """The bootstrap resamples these counts, so they must reproduce seqeval's conlleval numbers exactly."""
    rng = random.Random(7)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in g] for g in gold]
    tp, fp, fn = sentence_counts(gold, pred).sum(axis=0)
    scores = entity_scores(gold, pred, "conlleval")
    assert scores["precision"] == pytest.approx(tp / (tp + fp))
    assert scores["recall"] == pytest.approx(tp / (tp + fn))


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    gold = GOLD * 40
    pred = [p if copy % 2 else g for copy in range(40) for g, p in zip(GOLD, PRED, strict=True)]
    point = entity_scores(gold, pred)["f1"]
    low, high = bootstrap_f1(gold, pred, samples=500, confidence=0.95, seed=1)
    assert low < point < high
    assert (low, high) == bootstrap_f1(gold, pred, samples=500, confidence=0.95, seed=1)
    assert (low, high) != bootstrap_f1(gold, pred, samples=500, confidence=0.95, seed=2)
    narrow = bootstrap_f1(gold, pred, samples=500, confidence=0.5, seed=1)
    assert low < narrow[0] <= narrow[1] < high
    assert bootstrap_f1(gold, pred, samples=0, confidence=0.95, seed=1) == (pytest.approx(point),) * 2


def test_stage_writes_every_report_file_and_flat_metrics(wnut_tiny):
    store, ingest, train = wnut_tiny
    cfg = EvaluateConfig(bootstrap_samples=50, worst_sentences=5)
    artifact = run_evaluate(cfg, ingest, train, store)
    for name in ("report.json", "report.md", "confusion_matrix.png", "f1_by_type.png", "errors.jsonl"):
        assert (artifact.path / name).stat().st_size > 0, name
    report = json.loads((artifact.path / "report.json").read_text())
    test = report["splits"]["test"]
    assert set(report["splits"]) == {"validation", "test"} and test["sentences"] == 240
    assert {"conlleval", "strict", "token_accuracy", "span_f1", "f1_ci", "errors"} <= set(test)

    stats = artifact.stats
    validation = report["splits"]["validation"]
    assert stats["validation_f1"] == pytest.approx(validation["conlleval"]["f1"], abs=1e-6)
    assert stats["validation_f1_strict"] == pytest.approx(validation["strict"]["f1"], abs=1e-6)
    assert stats["test_f1"] == pytest.approx(test["conlleval"]["f1"], abs=1e-6)
    assert stats["test_f1_strict"] == pytest.approx(test["strict"]["f1"], abs=1e-6)
    assert stats["test_precision"] == pytest.approx(test["conlleval"]["precision"], abs=1e-6)
    for key in ("test_recall", "test_token_accuracy", "test_span_f1", "test_f1_ci_low", "test_f1_ci_high"):
        assert 0.0 <= stats[key] <= 1.0, key
    assert stats["test_f1_ci_low"] <= stats["test_f1_ci_high"]
    assert {f"test_f1_{t}" for t in test["conlleval"]["per_type"]} <= set(stats)
    assert "| type | precision | recall | F1 | support |" in (artifact.path / "report.md").read_text()

    rows = [json.loads(line) for line in (artifact.path / "errors.jsonl").read_text().splitlines()]
    assert 0 < len(rows) <= 5 and {"tokens", "gold", "predicted"} <= set(rows[0])
    assert [r["wrong_spans"] for r in rows] == sorted((r["wrong_spans"] for r in rows), reverse=True)
    assert run_evaluate(cfg, ingest, train, store).cached


def test_unknown_gold_types_are_reported_and_counted_as_misses(wnut_tiny, tmp_path: Path, caplog):
    _, _, train = wnut_tiny
    data = tmp_path / "new.conll"
    data.write_text("Zorblax B-alien\nlanded O\nin O\nParis B-geo-loc\n\n")
    splits = read_evaluation_data(str(data), DataConfig())
    with caplog.at_level(logging.WARNING, logger="ner_pipeline.evaluate"):
        report = evaluate_model(train.path / "model", splits, EvaluateConfig(bootstrap_samples=10), tmp_path / "out")
    test = report.splits["test"]
    assert test["unknown_types"] == ["alien"]
    assert test["conlleval"]["per_type"]["alien"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert test["conlleval"]["recall"] <= 0.5  # one of two gold entities cannot be found
    assert "alien" in (tmp_path / "out" / "report.md").read_text()
    assert any("alien" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_evaluate_model_takes_token_tag_pairs_and_names_bad_ones(wnut_tiny, tmp_path: Path):
    _, _, train = wnut_tiny
    pairs = [(["Obama", "visited", "Paris"], ["B-person", "O", "B-geo-loc"]), (["hello"], ["O"])]
    report = evaluate_model(train.path / "model", {"test": pairs}, EvaluateConfig(bootstrap_samples=0), tmp_path)
    assert report.splits["test"]["sentences"] == 2 and report.splits["test"]["conlleval"]["support"] == 2
    assert (tmp_path / "errors.jsonl").is_file()
    with pytest.raises(DataError, match="test sentence 1: 1 tokens but 2 tags"):
        evaluate_model(train.path / "model", {"test": [pairs[0], (["x"], ["O", "O"])]}, EvaluateConfig(), tmp_path)
    with pytest.raises(DataError, match="tag 'PER' is not O"):
        evaluate_model(train.path / "model", {"test": [(["x"], ["PER"])]}, EvaluateConfig(), tmp_path)
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate_model(train.path / "model", {"test": []}, EvaluateConfig(), tmp_path)


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
