"""Tokenize stage: words → subword windows with aligned labels, and the preprocessing contract.

Words are tokenized once with a fast tokenizer; windows are then cut from the per-word subwords, so a sentence
longer than the model's maximum is split into overlapping windows over whole words and no word is silently
truncated. `merge_windows` maps per-window predictions back to exactly one value per word. Optional document
context (FLERT) fills the room a short sentence leaves with neighbouring sentences of its document, labelled -100.

`Preprocessing` is saved next to every trained model and read back by evaluate, the ONNX predictor and the service,
so every path sees the same inputs.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, write_json_atomic
from ner_pipeline.config import ModelConfig, TokenizeConfig
from ner_pipeline.errors import ModelError
from ner_pipeline.modelref import TOKENIZER_FILES, model_fingerprint, resolve_model_ref

logger = logging.getLogger(__name__)

STAGE = "tokenize"
VERSION = "1"
PREPROCESSING_FILE = "preprocessing.json"
PREPROCESSING_VERSION = 1
IGNORE = -100  # the index PyTorch's cross-entropy skips: continuation subwords, specials, context, padding
NO_WORD = -1
# Byte-level BPE tokenizers need a leading space to tokenize pre-split words like running text.
PREFIX_SPACE_MODELS = {"roberta", "gpt2", "longformer", "bart", "deberta", "mvp", "led"}
T = TypeVar("T")


class Preprocessing(BaseModel):
    """Everything that decides what the model sees; saved as preprocessing.json beside the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = PREPROCESSING_VERSION
    model_type: str
    max_length: int
    stride: int
    label_all_subwords: bool
    document_context: bool
    labels: list[str]
    add_prefix_space: bool = False

    def save(self, folder: Path) -> Path:
        path = folder / PREPROCESSING_FILE
        write_json_atomic(path, self.model_dump(mode="json"))
        return path

    @classmethod
    def load(cls, folder: Path) -> Preprocessing:
        """Read preprocessing.json from a model folder.

        Raises:
            ModelError: the file is missing or from a newer version of ner-pipeline.
        """
        path = Path(folder) / PREPROCESSING_FILE
        if not path.is_file():
            raise ModelError(
                f"{folder}: no {PREPROCESSING_FILE}; this folder was not written by ner-pipeline's train stage"
            )
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version", 0) > PREPROCESSING_VERSION:
            raise ModelError(f"{path}: version {raw['version']} is newer than this ner-pipeline understands")
        return cls.model_validate(raw)


@dataclass
class Window:
    """One model input: token ids, which word each token belongs to (-1: none), and training labels."""

    input_ids: list[int]
    word_ids: list[int]
    labels: list[int]

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.input_ids)


def needs_prefix_space(model_type: str) -> bool:
    return model_type in PREFIX_SPACE_MODELS


def load_tokenizer(model_ref: str, revision: str | None = None) -> Any:
    """Load the fast tokenizer of a model reference (Hub id, folder or package:...).

    Raises:
        ModelError: the tokenizer is not a fast one (word ids are needed to align labels).
    """
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_model_ref(model_ref)
    model_type = AutoConfig.from_pretrained(path, revision=revision).model_type
    extra = {"add_prefix_space": True} if needs_prefix_space(model_type) else {}
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, use_fast=True, **extra)
    if not tokenizer.is_fast:
        raise ModelError(f"model '{model_ref}': no fast tokenizer; word-level label alignment needs one")
    tokenizer.model_type_for_ner = model_type
    return tokenizer


def subwords_per_word(tokenizer: Any, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """Tokenize many sentences in one call; return, per sentence, the subword ids of each word."""
    if not sentences:
        return []
    encoded = tokenizer([list(s) for s in sentences], is_split_into_words=True, add_special_tokens=False)
    result: list[list[list[int]]] = []
    for i, words in enumerate(sentences):
        pieces: list[list[int]] = [[] for _ in words]
        for token_id, word in zip(encoded["input_ids"][i], encoded.word_ids(i), strict=True):
            if word is not None:
                pieces[word].append(token_id)
        for j, piece in enumerate(pieces):
            if not piece:  # a word the tokenizer drops (e.g. a lone control character): keep it addressable
                pieces[j] = [tokenizer.unk_token_id]
        result.append(pieces)
    return result


_LAYOUTS: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], tuple[int, ...]]] = weakref.WeakKeyDictionary()


