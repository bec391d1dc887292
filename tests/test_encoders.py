"""The efficiency encoders end to end: a tiny RoBERTa (byte-level BPE, prefix space) and a tiny DistilBERT (no
token_type_ids) each go through tokenize → train → evaluate → export and predict raw text on every backend.

Both are built offline: the RoBERTa tokenizer is trained on the packaged WNUT-16 words, the DistilBERT one reuses
the packaged MiniLM's WordPiece vocab; weights are random and trained for a few steps, so predictions are noise,
which gives plenty of entities whose offsets and cross-backend agreement can be checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PACKAGED_MODEL, write_tiny_config

from ner_pipeline.artifacts import Artifact, ArtifactStore
from ner_pipeline.config import load_config
from ner_pipeline.pipeline import run_pipeline
from ner_pipeline.predict import PARITY_FILE, Predictor
from ner_pipeline.preprocessing import Preprocessing, subwords_per_word

pytestmark = pytest.mark.slow

ENCODERS = ["roberta", "distilbert"]
BACKENDS = ["torch", "onnx", "onnx-int8"]
VARIANT_FILES = {"onnx": "model.onnx", "onnx-optimized": "model_optimized.onnx", "onnx-int8": "model_quantized.onnx"}
TEXTS = [
    "Justin Bieber plays in London tonight with the Lakers",
    "  New iPhone from Apple\tin New York... can't wait!!",
    "Zoë flew to São Paulo 🎉 with @paulwalk on Friday",
]
TINY = {"hidden": 32, "layers": 2, "heads": 2, "max_positions": 130}


def wnut16_sentences() -> list[str]:
    """The packaged WNUT-16 sentences as running text (the first column holds the words)."""
    from ner_pipeline.readers import wnut16_path

    sentences, words = [], []
    for line in wnut16_path().read_text(encoding="utf-8").splitlines():
        word = line.split("\t")[0].strip()
        if word:
            words.append(word)
        elif words:
            sentences.append(" ".join(words))
            words = []
    return sentences + ([" ".join(words)] if words else [])


def build_tiny_roberta(folder: Path) -> Path:
    """A random RoBERTa with a 2000-token byte-level BPE vocabulary learned from WNUT-16."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4
    bpe.train_from_iterator(wnut16_sentences(), vocab_size=2000, min_frequency=2, special_tokens=specials)
    vocab, merges = bpe.save_model(str(folder))
    tokenizer = RobertaTokenizerFast(vocab_file=vocab, merges_file=merges, model_max_length=TINY["max_positions"] - 2)
    tokenizer.save_pretrained(folder)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY["hidden"],
        num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"],
        intermediate_size=TINY["hidden"] * 2,
        max_position_embeddings=TINY["max_positions"],  # RoBERTa's positions start after the padding index
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["RobertaModel"],
    )
    RobertaModel(config).save_pretrained(folder)
    return folder


def build_tiny_distilbert(folder: Path) -> Path:
    """A random DistilBERT over the packaged MiniLM's (uncased) WordPiece vocabulary."""
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    from ner_pipeline.modelref import resolve_model_ref

    folder.mkdir(parents=True)
    vocab = Path(resolve_model_ref(PACKAGED_MODEL)) / "vocab.txt"
    tokenizer = DistilBertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(folder)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=TINY["hidden"],
        n_layers=TINY["layers"],
        n_heads=TINY["heads"],
        hidden_dim=TINY["hidden"] * 2,
        max_position_embeddings=TINY["max_positions"],
        pad_token_id=tokenizer.pad_token_id,
        architectures=["DistilBertModel"],
    )
    DistilBertModel(config).save_pretrained(folder)
    return folder


def run_encoder(folder: Path, build: Callable[[Path], Path]) -> dict[str, Artifact]:
    """Build a tiny base model, then run ingest → export on a small WNUT-16 slice with tracking off."""
    import torch

    torch.manual_seed(0)
    base = build(folder / "base")
    # A few optimizer steps at a small rate: the path runs, and the head stays random enough to tag entities.
    path = write_tiny_config(
        folder,
        base,
        train={"max_train_sentences": 48, "learning_rate": 1e-4},
        tracking={"enabled": False},
        evaluate={"bootstrap_samples": 0},
    )
    config = load_config(path)
    return run_pipeline(config, ArtifactStore(config.artifacts_root))


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    return run_encoder(tmp_path_factory.mktemp("roberta"), build_tiny_roberta)


@pytest.fixture(scope="module")
def distilbert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    return run_encoder(tmp_path_factory.mktemp("distilbert"), build_tiny_distilbert)


