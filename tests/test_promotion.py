"""The promotion gate (paired bootstrap), serialised promotions, crash repair, first-version threshold and rollback,
against real MLflow SQLite stores and real processes."""

from __future__ import annotations

import itertools
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ner_pipeline import registry
from ner_pipeline.config import RegistryConfig
from ner_pipeline.errors import RegistryError
from ner_pipeline.predictions import (
    PredictedSentence,
    read_predictions,
    sentences_fingerprint,
    write_predictions,
)
from ner_pipeline.registry import gate

NAME = "ner-gate"
CFG = RegistryConfig(model_name=NAME, bootstrap_samples=1000)


# --- synthetic test sets: real tags, predictions that keep a known share of the gold entities ----------------------


def gold_sentences(n: int = 300) -> tuple[list[list[str]], list[list[str]]]:
    """n sentences, each with one PER and one LOC entity."""
    tokens = [[f"w{i}", "said", "in", f"c{i}", "."] for i in range(n)]
    gold = [["B-PER", "O", "O", "B-LOC", "O"] for _ in range(n)]
    return tokens, gold


def predicted(gold: list[list[str]], keep: dict[str, float], offset: int = 0) -> list[list[str]]:
    """Gold with each type's entities kept in a `keep[type]` share of sentences (the rest predicted as O)."""
    out = []
    for i, tags in enumerate(gold):
        row = []
        for tag in tags:
            kind = tag[2:]
            kept = tag == "O" or ((i + offset) % 100) < keep.get(kind, 1.0) * 100
            row.append(tag if kept else "O")
        out.append(row)
    return out


