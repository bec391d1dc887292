"""Export: real optimum export, ONNX Runtime sessions, parity records, and one preprocessing contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_model

from ner_pipeline.config import EvaluateConfig, ExportConfig, TokenizeConfig
from ner_pipeline.evaluate import run_evaluate
from ner_pipeline.export import PARITY_FILE, export_key, quantization_target, run_export, serving_default
from ner_pipeline.ingest import load_splits, read_labels
from ner_pipeline.predict import Predictor, onnx_file, pad_batch, split_words
from ner_pipeline.preprocessing import IGNORE, Preprocessing, WordEncoder, load_tokenizer
from ner_pipeline.tokenize import make_preprocessing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(wnut_tiny):
    store, ingest, train = wnut_tiny
    return run_export(ExportConfig(parity_sentences=60), ingest, train, store)


def fit(model_dir: Path, sentences: list[list[str]], tags: list[list[int]], steps: int = 150) -> None:
    """Train the model in `model_dir` on a few sentences until it has learnt them, and save it in place."""
    import torch
    from transformers import AutoModelForTokenClassification

    encoder = WordEncoder(load_tokenizer(str(model_dir)), Preprocessing.load(model_dir))
    windows = [w for words, ids in zip(sentences, tags, strict=True) for w in encoder.encode(words, ids)]
    model = AutoModelForTokenClassification.from_pretrained(model_dir).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = [windows[(step * 16 + k) % len(windows)] for k in range(16)]
        ids, mask = pad_batch([w.input_ids for w in batch], encoder.tokenizer.pad_token_id)
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)
        for row, window in enumerate(batch):
            labels[row, : len(window.labels)] = window.labels
        out = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels)
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(model_dir)


@pytest.fixture(scope="module")
def learnt(wnut_tiny):
    """A tiny model trained on 48 WNUT sentences with entities until it tags them (so its labels vary), exported."""
    import torch

    store, ingest, _ = wnut_tiny
    labels = read_labels(ingest)
    train_split = load_splits(ingest)["train"]
    rows = [
        (t, g) for t, g in zip(train_split["tokens"], train_split["ner_tags"], strict=True) if any(g) and len(t) < 30
    ]
    sentences, tags = [list(t) for t, _ in rows[:48]], [list(g) for _, g in rows[:48]]

    def produce(folder: Path) -> dict:
        torch.manual_seed(0)
        model_dir = build_tiny_model(folder / "model", labels=labels)
        make_preprocessing(load_tokenizer(str(model_dir)), TokenizeConfig(max_length=64, stride=8), labels).save(
            model_dir
        )
        fit(model_dir, sentences, tags)
        return {}

    train = store.build("train", "tiny-learnt", produce)
    return sentences, run_export(ExportConfig(parity_sentences=20), ingest, train, store)


def test_every_variant_is_written_with_a_parity_record(exported):
    for name in ("model.onnx", "model_optimized.onnx", "model_quantized.onnx", "preprocessing.json", "tokenizer.json"):
        assert (exported.path / name).is_file(), name
    parity = json.loads((exported.path / PARITY_FILE).read_text())
    assert parity["onnx"]["max_abs_logit_diff"] < 1e-3
    assert parity["onnx-optimized"]["max_abs_logit_diff"] < 1e-2
    assert "f1_delta" in parity["onnx-int8"] and "accepted" in parity["onnx-int8"]
    assert parity["default"] == serving_default(parity)
    assert exported.stats["default"] == parity["default"]


def test_torch_and_onnx_backends_agree_on_a_fixed_sample(exported, wnut_tiny):
    _, _, train = wnut_tiny
    sample = ["Justin Bieber plays in London tonight with the Lakers", "New iPhone from Apple in New York"]
    torch_entities = Predictor.load(train.path / "model", backend="torch").predict(sample)
    onnx_entities = Predictor.load(exported.path, backend="onnx").predict(sample)
    assert [[(e.label, e.start, e.end) for e in ents] for ents in onnx_entities] == [
        [(e.label, e.start, e.end) for e in ents] for ents in torch_entities
    ]
    for a, b in zip(torch_entities, onnx_entities, strict=True):
        assert [round(e.score, 3) for e in a] == [round(e.score, 3) for e in b]
    int8 = Predictor.load(exported.path, backend="onnx-int8")
    assert len(int8.predict(sample)) == 2


def test_int8_labels_agree_with_fp32_on_a_trained_model(learnt):
    sentences, export = learnt
    handful = sentences[:8]
    fp32 = Predictor.load(export.path, backend="onnx").predict_words(handful)
    int8 = Predictor.load(export.path, backend="onnx-int8").predict_words(handful)
    assert len({label for labels in fp32 for label in labels}) >= 3, "the model should not tag every word alike"
    pairs = [(a, b) for x, y in zip(fp32, int8, strict=True) for a, b in zip(x, y, strict=True)]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    assert agreement >= 0.9, f"int8 agrees with fp32 on {agreement:.0%} of {len(pairs)} words"


def test_raw_text_predictions_equal_the_evaluate_stage_on_the_same_sentences(wnut_tiny, exported):
    """Golden test of the preprocessing contract: the serving path and the evaluation path see the same inputs."""
    store, ingest, train = wnut_tiny
    evaluated = run_evaluate(EvaluateConfig(bootstrap_samples=0, worst_sentences=500), ingest, train, store)
    errors = [json.loads(line) for line in (evaluated.path / "errors.jsonl").read_text().splitlines()]
    test = load_splits(ingest)["test"]
    by_tokens = {tuple(row["tokens"]): row for row in errors}
    predictor = Predictor.load(exported.path, backend="onnx")
    checked = 0
    for tokens in test["tokens"]:
        text = " ".join(tokens)
        if [w for w, _, _ in split_words(text)] != tokens or tuple(tokens) not in by_tokens:
            continue  # only sentences whose words the raw-text splitter reproduces exactly
        [entities] = predictor.predict(text)
        words = [(start, end) for _, start, end in split_words(text)]
        # Character offsets back to word spans (end exclusive, as evaluate records them): both edges must agree.
        first = {start: i for i, (start, _) in enumerate(words)}
        after = {end: i + 1 for i, (_, end) in enumerate(words)}
        spans = [(first[e.start], after[e.end], e.label) for e in entities]
        expected = [(p["start"], p["end"], p["label"]) for p in by_tokens[tuple(tokens)]["predicted"]]
        assert sorted(spans) == sorted(expected), text
        checked += 1
    assert checked >= 20


def test_quantization_target_follows_the_cpu():
    assert quantization_target("auto", {"avx2", "fma"}) == "avx2"
    assert quantization_target("auto", {"avx2", "avx512f"}) == "avx512"
    assert quantization_target("auto", {"avx2", "avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert quantization_target("avx2", {"avx512_vnni"}) == "avx2"


def test_export_key_follows_the_instruction_set_auto_resolves_to():
    here = quantization_target("auto")
    elsewhere = next(t for t in ("avx2", "avx512_vnni") if t != here)

    def key(quantization: str) -> str:
        return export_key(ExportConfig(quantization=quantization), "ingest-key", "train-key")

    assert key("auto") == key(here)
    assert key("auto") != key(elsewhere)  # an int8 graph made for another CPU is not a cache hit here


def test_a_variant_the_parity_check_rejected_is_not_loaded_for_its_backend(exported, tmp_path: Path):
    folder = tmp_path / "export"
    shutil.copytree(exported.path, folder)
    assert onnx_file(folder, "onnx").name == "model_optimized.onnx"

    parity = json.loads((folder / PARITY_FILE).read_text())
    parity["onnx-optimized"]["accepted"] = False
    (folder / PARITY_FILE).write_text(json.dumps(parity))
    assert onnx_file(folder, "onnx").name == "model.onnx"
    predictor = Predictor.load(folder, backend="onnx")
    assert predictor.predict(["Paris"])  # the plain graph loads and runs

    (folder / PARITY_FILE).unlink()  # an export made by hand: the best file present
    assert onnx_file(folder, "onnx").name == "model_optimized.onnx"
