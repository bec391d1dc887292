"""Model cards of registered versions, and batch inference with a registry model: one tiny real pipeline run."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import write_tiny_config

from ner_pipeline import batch, pipeline, registry
from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import load_config
from ner_pipeline.registry.card import read_card

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path):
    """ingest → tokenize → train → evaluate → export → register of the tiny model into a SQLite registry."""
    tmp = tmp_path_factory.mktemp("card")
    cfg = load_config(write_tiny_config(tmp, tiny_base_dir))
    uri = cfg.tracking.tracking_uri
    done = pipeline.run_pipeline(cfg, ArtifactStore(cfg.artifacts_root), ctx=pipeline.RunContext(tracking_uri=uri))
    return cfg, uri, done


def test_card_of_a_registered_version_holds_its_real_metrics_and_label_counts(registered) -> None:
    cfg, uri, done = registered
    name, version = done["register"].stats["name"], done["register"].stats["version"]
    card = read_card(uri, f"{name}/{version}")
    evaluation, ingest = done["evaluate"].stats, done["ingest"].stats

    head, body = card.removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(head)
    assert meta["pipeline_tag"] == "token-classification" and meta["base_model"] == cfg.model.name_or_path
    assert meta["language"] == ["en"] and meta["datasets"] == ["wnut16"]
    [result] = meta["model-index"][0]["results"]
    test_f1 = next(m["value"] for m in result["metrics"] if m["name"] == "Test F1 (conlleval)")
    assert test_f1 == round(evaluation["test_f1"], 4)

    assert f"| test | {evaluation['test_f1']:.4f} | {evaluation['test_f1_strict']:.4f} |" in body
    assert f"{evaluation['test_f1_ci_low']:.4f} – {evaluation['test_f1_ci_high']:.4f}" in body
    types = sorted(ingest["train"]["entities"])
    train_row = [str(ingest["train"]["sentences"]), str(ingest["train"]["tokens"])]
    train_row += [str(ingest["train"]["entities"].get(t, 0)) for t in types]
    assert "| train | " + " | ".join(train_row) + " |" in body
    assert f"Fingerprint: `{ingest['fingerprint']}`" in body
    for entity_type in types:
        if f"test_f1_{entity_type}" in evaluation:
            assert f"| {entity_type} | " in body and f"{evaluation[f'test_f1_{entity_type}']:.4f} |" in body
    parity = (done["export"].path / "parity.json").read_text()
    assert "| onnx-int8 | model_quantized.onnx |" in body and "accepted" in parity
    assert f"ner-pipeline serve --model models:/{name}/{version}" in body
    assert f"learning_rate: {cfg.train.learning_rate}" in body

    mv = registry.client_for(uri).get_model_version(name, version)
    assert mv.description.startswith("NER model fine-tuned from") and "Model card: README.md" in mv.description
    fetched = registry.fetch_model(f"models:/{name}/{version}", uri, Path(str(done["register"].path) + "-dl"))
    assert (fetched.model_dir.parents[1] / "README.md").read_text() == card  # beside MLmodel


def test_models_card_command_prints_the_card_by_alias(registered, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    _, uri, done = registered
    name = done["register"].stats["name"]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"tracking": {"tracking_uri": uri}}))
    result = CliRunner().invoke(app, ["models", "card", f"{name}@challenger", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == read_card(uri, f"{name}/{done['register'].stats['version']}").strip()
    missing = CliRunner().invoke(app, ["models", "card", f"{name}/99", "-c", str(config)])
    assert missing.exit_code == 1 and "error:" in missing.output


def test_batch_predict_with_a_registry_model_records_its_version_and_reruns_for_free(registered, tmp_path) -> None:
    _, uri, done = registered
    name, version = done["register"].stats["name"], done["register"].stats["version"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Barack Obama visited Berlin .\nNothing here\n")
    store = ArtifactStore(tmp_path / "artifacts")
    out = str(tmp_path / "tags.parquet")
    first = batch.run_batch(str(corpus), f"models:/{name}@challenger", out, store, uri, progress=False)
    assert (first.model_name, first.model_version, first.computed) == (name, version, 1)
    rows = pq.read_table(out).to_pylist()
    assert [r["model_version"] for r in rows] == [version, version]
    again = batch.run_batch(str(corpus), f"models:/{name}/{version}", out, store, uri, progress=False)
    assert again.computed == 0 and again.chunk_keys == first.chunk_keys