def rows_for(keep: dict[str, float], n: int = 300, offset: int = 0) -> list[PredictedSentence]:
    tokens, gold = gold_sentences(n)
    pred = predicted(gold, keep, offset)
    return [PredictedSentence(t, g, p, i // 10) for i, (t, g, p) in enumerate(zip(tokens, gold, pred, strict=True))]


def add_version(
    uri: str, rows: list[PredictedSentence] | None, folder: Path, model_dir: Path | None = None, name: str = NAME
) -> str:
    """A model version whose run holds these test predictions, logged as the register stage logs them.

    With `model_dir` it is a real registered pyfunc model (the gate can download and run it); without, a cheap
    version (a source folder, no logged model), enough for gates that read stored predictions only.
    """
    client = registry.client_for(uri)
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    experiment = client.get_experiment_by_name("gate") or client.get_experiment(client.create_experiment("gate"))
    if model_dir is not None:
        cfg = RegistryConfig(model_name=name)
        record = registry.log_and_register(cfg, model_dir, uri, None, {}, description="gate test")
        version, run_id = record["version"], record["run_id"]
    else:
        run_id = client.create_run(experiment.experiment_id).info.run_id
        version = str(client.create_model_version(name, source=str(folder), run_id=run_id).version)
    if rows is not None:
        path = folder / f"predictions-{run_id}-{version}.jsonl"
        columns = [r.tokens for r in rows], [r.gold for r in rows], [r.pred for r in rows]
        write_predictions(path, *columns, [r.document_id for r in rows])
        for key, value in gate.log_predictions(client, run_id, path, f"eval-{version}").items():
            client.set_model_version_tag(name, version, key, value)
    return version


def aliases(uri: str, name: str = NAME) -> dict[str, str]:
    model = registry.client_for(uri).get_registered_model(name)
    return {alias: str(version) for alias, version in model.aliases.items()}


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


# --- statistics --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["conlleval", "strict"])
def test_each_resample_scores_exactly_what_seqeval_scores_on_the_resampled_sentences(mode: str):
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    # Messy tags on purpose: stray I- starts, type changes inside a span, entities at sentence ends.
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG", "O"], ["B-LOC", "I-PER", "O", "B-MISC"], ["O", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "B-PER"], ["B-LOC", "I-LOC", "O", "I-MISC"], ["B-X", "O"]]
    counts = gate.sentence_counts(gold, pred, mode)
    kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    rng = np.random.default_rng(3)
    for _ in range(20):
        picks = rng.integers(0, len(gold), size=len(gold))
        g, p = [gold[i] for i in picks], [pred[i] for i in picks]
        totals = counts[picks].sum(axis=0)
        assert gate.score(totals, "f1") == pytest.approx(f1_score(g, p, zero_division=0, **kwargs))
        assert gate.score(totals, "precision") == pytest.approx(precision_score(g, p, zero_division=0, **kwargs))
        assert gate.score(totals, "recall") == pytest.approx(recall_score(g, p, zero_division=0, **kwargs))


def test_paired_bootstrap_sees_no_gain_in_equal_predictions_noise_in_a_tiny_one_and_a_clear_one():
    _, gold = gold_sentences(300)
    base = predicted(gold, {"PER": 0.6, "LOC": 0.6})
    same = gate.paired_bootstrap(gold, base, base)
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)

    one_more = [row[:] for row in base]
    miss = next(i for i, row in enumerate(base) if row[0] == "O")
    one_more[miss][0] = "B-PER"  # one more entity found out of 600
    tiny = gate.paired_bootstrap(gold, one_more, base)
    assert 0 < tiny.delta < 0.002 and tiny.low <= 0 < tiny.high

    better = gate.paired_bootstrap(gold, predicted(gold, {"PER": 0.8, "LOC": 0.8}), base, seed=1)
    assert better.low > 0.05 and better.low < better.delta < better.high
    assert better.candidate == pytest.approx(2 * 0.8 / 1.8) and better.production == pytest.approx(2 * 0.6 / 1.6)
    assert gate.paired_bootstrap(gold, predicted(gold, {"PER": 0.8}), base, seed=1) != better  # seeded, not fixed
    worse = gate.paired_bootstrap(gold, base, predicted(gold, {"PER": 0.8, "LOC": 0.8}), seed=1)
    assert worse.high < 0 and worse.delta == pytest.approx(-better.delta)


def test_predictions_file_round_trips_and_its_fingerprint_is_the_ingest_fingerprint(tmp_path: Path):
    from ner_pipeline.ingest import Sentence, fingerprint

    rows = rows_for({"PER": 0.5}, n=20)
    path = tmp_path / "predictions.jsonl"
    sha = write_predictions(
        path, *zip(*[(r.tokens, r.gold, r.pred) for r in rows], strict=True), [r.document_id for r in rows]
    )
    assert read_predictions(path) == rows
    assert sentences_fingerprint(rows) == fingerprint(Sentence(r.tokens, r.gold) for r in rows)
    tags = gate.prediction_tags(path, "evaluation/k/predictions.jsonl")
    assert tags == {
        "predictions.path": "evaluation/k/predictions.jsonl",
        "predictions.test_fingerprint": sentences_fingerprint(rows),
        "predictions.sha256": sha,
    }


def test_direction_lower_is_refused_for_a_metric_that_is_better_when_higher():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="test_f1 is better when higher"):
        RegistryConfig(metric_direction="lower")
    with pytest.raises(ValidationError):
        RegistryConfig(metric="test_loss")


# --- the gate against a real store ---------------------------------------------------------------------------------


def test_gate_refuses_noise_and_type_drops_and_promotes_a_clear_gain_recording_the_interval(uri: str, tmp_path: Path):
    v1 = add_version(uri, rows_for({"PER": 0.8, "LOC": 0.6}), tmp_path)
    first = registry.promote(uri, CFG, NAME, v1)
    assert first.accepted and "no production version yet" in first.reason

    noise = add_version(uri, rows_for({"PER": 0.81, "LOC": 0.6}), tmp_path)  # +3 entities of 600
    refused = registry.promote(uri, CFG, NAME, noise)
    assert refused.action == "refuse" and "lower bound not above min_delta 0.0" in refused.reason
    assert refused.numbers["delta"] > 0 and refused.numbers["delta_low"] <= 0 < refused.numbers["delta_high"]
    assert refused.numbers["production_predictions"] == "stored" and refused.numbers["sentences"] == 300

    per_drop = add_version(uri, rows_for({"PER": 0.7, "LOC": 0.95}), tmp_path)
    dropped = registry.promote(uri, CFG, NAME, per_drop)
    assert dropped.action == "refuse" and dropped.reason.startswith("PER F1 falls by 6.5 points (limit 2.0)")
    assert dropped.numbers["delta_low"] > 0  # better overall, and still refused

    better = add_version(uri, rows_for({"PER": 0.9, "LOC": 0.75}), tmp_path)
    promoted = registry.promote(uri, CFG, NAME, better)
    assert promoted.action == "promote" and "lower bound above min_delta" in promoted.reason
    assert aliases(uri) == {"production": better, "previous-production": v1}

    tags = registry.client_for(uri).get_model_version(NAME, better).tags
    assert tags["promotion.last_decision"] == "promote" and tags["promotion.compared_to"] == v1
    assert float(tags["promotion.delta"]) == promoted.numbers["delta"]
    assert tags["promotion.delta_interval"] == promoted.interval and promoted.interval.endswith("95%")
    assert registry.client_for(uri).get_model_version(NAME, noise).tags["promotion.last_decision"] == "refuse"
    history = registry.history(uri, NAME)
    assert [(e["action"], e["to_version"], e["state"]) for e in history] == [
        ("promote", v1, "done"),
        ("refuse", noise, "done"),
        ("refuse", per_drop, "done"),
        ("promote", better, "done"),
    ]
    assert history[0]["interval"] == "-" and history[1]["interval"] == refused.interval
    assert refused.interval in history[1]["reason"]  # `models history` prints the reason column as it is


