"""Inference: one predictor over backends `torch`, `onnx` and `onnx-int8`.

Raw text is cut into words the way the training corpus was (`ner_pipeline.words`), and into units: its lines and,
for a model trained with document context, their sentences. Each unit is encoded with the model's saved
preprocessing contract (the same windows as training and, with document context, the neighbouring sentences of the
same text as its context, as training gave it); the windows run in length-sorted batches and are read back to one
label per word (`ner_pipeline.decoding`). Entities carry label, surface text, start/end offsets into the original
string (in code points), and a score. Pre-split words give one label per word (what evaluation uses):
`Predictor.predict_words` and `Predictor.predict_words_with_scores`.

Backends (`ner_pipeline.backends`) only map padded token ids to logits; windowing, batching and merging live in
`Predictor`, so every backend sees exactly the same inputs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from ner_pipeline.backends import ONNX_FILES, Backend, OnnxBackend, TorchBackend, onnx_file
from ner_pipeline.backends import PARITY_FILE as PARITY_FILE  # re-exported: export, serve and tests read it here
from ner_pipeline.backends import accepted_variants as accepted_variants
from ner_pipeline.backends import read_parity as read_parity
from ner_pipeline.decoding import Aggregation, LabelScheme, TokenLayout, entity_spans, word_rows
from ner_pipeline.errors import ModelError, PredictError
from ner_pipeline.preprocessing import Preprocessing, Window, WordEncoder, load_tokenizer
from ner_pipeline.tokenize import document_neighbours
from ner_pipeline.words import Word, split_sentences
from ner_pipeline.words import split_words as split_words  # re-exported: the word splitter the predictor uses

logger = logging.getLogger(__name__)

BackendName = Literal["torch", "onnx", "onnx-int8"]
# Padded tokens per forward pass. On CPU, small passes win: their activations stay in cache and short sentences pay
# little padding. bench/infer.py chooses them on CoNLL-2003 validation and records whether these defaults agree
# (`tuning.<backend>.matches_code` in bench/results/infer.json); change them when it says they do not.
BATCH_TOKENS = {"torch": 256, "onnx": 128, "onnx-int8": 64}
# transformers fills a config without id2label with LABEL_0, LABEL_1, ...: a base model, not a fine-tuned tagger
PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")
# Subwords of this many distinct words are remembered: news text repeats its words, and a tokenizer call per batch
# was the largest cost around the graph. Entries are never dropped (threads may read while another adds).
CACHED_WORDS = 50_000
# Words whose subwords must be the same alone as in a sentence for the cache to be used (see `Predictor.__init__`).
PROBE = ["The", "U.S.", "Schwarzenegger", "'s", "café", "1,000", "東京", "e\u0301té", "don't"]
Context = tuple[Sequence[str], Sequence[str]]
Neighbours = tuple[Sequence[int], Sequence[int]]


class Entity(BaseModel):
    """An entity found in raw text."""

    label: str
    text: str
    start: int
    end: int
    score: float


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the longest sequence with `pad_id`, and the attention mask that hides the padding."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    mask = (np.arange(lengths.max(initial=0)) < lengths[:, None]).astype(np.int64)
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask.astype(bool)] = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(lengths.sum()))
    return ids, mask


class Predictor:
    """Tags raw texts or pre-split sentences with a fine-tuned model on a chosen backend."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: Any,
        prep: Preprocessing,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.backend = backend
        self.encoder = WordEncoder(tokenizer, prep)
        self.prep = prep
        self.labels = prep.labels
        self.scheme = LabelScheme.of(prep.labels)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or BATCH_TOKENS.get(backend.name, 256)
        self.pad_id = tokenizer.pad_token_id or 0
        # A fast tokenizer encodes each pre-split word on its own (normalizer, pre-tokenizer and model run per
        # word), so a word's subwords can be remembered; checked here on a probe, the cache is off otherwise.
        alone = [pieces[0] for pieces in self.encoder.subwords([[w] for w in PROBE])]
        self._pieces: dict[str, list[int]] | None = {} if self.encoder.subwords([PROBE])[0] == alone else None
        if self._pieces is None:
            logger.info("this tokenizer encodes a word differently within a sentence: subwords are not cached")

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @classmethod
    def load(
        cls,
        model_dir: Path,
        backend: BackendName = "torch",
        onnx_dir: Path | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
    ) -> Predictor:
        """Load a model folder written by the train stage (and, for ONNX backends, the export folder).

        Raises:
            ModelError: the folder lacks labels or preprocessing.json, or the ONNX file is missing.

        `max_batch_tokens` (padded tokens per forward pass) defaults to the backend's `BATCH_TOKENS`.
        """
        from transformers import AutoConfig

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ModelError(f"{model_dir}: not a model folder (no config.json)")
        config = AutoConfig.from_pretrained(str(model_dir))
        prep = Preprocessing.load(model_dir)
        names = [config.id2label[i] for i in range(len(config.id2label))] if config.id2label else []
        if all(PLACEHOLDER_LABEL.fullmatch(n) for n in names):
            raise ModelError(
                f"{model_dir}/config.json: no id2label (only placeholder labels {names}); this is a base model, "
                "not a fine-tuned token classifier; pass the train stage's model/ folder"
            )
        if names != prep.labels:
            raise ModelError(f"{model_dir}: config.json labels {names} differ from preprocessing.json {prep.labels}")
        tokenizer = load_tokenizer(str(model_dir))  # the encoder gives it the prefix space the contract asks for
        engine: Backend
        if backend == "torch":
            engine = TorchBackend(model_dir, threads)
        elif backend in ONNX_FILES:
            engine = OnnxBackend(onnx_file(Path(onnx_dir or model_dir), backend), backend, threads)
        else:
            raise ModelError(f"backend must be torch, onnx or onnx-int8 (got {backend!r})")
        return cls(engine, tokenizer, prep, batch_size, max_batch_tokens)

    # --- words -------------------------------------------------------------------------------------------------

    def word_probabilities(
        self,
        sentences: Sequence[Sequence[str]],
        contexts: Sequence[Context] | None = None,
        aggregation: Aggregation = "first",
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """Label probabilities per word (n_words x n_labels) for each sentence.

        Args:
            sentences: Pre-split words; an empty sentence gives a 0 x n_labels array.
            contexts: Left/right context words per sentence (the neighbouring sentences of its document); used
                only when the model was trained with document context, ignored otherwise.
            aggregation: How subword probabilities make a word's: its first subword, their average, or the
                subword with the highest score (as in Hugging Face pipelines).
            batch_size: Windows per forward pass; None keeps the predictor's.

        Raises:
            PredictError: an empty list, a sentence that is not a list of strings, contexts of another length, a
                batch size below 1, or an unknown aggregation.
        """
        self._check(sentences, contexts)
        if batch_size is not None and batch_size < 1:
            raise PredictError(f"batch_size must be at least 1 (got {batch_size})")
        probs, offsets = self._word_rows(sentences, aggregation, batch_size, contexts=contexts)
        return np.split(probs, offsets[1:-1])

    def predict_words(
        self,
        sentences: Sequence[Sequence[str]],
        contexts: Sequence[Context] | None = None,
        batch_size: int | None = None,
    ) -> list[list[str]]:
        """One IOB2 label per word for each pre-split sentence (arguments as in `word_probabilities`)."""
        return [
            [self.labels[k] for k in p.argmax(-1)]
            for p in self.word_probabilities(sentences, contexts, "first", batch_size)
        ]

    def predict_words_with_scores(
        self,
        sentences: Sequence[Sequence[str]],
        contexts: Sequence[Context] | None = None,
        batch_size: int | None = None,
    ) -> tuple[list[list[str]], list[list[float]]]:
        """Labels per word as `predict_words`, plus the probability the model gave each chosen label."""
        probs = self.word_probabilities(sentences, contexts, "first", batch_size)
        labels = [[self.labels[k] for k in p.argmax(-1)] for p in probs]
        scores = [p.max(-1).astype(float).tolist() for p in probs]
        return labels, scores

    def _word_rows(
        self,
        sentences: Sequence[Sequence[str]],
        aggregation: Aggregation,
        batch_size: int | None = None,
        contexts: Sequence[Context] | None = None,
        neighbours: Sequence[Neighbours] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of every word of every sentence, laid end to end, and where each sentence starts."""
        offsets = np.cumsum([0, *(len(words) for words in sentences)])
        windows, owners = self._encode(sentences, contexts, neighbours)
        if not windows:
            return np.zeros((0, len(self.labels)), dtype=np.float32), offsets
        batches = self._batches([len(w.input_ids) for w in windows], batch_size or self.batch_size)
        logits = self._run(windows, batches)
        run_order = [j for batch in batches for j in batch]
        layout = TokenLayout.build([w.word_ids for w in windows], run_order, offsets[owners])
        return word_rows(layout, logits, int(offsets[-1]), aggregation), offsets

    def _encode(
        self,
        sentences: Sequence[Sequence[str]],
        contexts: Sequence[Context] | None,
        neighbours: Sequence[Neighbours] | None,
    ) -> tuple[list[Window], list[int]]:
        """Every sentence's windows and, per window, its sentence; subwords come from a few batch tokenizer calls
        (one call per sentence is much slower), and neighbours reuse the subwords of their own sentences."""
        present = [i for i, words in enumerate(sentences) if words]
        pieces = dict(zip(present, self._subwords([sentences[i] for i in present]), strict=True))
        around: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
        if self.prep.document_context and neighbours is not None:
            for i in present:
                before, after = neighbours[i]
                around[i] = (
                    [p for b in before for p in pieces.get(b, [])],
                    [p for a in after for p in pieces.get(a, [])],
                )
        elif self.prep.document_context and contexts is not None:
            lefts = self._subwords([contexts[i][0] for i in present])
            rights = self._subwords([contexts[i][1] for i in present])
            around = dict(zip(present, zip(lefts, rights, strict=True), strict=True))
        windows: list[Window] = []
        owners: list[int] = []
        for i in present:
            encoded = self.encoder.encode(sentences[i], pieces=pieces[i], context_pieces=around.get(i))
            windows += encoded
            owners += [i] * len(encoded)
        return windows, owners

    def _subwords(self, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Subword ids per word of each sentence, tokenizing only the words not seen before."""
        cache = self._pieces
        if cache is None:
            return self.encoder.subwords([list(s) for s in sentences])
        missing = list({w for words in sentences for w in words if w not in cache})
        fresh = dict(zip(missing, (p[0] for p in self.encoder.subwords([[w] for w in missing])), strict=True))
        if len(cache) < CACHED_WORDS:
            cache.update(fresh)
        return [[fresh[w] if w in fresh else cache[w] for w in words] for words in sentences]

    # --- raw text ------------------------------------------------------------------------------------------------

    def predict(self, texts: str | Sequence[str], aggregation: Aggregation = "first") -> list[list[Entity]]:
        """Entities in raw text, with character offsets into each original string.

        Each line of a text is a unit of its own (a training sentence never holds a line break). A model trained
        with document context also has its lines cut into sentences, and sees each sentence with up to two
        sentences before and after it from the same text as context, as in training; a sentence-level model
        keeps a line whole (windowed when long), since cutting a unit it was trained on (a tweet of two sentences)
        would hide half of it.

        Raises:
            PredictError: an empty list, an item that is not a string or holds a lone surrogate, or an unknown
                aggregation.
        """
        texts = self._check_texts(texts)
        words = [split_words(t) for t in texts]
        sentences: list[list[str]] = []
        documents: list[int] = []
        sentence_start: list[int] = []  # per sentence: its first word's index over all texts
        first_word = 0
        for t, (text, text_words) in enumerate(zip(texts, words, strict=True)):
            for sentence in split_sentences(text, text_words, terminators=self.prep.document_context):
                sentences.append([w for w, _, _ in text_words[sentence.start : sentence.end]])
                documents.append(t)
                sentence_start.append(first_word + sentence.start)
            first_word += len(text_words)
        neighbours = None
        if self.prep.document_context:
            neighbours = [document_neighbours(documents, i) for i in range(len(sentences))]
        probs, _ = self._word_rows(sentences, aggregation, neighbours=neighbours)
        return self._entities(texts, words, probs, sentence_start)

    def _entities(
        self, texts: Sequence[str], words: list[list[Word]], probs: np.ndarray, sentence_start: list[int]
    ) -> list[list[Entity]]:
        """The entities of every text, read from the probabilities of all their words laid end to end."""
        result: list[list[Entity]] = [[] for _ in texts]
        if not len(probs):
            return result
        best = probs.argmax(-1)
        chosen = np.cumsum(np.concatenate(([0.0], probs[np.arange(len(best)), best].astype(np.float64))))
        opens = np.zeros(len(best), dtype=bool)
        opens[sentence_start] = True
        firsts, lasts, kinds = entity_spans(self.scheme, best, opens)
        text_offsets = np.cumsum([0, *(len(w) for w in words)])
        owners = np.searchsorted(text_offsets, firsts, side="right") - 1
        scores = (chosen[lasts + 1] - chosen[firsts]) / (lasts - firsts + 1)
        for first, last, kind, t, score in zip(
            firsts.tolist(), lasts.tolist(), kinds.tolist(), owners.tolist(), scores.tolist(), strict=True
        ):
            start, end = words[t][first - text_offsets[t]][1], words[t][last - text_offsets[t]][2]
            text = texts[t][start:end]
            result[t].append(
                Entity.model_construct(label=self.scheme.types[kind], text=text, start=start, end=end, score=score)
            )
        return result

    # --- checks and batching ------------------------------------------------------------------------------------

    def _check_texts(self, texts: str | Sequence[str]) -> Sequence[str]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or len(texts) == 0:
            raise PredictError("texts: expected a non-empty list of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise PredictError(f"texts[{i}]: expected a string, got {type(text).__name__}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise PredictError(
                    f"texts[{i}]: position {exc.start} holds a lone surrogate ({text[exc.start]!r}), not a character"
                ) from None
        return texts

    def _check(self, sentences: Sequence[Sequence[str]], contexts: Sequence[Context] | None = None) -> None:
        if not isinstance(sentences, Sequence) or isinstance(sentences, str) or len(sentences) == 0:
            raise PredictError("sentences: expected a non-empty list of word lists")
        for i, words in enumerate(sentences):
            if not isinstance(words, Sequence) or isinstance(words, str):
                raise PredictError(f"sentences[{i}]: expected a list of words, got {type(words).__name__}")
            bad = next((w for w in words if not isinstance(w, str)), None)
            if bad is not None:
                raise PredictError(f"sentences[{i}]: expected a list of strings, got a {type(bad).__name__}: {bad!r}")
        if contexts is not None and len(contexts) != len(sentences):
            raise PredictError(
                f"contexts: one (left, right) pair per sentence expected, got {len(contexts)} for {len(sentences)}"
            )

    def _batches(self, lengths: Sequence[int], batch_size: int) -> list[list[int]]:
        """Indices grouped into batches of similar length: at most `batch_size` sequences and, padding included,
        at most `max_batch_tokens` tokens, so a few long sentences do not make every short one pay for padding."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[i]  # ascending, so the newest is the widest
            if current and (len(current) >= batch_size or (len(current) + 1) * width > self.max_batch_tokens):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run(self, windows: Sequence[Window], batches: list[list[int]]) -> np.ndarray:
        """Logits of every token of every window (padding left out), batch after batch, laid end to end."""
        outputs = []
        for batch in batches:
            ids, mask = pad_batch([windows[i].input_ids for i in batch], self.pad_id)
            outputs.append(self.backend.logits(ids, mask)[mask.astype(bool)])
        return np.concatenate(outputs)
