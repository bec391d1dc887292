"""The preprocessing contract and the encoder that applies it: pre-split words ↔ subword windows.

Words are tokenized once with a fast tokenizer; windows are then cut from the per-word subwords, so a sentence
longer than the model's maximum is split into overlapping windows over whole words and no word is silently
truncated. `merge_windows` maps per-window predictions back to exactly one value per word. Optional document
context (FLERT) fills the room a short sentence leaves with neighbouring sentences of its document, labelled -100.

`Preprocessing` is saved next to every trained model and read back by evaluate, the ONNX predictor and the service,
so every path sees the same inputs. `WordEncoder` binds a tokenizer to that contract: the tokenize stage and the
predictor both encode through it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator

from ner_pipeline.artifacts import write_json_atomic
from ner_pipeline.errors import ModelError
from ner_pipeline.modelref import resolve_model_ref

logger = logging.getLogger(__name__)

PREPROCESSING_FILE = "preprocessing.json"
PREPROCESSING_VERSION = 1
IGNORE = -100  # the index PyTorch's cross-entropy skips: continuation subwords, specials, context, padding
NO_WORD = -1
# Byte-level BPE tokenizers need a leading space to tokenize pre-split words like running text.
PREFIX_SPACE_MODELS = {"roberta", "gpt2", "longformer", "bart", "deberta", "mvp", "led"}
T = TypeVar("T")


def needs_prefix_space(model_type: str) -> bool:
    """Whether words of this model type need a leading space to be tokenized as in running text."""
    return model_type in PREFIX_SPACE_MODELS


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

    @model_validator(mode="before")
    @classmethod
    def _prefix_space_follows_model_type(cls, data: Any) -> Any:
        """Without an explicit value, the model type decides: never how the tokenizer happened to be loaded."""
        if isinstance(data, dict) and "add_prefix_space" not in data:
            return {**data, "add_prefix_space": needs_prefix_space(str(data.get("model_type", "")))}
        return data

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


def load_tokenizer(model_ref: str, revision: str | None = None) -> Any:
    """Load the fast tokenizer of a model reference (Hub id, folder or package:...).

    Raises:
        ModelError: the tokenizer is not a fast one (word ids are needed to align labels).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_ref(model_ref), revision=revision, use_fast=True)
    if not tokenizer.is_fast:
        raise ModelError(f"model '{model_ref}': no fast tokenizer; word-level label alignment needs one")
    return tokenizer


def with_prefix_space(tokenizer: Any) -> Any:
    """A copy of a fast tokenizer that puts a space before every pre-split word, as byte-level BPE needs."""
    # Same class and settings over the same vocabulary, as transformers' own train_new_from_iterator rebuilds one.
    settings = {**tokenizer.init_kwargs, "add_prefix_space": True}
    return type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer, **settings)


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


@dataclass
class WordEncoder:
    """A fast tokenizer bound to a preprocessing contract: pre-split words in, model windows out.

    The prefix space comes from the contract's model type, not from how the tokenizer was loaded: a RoBERTa
    tokenizer loaded without `add_prefix_space` is replaced by a copy that has it.
    """

    tokenizer: Any
    prep: Preprocessing

    def __post_init__(self) -> None:
        if self.prep.add_prefix_space and not getattr(self.tokenizer, "add_prefix_space", False):
            self.tokenizer = with_prefix_space(self.tokenizer)

    @cached_property
    def layout(self) -> tuple[list[int], list[int]]:
        """The special tokens a single sequence gets before and after its content ([CLS] … [SEP], <s> … </s>)."""
        # Asked once per encoder: encoding needs it per sentence, and the tokenizer's attribute lookups made it
        # 2 % of serving time when asked each time.
        marker = -7  # not a real id: find where content goes in the built sequence
        built = self.tokenizer.build_inputs_with_special_tokens([marker])
        at = built.index(marker)
        return list(built[:at]), list(built[at + 1 :])

    @cached_property
    def budget(self) -> int:
        """Subwords of content a window holds once its special tokens are in."""
        prefix, suffix = self.layout
        return self.prep.max_length - len(prefix) - len(suffix)

    def subwords(self, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Subword ids of each word of each sentence, with this encoder's tokenizer (see `subwords_per_word`)."""
        return subwords_per_word(self.tokenizer, sentences)

    def encode(
        self,
        words: Sequence[str],
        label_ids: Sequence[int] | None = None,
        context_left: Sequence[str] = (),
        context_right: Sequence[str] = (),
        pieces: list[list[int]] | None = None,
        context_pieces: tuple[list[list[int]], list[list[int]]] | None = None,
    ) -> list[Window]:
        """Encode one sentence as one or more windows.

        Args:
            words: The sentence's words.
            label_ids: Gold label ids per word, for training; None for inference (labels then all -100).
            context_left: Words of the preceding sentences of the document (used only with document_context).
            context_right: Words of the following sentences.
            pieces: Subword ids per word when already computed (a batch call is much faster).
            context_pieces: Likewise for the left and right context.

        Returns:
            Windows whose `word_ids` index into `words`; every word appears in at least one window.
        """
        if pieces is None:
            pieces = self._sentence_subwords(words)
        spans = window_spans([len(p) for p in pieces], self.budget, self.prep.stride)
        prefix, suffix = self.layout
        windows = []
        for start, end in spans:
            ids, word_ids, labels = self._content(words, pieces, range(start, end), label_ids)
            if self.prep.document_context and len(spans) == 1 and len(ids) < self.budget:
                if context_pieces is None:
                    context_pieces = (self._sentence_subwords(context_left), self._sentence_subwords(context_right))
                ids, word_ids, labels = _add_context(ids, word_ids, labels, self.budget, context_pieces)
            windows.append(
                Window(
                    input_ids=prefix + ids + suffix,
                    word_ids=[NO_WORD] * len(prefix) + word_ids + [NO_WORD] * len(suffix),
                    labels=[IGNORE] * len(prefix) + labels + [IGNORE] * len(suffix),
                )
            )
        return windows

    def _content(
        self, words: Sequence[str], pieces: list[list[int]], span: range, label_ids: Sequence[int] | None
    ) -> tuple[list[int], list[int], list[int]]:
        """Token ids, word indices and labels of the words in `span`, each cut to what a window holds."""
        ids: list[int] = []
        word_ids: list[int] = []
        labels: list[int] = []
        for j in span:
            piece = pieces[j][: self.budget]
            if len(pieces[j]) > self.budget:
                logger.warning("word %r has %d subwords, more than a window holds; truncated", words[j], len(pieces[j]))
            first = IGNORE if label_ids is None else label_ids[j]
            rest = IGNORE
            if label_ids is not None and self.prep.label_all_subwords:
                rest = _continuation(first, self.prep.labels)
            ids += piece
            word_ids += [j] * len(piece)
            labels += [first] + [rest] * (len(piece) - 1)
        return ids, word_ids, labels

    def _sentence_subwords(self, words: Sequence[str]) -> list[list[int]]:
        return self.subwords([words])[0] if words else []


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
    pieces: tuple[list[list[int]], list[list[int]]],
) -> tuple[list[int], list[int], list[int]]:
    """Fill the room a window's content leaves with the end of the left context and the start of the right."""
    room = budget - len(ids)
    left_ids = [t for p in pieces[0] for t in p]
    right_ids = [t for p in pieces[1] for t in p]
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