def special_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a single sequence gets before and after its content ([CLS] … [SEP], <s> … </s>)."""
    # Asked once per tokenizer: encoding calls this per sentence, and the tokenizer's attribute lookups made it
    # 2 % of serving time. Weak keys, so a reloaded model's tokenizer is not kept alive by the cache.
    layout = _LAYOUTS.get(tokenizer)
    if layout is None:
        marker = -7  # not a real id: find where content goes in the built sequence
        built = tokenizer.build_inputs_with_special_tokens([marker])
        at = built.index(marker)
        layout = _LAYOUTS[tokenizer] = (tuple(built[:at]), tuple(built[at + 1 :]))
    return list(layout[0]), list(layout[1])


def content_budget(tokenizer: Any, max_length: int) -> int:
    prefix, suffix = special_layout(tokenizer)
    return max_length - len(prefix) - len(suffix)


def window_spans(lengths: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Cut words with these subword counts into windows [start, end) of at most `budget` subwords.

    Consecutive windows overlap by whole words covering at least `stride` subwords (when the budget allows), so
    a word near a cut also appears in a window where it has context on both sides. A word longer than the budget
    gets a window of its own (and is truncated when encoded).
    """
    spans: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        end, used = start, 0
        while end < n and (used + min(lengths[end], budget) <= budget or end == start):
            used += min(lengths[end], budget)
            end += 1
        spans.append((start, end))
        if end >= n:
            break
        back, overlap = end, 0
        while back > start + 1 and overlap < stride:
            back -= 1
            overlap += lengths[back]
        start = back if back > start else end
    return spans


def encode_words(
    words: Sequence[str],
    tokenizer: Any,
    prep: Preprocessing,
    label_ids: Sequence[int] | None = None,
    context_left: Sequence[str] = (),
    context_right: Sequence[str] = (),
    pieces: list[list[int]] | None = None,
    context_pieces: tuple[list[list[int]], list[list[int]]] | None = None,
) -> list[Window]:
    """Encode one sentence as one or more windows.

    Args:
        words: The sentence's words.
        tokenizer: A fast tokenizer (see `load_tokenizer`).
        prep: The preprocessing contract (max length, stride, label strategy, labels).
        label_ids: Gold label ids per word, for training; None for inference (labels then all -100).
        context_left: Words of the preceding sentences of the document (used only with document_context).
        context_right: Words of the following sentences.
        pieces: Subword ids per word when already computed (a batch call is much faster).
        context_pieces: Likewise for the left and right context.

    Returns:
        Windows whose `word_ids` index into `words`; every word appears in at least one window.
    """
    if pieces is None:
        pieces = subwords_per_word(tokenizer, [words])[0] if words else []
    budget = content_budget(tokenizer, prep.max_length)
    prefix, suffix = special_layout(tokenizer)
    names = prep.labels
    windows = []
    spans = window_spans([len(p) for p in pieces], budget, prep.stride)
    for start, end in spans:
        ids: list[int] = []
        word_ids: list[int] = []
        labels: list[int] = []
        for j in range(start, end):
            piece = pieces[j][:budget]
            if len(pieces[j]) > budget:
                logger.warning("word %r has %d subwords, more than a window holds; truncated", words[j], len(pieces[j]))
            first = IGNORE if label_ids is None else label_ids[j]
            rest = IGNORE
            if label_ids is not None and prep.label_all_subwords:
                rest = _continuation(first, names)
            ids += piece
            word_ids += [j] * len(piece)
            labels += [first] + [rest] * (len(piece) - 1)
        if prep.document_context and len(spans) == 1:
            ids, word_ids, labels = _add_context(
                ids, word_ids, labels, budget, tokenizer, context_left, context_right, context_pieces
            )
        windows.append(
            Window(
                input_ids=prefix + ids + suffix,
                word_ids=[NO_WORD] * len(prefix) + word_ids + [NO_WORD] * len(suffix),
                labels=[IGNORE] * len(prefix) + labels + [IGNORE] * len(suffix),
            )
        )
    return windows


def _continuation(label_id: int, names: Sequence[str]) -> int:
    """The label of a non-first subword when every subword is labelled: B-X continues as I-X."""
    if label_id == IGNORE:
        return IGNORE
    name = names[label_id]
    if name.startswith("B-"):
        return names.index("I-" + name[2:])
    return label_id