def test_a_challenger_without_stored_predictions_is_refused_with_the_way_out(uri: str, tmp_path: Path):
    registry.promote(uri, CFG, NAME, add_version(uri, rows_for({"PER": 0.8}), tmp_path))
    bare = add_version(uri, None, tmp_path)
    decision = registry.promote(uri, CFG, NAME, bare)
    assert decision.action == "refuse" and "has no stored test predictions" in decision.reason
    assert "--force --reason" in decision.reason
    forced = registry.promote(uri, CFG, NAME, bare, force=True, reason="hotfix")
    assert forced.accepted and forced.forced and aliases(uri)["production"] == bare


@pytest.mark.parametrize(
    ("keep", "threshold", "promoted"), [(0.0, 0.05, False), (0.02, 0.05, False), (0.1, 0.05, True), (0.0, 0.0, True)]
)
def test_a_first_version_becomes_production_only_from_min_first_metric_on(
    uri: str, tmp_path: Path, keep: float, threshold: float, promoted: bool
):
    # keep 0.02: F1 0.039 (recall 2 %, precision 1), below the default 0.05; keep 0.1: F1 0.18; a threshold of 0
    # turns the check off.
    version = add_version(uri, rows_for({"PER": keep, "LOC": keep}), tmp_path)
    decision = registry.promote(uri, CFG.model_copy(update={"min_first_metric": threshold}), NAME, version)
    assert decision.accepted is promoted
    assert ("production" in aliases(uri)) is promoted
    if not promoted:
        assert "is below registry.min_first_metric 0.05" in decision.reason


def test_promoting_the_production_version_again_is_a_no_op(uri: str, tmp_path: Path):
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    version = add_version(uri, rows_for({"PER": 0.8}), tmp_path)
    registry.promote(uri, CFG, NAME, version)
    again = registry.promote(uri, CFG, NAME, version)
    assert again.accepted and again.action == "unchanged" and again.reason == "already production"
    common = ["--set", f"tracking.tracking_uri={uri}"]
    cli = CliRunner().invoke(app, ["promote", "--model", NAME, "--version", version, *common])
    assert cli.exit_code == 0 and cli.stdout.startswith("UNCHANGED"), cli.output
    assert [e["action"] for e in registry.history(uri, NAME)] == ["promote"]  # no refusal recorded


def test_rollback_needs_a_reason_happens_once_and_again_only_after_a_promotion(uri: str, tmp_path: Path):
    v1 = add_version(uri, rows_for({"PER": 0.6}), tmp_path)
    v2 = add_version(uri, rows_for({"PER": 0.8}), tmp_path)
    v3 = add_version(uri, rows_for({"PER": 0.95}), tmp_path)
    registry.promote(uri, CFG, NAME, v1)
    registry.promote(uri, CFG, NAME, v2)
    for empty in (None, "", "  "):
        with pytest.raises(RegistryError, match="rollback needs --reason"):
            registry.rollback(uri, NAME, empty)

    back = registry.rollback(uri, NAME, "v2 tags every hashtag as ORG")
    assert back.accepted and (back.from_version, back.to_version) == (v2, v1)
    assert aliases(uri) == {"production": v1}
    with pytest.raises(RegistryError, match=f"production v{v1} is already a rollback from v{v2}"):
        registry.rollback(uri, NAME, "again")
    assert aliases(uri) == {"production": v1}  # the version rolled back from stays out
    last = registry.history(uri, NAME)[-1]
    assert (last["action"], last["reason"], last["actor"]) == ("rollback", "v2 tags every hashtag as ORG", back.actor)
    assert registry.client_for(uri).get_model_version(NAME, v2).tags["promotion.last_decision"] == "rolled back"

    registry.promote(uri, CFG, NAME, v3)
    assert aliases(uri) == {"production": v3, "previous-production": v1}
    assert registry.rollback(uri, NAME, "v3 is slow").to_version == v1