def graph_inputs(path: Path) -> set[str]:
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def test_roberta_tokenizes_every_word_as_running_text_with_a_leading_space(roberta):
    from transformers import AutoTokenizer

    from ner_pipeline.ingest import load_splits
    from ner_pipeline.tokenize import load_tokenized

    prep = Preprocessing.load(roberta["train"].path / "model")
    assert (prep.model_type, prep.add_prefix_space) == ("roberta", True)
    plain = AutoTokenizer.from_pretrained(str(roberta["tokenize"].path / "tokenizer"), add_prefix_space=False)

    def spaced(word: str) -> list[int]:
        return plain.encode(" " + word, add_special_tokens=False)

    # the tokenizer each later stage loads: tokenize's (train), the model folder's and the export folder's
    tokenizers = [
        AutoTokenizer.from_pretrained(str(roberta["tokenize"].path / "tokenizer")),
        Predictor.load(roberta["train"].path / "model", backend="torch").tokenizer,
        Predictor.load(roberta["export"].path, backend="onnx").tokenizer,
    ]
    for tokenizer in tokenizers:
        first, middle, last = subwords_per_word(tokenizer, [["London", "is", "London"]])[0]
        assert first == last == spaced("London") != plain.encode("London", add_special_tokens=False)
        assert middle == spaced("is")

    # the windows written by the tokenize stage: <s>, each word as " word", </s>
    dataset = load_tokenized(roberta["tokenize"])["train"]
    split = load_splits(roberta["ingest"])["train"]
    words_of = dict(zip(split["id"], split["tokens"], strict=True))
    checked = 0
    for row in dataset.select(range(50)):
        words = words_of[row["sentence_id"]]
        expected = [t for w in words for t in spaced(w)]
        if row["window"] == 0 and len(expected) + 2 <= prep.max_length:
            assert row["input_ids"] == [plain.bos_token_id, *expected, plain.eos_token_id], words
            checked += 1
    assert checked >= 20


def test_distilbert_inputs_carry_no_token_type_ids(distilbert):
    from ner_pipeline.tokenize import load_tokenized

    prep = Preprocessing.load(distilbert["train"].path / "model")
    assert (prep.model_type, prep.add_prefix_space) == ("distilbert", False)
    predictor = Predictor.load(distilbert["train"].path / "model", backend="torch")
    assert "token_type_ids" not in predictor.tokenizer("New York is big")
    assert "token_type_ids" not in load_tokenized(distilbert["tokenize"])["train"].column_names
    for name in VARIANT_FILES.values():
        assert graph_inputs(distilbert["export"].path / name) == {"input_ids", "attention_mask"}, name


@pytest.mark.parametrize("encoder", ENCODERS)
def test_pipeline_evaluates_and_exports_every_variant_with_a_parity_record(encoder, request):
    stages = request.getfixturevalue(encoder)
    assert 0.0 <= stages["evaluate"].stats["test_f1"] <= 1.0
    folder = stages["export"].path
    parity = json.loads((folder / PARITY_FILE).read_text())
    tokenizer = Predictor.load(folder, backend="onnx").tokenizer
    for variant, file in VARIANT_FILES.items():
        row = parity[variant]
        assert row["file"] == file and (folder / file).is_file(), variant
        assert isinstance(row["accepted"], bool) and "f1_delta" in row, variant
        assert graph_inputs(folder / file) == set(tokenizer.model_input_names), variant
    assert parity["onnx"]["max_abs_logit_diff"] < 1e-3
    assert parity["default"] in {"torch", *VARIANT_FILES}


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_backend_tags_raw_text_at_exact_offsets(encoder, request):
    stages = request.getfixturevalue(encoder)
    found = {}
    for backend in BACKENDS:
        folder = stages["train"].path / "model" if backend == "torch" else stages["export"].path
        entities = Predictor.load(folder, backend=backend).predict(TEXTS)
        for text, ents in zip(TEXTS, entities, strict=True):
            for e in ents:
                assert text[e.start : e.end] == e.text == e.text.strip() != "", (backend, e)
        found[backend] = {(i, e.start, e.end): e.label for i, ents in enumerate(entities) for e in ents}
    reference = found["torch"]
    assert len(reference) >= 3  # a random head tags plenty of words, so the offsets above were exercised
    assert found["onnx"] == reference
    same = sum(found["onnx-int8"].get(span) == label for span, label in reference.items())
    assert same >= 0.7 * len(reference), (same, len(reference))