def _add_context(
    ids: list[int],
    word_ids: list[int],
    labels: list[int],
    budget: int,
    tokenizer: Any,
    left: Sequence[str],
    right: Sequence[str],
    pieces: tuple[list[list[int]], list[list[int]]] | None,
) -> tuple[list[int], list[int], list[int]]:
    room = budget - len(ids)
    if pieces is None:
        pieces = (
            subwords_per_word(tokenizer, [left])[0] if left else [],
            subwords_per_word(tokenizer, [right])[0] if right else [],
        )
    left_pieces, right_pieces = pieces
    if room <= 0 or not (left_pieces or right_pieces):
        return ids, word_ids, labels
    left_ids = [t for p in left_pieces for t in p]
    right_ids = [t for p in right_pieces for t in p]
    take_left = min(len(left_ids), max(room // 2, room - len(right_ids)))
    take_right = min(len(right_ids), room - take_left)
    before = left_ids[len(left_ids) - take_left :] if take_left else []
    after = right_ids[:take_right]
    return (
        before + ids + after,
        [NO_WORD] * len(before) + word_ids + [NO_WORD] * len(after),
        [IGNORE] * len(before) + labels + [IGNORE] * len(after),
    )


def merge_windows(
    word_ids_per_window: Sequence[Sequence[int]], values_per_window: Sequence[Sequence[T]], n_words: int
) -> list[T]:
    """Pick one value per word from overlapping windows.

    For each word, the value at its first subword is taken from the window where that subword sits farthest
    from the window's content edges (so it had the most context on both sides).

    Raises:
        ValueError: some word appears in no window.
    """
    best: list[tuple[int, T] | None] = [None] * n_words
    for word_ids, values in zip(word_ids_per_window, values_per_window, strict=True):
        content = [i for i, w in enumerate(word_ids) if w >= 0]
        if not content:
            continue
        lo, hi = content[0], content[-1]
        previous = NO_WORD
        for i, w in enumerate(word_ids):
            if w >= 0 and w != previous and w < n_words:
                distance = min(i - lo, hi - i)
                current = best[w]
                if current is None or distance > current[0]:
                    best[w] = (distance, values[i])
            previous = w
    missing = [i for i, b in enumerate(best) if b is None]
    if missing:
        raise ValueError(f"words {missing[:10]} appear in no window")
    return [b[1] for b in best]  # type: ignore[index]


# --- the stage -----------------------------------------------------------------------------------------------


def tokenize_key(model_cfg: ModelConfig, tok_cfg: TokenizeConfig, ingest_key: str) -> str:
    """Key of the tokenize artifact: model reference and tokenizer files, tokenize config, ingest key."""
    config = {
        "model": model_cfg,
        "tokenizer_sha256": model_fingerprint(model_cfg.name_or_path, TOKENIZER_FILES),
        "tokenize": tok_cfg,
    }
    return artifact_key(STAGE, VERSION, config, {"ingest": ingest_key})


def make_preprocessing(tokenizer: Any, tok_cfg: TokenizeConfig, labels: list[str]) -> Preprocessing:
    model_type = getattr(tokenizer, "model_type_for_ner", "unknown")
    return Preprocessing(
        model_type=model_type,
        max_length=tok_cfg.max_length,
        stride=tok_cfg.stride,
        label_all_subwords=tok_cfg.label_all_subwords,
        document_context=tok_cfg.document_context,
        labels=labels,
        add_prefix_space=needs_prefix_space(model_type),
    )


def document_neighbours(doc_ids: Sequence[int], index: int, span: int = 2) -> tuple[list[int], list[int]]:
    """Indices of up to `span` sentences before and after `index` in the same document."""
    before = [i for i in range(max(0, index - span), index) if doc_ids[i] == doc_ids[index]]
    after = [i for i in range(index + 1, min(len(doc_ids), index + 1 + span)) if doc_ids[i] == doc_ids[index]]
    return before, after


def encode_split(split: Any, tokenizer: Any, prep: Preprocessing, desc: str = "") -> tuple[dict[str, list], int]:
    """Encode every sentence of an ingest split; return dataset columns and how many sentences needed windows."""
    from tqdm.auto import tqdm

    tokens = split["tokens"]
    tags = split["ner_tags"]
    doc_ids = split["document_id"]
    ids = split["id"]
    pieces = subwords_per_word(tokenizer, tokens)
    columns: dict[str, list] = {
        k: [] for k in ("input_ids", "attention_mask", "labels", "word_ids", "sentence_id", "window")
    }
    windowed = 0
    for i in tqdm(range(len(tokens)), desc=f"tokenize {desc}", unit="sent", mininterval=2, leave=False):
        context = None
        if prep.document_context:
            before, after = document_neighbours(doc_ids, i)
            context = ([p for b in before for p in pieces[b]], [p for a in after for p in pieces[a]])
        windows = encode_words(tokens[i], tokenizer, prep, tags[i], pieces=pieces[i], context_pieces=context)
        windowed += len(windows) > 1
        for w, window in enumerate(windows):
            columns["input_ids"].append(window.input_ids)
            columns["attention_mask"].append(window.attention_mask)
            columns["labels"].append(window.labels)
            columns["word_ids"].append(window.word_ids)
            columns["sentence_id"].append(ids[i])
            columns["window"].append(w)
    return columns, windowed


def run_tokenize(
    model_cfg: ModelConfig, tok_cfg: TokenizeConfig, ingest_artifact: Artifact, store: ArtifactStore
) -> Artifact:
    """Build (or reuse) the tokenize artifact: `dataset/`, `tokenizer/`, `preprocessing.json`."""
    from datasets import Dataset, DatasetDict

    from ner_pipeline.ingest import load_splits, read_labels

    key = tokenize_key(model_cfg, tok_cfg, ingest_artifact.key)

    def produce(folder: Path) -> dict[str, Any]:
        tokenizer = load_tokenizer(model_cfg.name_or_path, model_cfg.revision)
        prep = make_preprocessing(tokenizer, tok_cfg, read_labels(ingest_artifact))
        splits = load_splits(ingest_artifact)
        encoded, stats = {}, {}
        for name, split in splits.items():
            columns, windowed = encode_split(split, tokenizer, prep, name)
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
        tokenizer.save_pretrained(str(folder / "tokenizer"))
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