def test_cli_rollback_requires_a_reason_and_says_why_it_refuses_in_one_line(uri: str, tmp_path: Path):
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    for keep in (0.6, 0.8):
        registry.promote(uri, CFG, NAME, add_version(uri, rows_for({"PER": keep}), tmp_path))
    common = ["--model", NAME, "--set", f"tracking.tracking_uri={uri}"]
    runner = CliRunner()
    helped = runner.invoke(app, ["rollback", "--help"])
    assert helped.exit_code == 0 and "--reason" in helped.stdout and "required" in helped.stdout
    missing = runner.invoke(app, ["rollback", *common])  # Typer refuses it before anything is read
    assert missing.exit_code == 2 and "Missing option '--reason'" in missing.output
    assert aliases(uri) == {"production": "2", "previous-production": "1"}
    blank = runner.invoke(app, ["rollback", *common, "--reason", " "])
    assert blank.exit_code == 1 and "rollback needs --reason" in blank.output
    assert "Traceback" not in blank.output
    done = runner.invoke(app, ["rollback", *common, "--reason", "bad outputs"])
    assert done.exit_code == 0 and done.stdout.startswith(f"ROLLBACK {NAME} v2 -> v1: bad outputs")
    twice = runner.invoke(app, ["rollback", *common, "--reason", "again"])
    assert twice.exit_code == 1 and "already a rollback from v2" in twice.output
    history = runner.invoke(app, ["models", "history", NAME, "--set", f"tracking.tracking_uri={uri}"])
    assert history.exit_code == 0 and "bad outputs" in history.output


def test_cli_history_shows_the_gates_interval_in_a_column_of_its_own(uri: str, tmp_path: Path):
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    registry.promote(uri, CFG, NAME, add_version(uri, rows_for({"PER": 0.6}), tmp_path))
    gated = registry.promote(uri, CFG, NAME, add_version(uri, rows_for({"PER": 0.9}), tmp_path))
    assert gated.action == "promote" and gated.interval
    shown = CliRunner().invoke(app, ["models", "history", NAME, "--set", f"tracking.tracking_uri={uri}"])
    assert shown.exit_code == 0, shown.output
    header, _, first, second = shown.stdout.splitlines()[:4]
    start = header.index("interval")
    end = header.index("reason")
    assert first[start:end].strip() == "-"  # the first version had no production to be compared with
    assert second[start:end].strip() == gated.interval


# --- concurrency and crashes ---------------------------------------------------------------------------------------


def _promote_at_barrier(uri: str, version: str, barrier, results) -> None:  # runs in a spawned process
    import time

    from mlflow import MlflowClient

    # Slow writes widen the window in which two unserialised promotions would interleave their alias moves.
    def slowly(real):
        def call(*args, **kwargs):
            time.sleep(0.5)
            return real(*args, **kwargs)

        return call

    for method in ("set_registered_model_alias", "set_registered_model_tag"):
        setattr(MlflowClient, method, slowly(getattr(MlflowClient, method)))
    barrier.wait(timeout=120)
    decision = registry.promote(uri, CFG, NAME, version)
    results.put((version, decision.action, decision.from_version))


