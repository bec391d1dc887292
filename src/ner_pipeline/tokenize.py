"""Tokenize stage: the training data encoded as subword windows, with the tokenizer and the preprocessing contract.

Each split of the ingest artifact goes through the model's `WordEncoder` (see `ner_pipeline.preprocessing`); the
artifact holds the encoded `dataset/`, the `tokenizer/` and `preprocessing.json`, which the train stage copies next
to the model so that evaluation, export and serving encode text exactly as training did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key
from ner_pipeline.config import ModelConfig, TokenizeConfig
from ner_pipeline.modelref import TOKENIZER_FILES, model_fingerprint, resolve_model_ref
from ner_pipeline.preprocessing import IGNORE as IGNORE  # re-exported: the train stage masks its loss with it
from ner_pipeline.preprocessing import Preprocessing, WordEncoder, load_tokenizer
from ner_pipeline.preprocessing import merge_windows as merge_windows  # re-exported for the train stage

logger = logging.getLogger(__name__)

STAGE = "tokenize"
VERSION = "1"


def model_type_of(model_ref: str, revision: str | None = None) -> str:
    """The `model_type` of a model reference's config (bert, roberta, ...), which decides the prefix space."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_ref(model_ref), revision=revision).model_type


def tokenize_key(model_cfg: ModelConfig, tok_cfg: TokenizeConfig, ingest_key: str) -> str:
    """Key of the tokenize artifact: model reference and tokenizer files, tokenize config, ingest key."""
    config = {
        "model": model_cfg,
        "tokenizer_sha256": model_fingerprint(model_cfg.name_or_path, TOKENIZER_FILES),
        "tokenize": tok_cfg,
    }
    return artifact_key(STAGE, VERSION, config, {"ingest": ingest_key})


def make_preprocessing(
    tokenizer: Any, tok_cfg: TokenizeConfig, labels: list[str], model_type: str | None = None
) -> Preprocessing:
    """The preprocessing contract for a tokenizer and the tokenize config.

    Args:
        tokenizer: The model's tokenizer; its model type is read from the config beside it (`name_or_path`)
            unless `model_type` is given.
        tok_cfg: Window length, stride and labelling choices.
        labels: The label names, in id order.
        model_type: The model's `model_type` (decides the prefix space).
    """
    if model_type is None:
        model_type = model_type_of(tokenizer.name_or_path)
    return Preprocessing(
        model_type=model_type,
        max_length=tok_cfg.max_length,
        stride=tok_cfg.stride,
        label_all_subwords=tok_cfg.label_all_subwords,
        document_context=tok_cfg.document_context,
        labels=labels,
    )


def document_neighbours(doc_ids: Sequence[int], index: int, span: int = 2) -> tuple[list[int], list[int]]:
    """Indices of up to `span` sentences before and after `index` in the same document."""
    before = [i for i in range(max(0, index - span), index) if doc_ids[i] == doc_ids[index]]
    after = [i for i in range(index + 1, min(len(doc_ids), index + 1 + span)) if doc_ids[i] == doc_ids[index]]
    return before, after


def encode_split(split: Any, encoder: WordEncoder, progress: Any | None = None) -> tuple[dict[str, list], int]:
    """Encode every sentence of an ingest split; return dataset columns and how many sentences needed windows.

    Args:
        progress: A tqdm bar to advance by one per sentence (the stage's one bar, across its splits), if any.
    """
    tokens = split["tokens"]
    tags = split["ner_tags"]
    doc_ids = split["document_id"]
    ids = split["id"]
    pieces = encoder.subwords(tokens)
    columns: dict[str, list] = {
        k: [] for k in ("input_ids", "attention_mask", "labels", "word_ids", "sentence_id", "window")
    }
    windowed = 0
    for i in range(len(tokens)):
        if progress is not None:
            progress.update()
        context = None
        if encoder.prep.document_context:
            before, after = document_neighbours(doc_ids, i)
            context = ([p for b in before for p in pieces[b]], [p for a in after for p in pieces[a]])
        windows = encoder.encode(tokens[i], tags[i], pieces=pieces[i], context_pieces=context)
        windowed += len(windows) > 1
        for w, window in enumerate(windows):
            columns["input_ids"].append(window.input_ids)
            columns["attention_mask"].append(window.attention_mask)
            columns["labels"].append(window.labels)
            columns["word_ids"].append(window.word_ids)
            columns["sentence_id"].append(ids[i])
            columns["window"].append(w)
    return columns, windowed


# Below this many sentences tokenizing takes seconds: no bar (the stage's start and end lines say enough).
PROGRESS_MIN_SENTENCES = 10_000


def progress_bar(total: int) -> Any:
    """The tokenize stage's one progress bar (stderr) over all its splits; disabled for small data sets."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc="tokenize", unit="sent", mininterval=2, leave=False, disable=total < PROGRESS_MIN_SENTENCES
    )


def run_tokenize(
    model_cfg: ModelConfig, tok_cfg: TokenizeConfig, ingest_artifact: Artifact, store: ArtifactStore
) -> Artifact:
    """Build (or reuse) the tokenize artifact: `dataset/`, `tokenizer/`, `preprocessing.json`."""
    from datasets import Dataset, DatasetDict

    from ner_pipeline.ingest import load_splits, read_labels

    key = tokenize_key(model_cfg, tok_cfg, ingest_artifact.key)

    def produce(folder: Path) -> dict[str, Any]:
        tokenizer = load_tokenizer(model_cfg.name_or_path, model_cfg.revision)
        model_type = model_type_of(model_cfg.name_or_path, model_cfg.revision)
        prep = make_preprocessing(tokenizer, tok_cfg, read_labels(ingest_artifact), model_type)
        encoder = WordEncoder(tokenizer, prep)
        splits = load_splits(ingest_artifact)
        encoded, stats = {}, {}
        with progress_bar(sum(len(split) for split in splits.values())) as bar:
            encoded_splits = {name: encode_split(split, encoder, bar) for name, split in splits.items()}
        for name, split in splits.items():
            columns, windowed = encoded_splits[name]
            encoded[name] = Dataset.from_dict(columns)
            stats[name] = {
                "sentences": len(split),
                "windows": len(columns["input_ids"]),
                "sentences_windowed": windowed,
            }
            if windowed:
                logger.info(
                    "%s: %d sentences longer than %d tokens were split into windows", name, windowed, prep.max_length
                )
        DatasetDict(encoded).save_to_disk(str(folder / "dataset"))
        encoder.tokenizer.save_pretrained(str(folder / "tokenizer"))  # with the prefix space the contract needs
        prep.save(folder)
        stats["sentences_windowed"] = sum(s["sentences_windowed"] for s in stats.values())
        return stats

    return store.build(
        STAGE, key, produce, inputs={"ingest": ingest_artifact.key}, config={"model": model_cfg, "tokenize": tok_cfg}
    )


def load_tokenized(artifact: Artifact) -> Any:
    """The tokenized `DatasetDict` of a tokenize artifact."""
    from datasets import load_from_disk

    return load_from_disk(str(artifact.path / "dataset"))