@pytest.mark.slow
def test_two_promotions_at_once_are_serialised_into_one_chain(uri: str, tmp_path: Path):
    v1 = add_version(uri, rows_for({"PER": 0.5, "LOC": 0.5}), tmp_path)
    registry.promote(uri, CFG, NAME, v1)
    v2 = add_version(uri, rows_for({"PER": 0.7, "LOC": 0.7}), tmp_path)
    v3 = add_version(uri, rows_for({"PER": 0.9, "LOC": 0.9}), tmp_path)
    context = multiprocessing.get_context("spawn")  # forking a process with MLflow's threads is not safe
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_promote_at_barrier, args=(uri, v, barrier, results)) for v in (v2, v3)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=300) for _ in workers)
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0

    history = registry.history(uri, NAME)
    assert [e["state"] for e in history] == ["done"] * 3
    assert sorted(e["to_version"] for e in history[1:]) == [v2, v3]  # both recorded
    promotions = [e for e in history if e["action"] == "promote"]
    for before, after in itertools.pairwise(promotions):
        assert after["from_version"] == before["to_version"]  # a chain: nobody promoted "from v1" twice
    assert aliases(uri) == {"production": v3, "previous-production": promotions[-1]["from_version"]}
    # Either order is consistent: v2 then v3 (two promotions), or v3 first and v2 refused against v3.
    assert outcomes in (
        [(v2, "promote", v1), (v3, "promote", v2)],
        [(v2, "refuse", v3), (v3, "promote", v1)],
    )
    assert not registry.client_for(uri).search_registered_models(f"name = '{NAME}.promotion-lock'")


CRASH = """
import os, sys
from mlflow import MlflowClient

def crash(real):
    def call(self, name, alias, *args):
        if alias == sys.argv[3]:
            os._exit(3)  # killed between the two alias moves: no cleanup, the lock stays behind
        return real(self, name, alias, *args)
    return call

MlflowClient.set_registered_model_alias = crash(MlflowClient.set_registered_model_alias)
MlflowClient.delete_registered_model_alias = crash(MlflowClient.delete_registered_model_alias)
from ner_pipeline import registry
from ner_pipeline.config import RegistryConfig

uri, version = sys.argv[1], sys.argv[2]
if version == "rollback":
    registry.rollback(uri, "ner-gate", "crash test")
else:
    registry.promote(uri, RegistryConfig(model_name="ner-gate"), "ner-gate", version)
"""


def crash_between_moves(uri: str, what: str, second_alias: str) -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), uri, what, second_alias], timeout=300)
    assert done.returncode == 3


@pytest.mark.slow
def test_a_promotion_killed_between_its_alias_moves_is_undone_by_the_next_rollback(uri: str, tmp_path: Path):
    v1, v2, v3 = (add_version(uri, rows_for({"PER": k}), tmp_path) for k in (0.5, 0.7, 0.9))
    registry.promote(uri, CFG, NAME, v1)
    registry.promote(uri, CFG, NAME, v2)
    crash_between_moves(uri, v3, "production")
    assert aliases(uri) == {"production": v2, "previous-production": v2}  # first move done; production never unset

    back = registry.rollback(uri, NAME, "after the crash")  # takes over the dead process's lock, repairs, rolls back
    assert (back.from_version, back.to_version) == (v2, v1)  # v1 was restored as previous-production
    assert aliases(uri) == {"production": v1}
    history = registry.history(uri, NAME)
    interrupted = history[-2]
    assert (interrupted["action"], interrupted["to_version"], interrupted["state"]) == ("promote", v3, "interrupted")
    assert "previous-production restored" in interrupted["reason"]


@pytest.mark.slow
def test_a_rollback_killed_between_its_alias_moves_is_finished_by_the_next_promotion(uri: str, tmp_path: Path):
    v1, v2, v3 = (add_version(uri, rows_for({"PER": k}), tmp_path) for k in (0.5, 0.7, 0.9))
    registry.promote(uri, CFG, NAME, v1)
    registry.promote(uri, CFG, NAME, v2)
    crash_between_moves(uri, "rollback", "previous-production")
    assert aliases(uri) == {"production": v1, "previous-production": v1}

    promoted = registry.promote(uri, CFG, NAME, v3)
    assert promoted.action == "promote" and promoted.from_version == v1
    assert aliases(uri) == {"production": v3, "previous-production": v1}
    rolled = [e for e in registry.history(uri, NAME) if e["action"] == "rollback"]
    assert len(rolled) == 1 and rolled[0]["state"] == "done" and "finished by the next command" in rolled[0]["reason"]


def test_a_half_move_without_a_journal_entry_is_repaired_by_the_next_promotion(uri: str, tmp_path: Path):
    v1, v2 = (add_version(uri, rows_for({"PER": k}), tmp_path) for k in (0.5, 0.9))
    registry.promote(uri, CFG, NAME, v1)
    client = registry.client_for(uri)
    client.set_registered_model_alias(NAME, "previous-production", v1)  # only the first move, by another writer
    decision = registry.promote(uri, CFG, NAME, v2)
    assert decision.action == "promote" and decision.from_version == v1
    assert aliases(uri) == {"production": v2, "previous-production": v1}
    assert [e["action"] for e in registry.history(uri, NAME)] == ["promote", "repair", "promote"]


# --- real models, through the real stages ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The packaged MiniLM fine-tuned on 800 WNUT-16 tweets for 5 steps and for 3 epochs, each evaluated on WNUT's
    240 test tweets by the evaluate stage (which stores the test predictions).

    3 epochs of 800 tweets is what it takes to learn WNUT at all (test_train: F1 0.22-0.29); one epoch still tags
    everything O.
    """
    from conftest import PACKAGED_MODEL

    from ner_pipeline.artifacts import ArtifactStore
    from ner_pipeline.config import DataConfig, EvaluateConfig, ModelConfig, TokenizeConfig, TrainConfig
    from ner_pipeline.evaluate import run_evaluate
    from ner_pipeline.ingest import run_ingest
    from ner_pipeline.tokenize import run_tokenize
    from ner_pipeline.train import run_train

    store = ArtifactStore(tmp_path_factory.mktemp("gate-models") / "artifacts")
    model = ModelConfig(name_or_path=PACKAGED_MODEL)
    ingest = run_ingest(DataConfig(source="wnut16", path=None), store)
    tokenized = run_tokenize(model, TokenizeConfig(max_length=128, stride=16), ingest, store)
    stages = {}
    for label, steps in (("short", 5), ("long", -1)):
        cfg = TrainConfig(
            epochs=3,
            max_steps=steps,
            batch_size=16,
            learning_rate=2e-4,
            max_train_sentences=800,
            early_stopping_patience=None,
        )
        train = run_train(model, cfg, tokenized, store)
        evaluation = run_evaluate(EvaluateConfig(bootstrap_samples=0), ingest, train, store)
        stages[label] = {"ingest": ingest, "train": train, "evaluate": evaluation}
    return store, stages


@pytest.mark.slow
def test_gate_refuses_the_same_weights_and_promotes_a_model_trained_longer(trained, tmp_path: Path):
    from ner_pipeline.predictions import PREDICTIONS_FILE
    from ner_pipeline.registry.register import run_register

    store, stages = trained
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    short, long = stages["short"], stages["long"]
    # Production registered before predictions were stored: the gate must run it on the challenger's test set.
    v1 = add_version(uri, None, tmp_path, short["train"].path / "model")
    assert registry.promote(uri, CFG, NAME, v1, force=True, reason="baseline").accepted

    # The same weights through the register stage, which logs the evaluate stage's predictions with the version.
    v2 = run_register(CFG, short, store, uri, None).stats["version"]
    tags = registry.client_for(uri).get_model_version(NAME, v2).tags
    assert tags["predictions.path"] == f"evaluation/{short['evaluate'].key}/{PREDICTIONS_FILE}"
    assert tags["predictions.test_fingerprint"] == tags["data.test_fingerprint"]  # the ingest's test fingerprint
    same = registry.promote(uri, CFG, NAME, v2)
    assert same.action == "refuse" and same.numbers["production_predictions"] == "run at gate time"
    # Run at gate time, production predicts exactly what the evaluate stage stored for the same weights.
    assert (same.numbers["delta"], same.numbers["delta_low"], same.numbers["delta_high"]) == (0, 0, 0)

    v3 = run_register(CFG, long, store, uri, None).stats["version"]
    promoted = registry.promote(uri, CFG, NAME, v3)
    assert promoted.action == "promote", promoted.reason
    assert promoted.numbers["delta_low"] > 0.03 and promoted.numbers["production_predictions"] == "run at gate time"
    assert promoted.numbers["candidate_test_f1"] == pytest.approx(long["evaluate"].stats["test_f1"], abs=1e-6)
    assert aliases(uri)["production"] == v3

    rows = read_predictions(long["evaluate"].path / PREDICTIONS_FILE)
    again = registry.promote(uri, CFG, NAME, add_version(uri, rows, tmp_path, long["train"].path / "model"))
    assert again.action == "refuse" and again.numbers["production_predictions"] == "stored"
    assert again.numbers["delta_low"] == again.numbers["delta_high"] == 0
    print(f"\n{same.summary()}\n{promoted.summary()}\n{again.summary()}")
