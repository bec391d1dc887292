"""Inference: one predictor over backends `torch`, `onnx` and `onnx-int8`.

Raw text is split into words with exact character offsets, encoded with the model's saved preprocessing contract
(the same windows as training), run in length-sorted batches, and merged back to one label per word; entities
carry label, surface text, start/end offsets into the original string, and a score. Pre-split words give one
label per word (what evaluation uses): `Predictor.predict_words` and `Predictor.predict_words_with_scores`.

Backends (`ner_pipeline.backends`) only map padded token ids to logits; windowing, batching and merging live in
`Predictor`, so every backend sees exactly the same inputs.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import regex
from pydantic import BaseModel

from ner_pipeline.backends import Backend, OnnxBackend, TorchBackend
from ner_pipeline.errors import ModelError, PredictError
from ner_pipeline.preprocessing import Preprocessing, Window, WordEncoder, load_tokenizer, merge_windows
from ner_pipeline.spans import extract_spans

logger = logging.getLogger(__name__)

Aggregation = Literal["first", "average", "max"]
BackendName = Literal["torch", "onnx", "onnx-int8"]
# Words are runs of letters, marks (accents), digits and joiners; any other non-space character stands alone.
WORD_PATTERN = regex.compile(r"[\p{L}\p{M}\p{N}_]+(?:['’\-.][\p{L}\p{M}\p{N}_]+)*|[^\s\p{L}\p{M}\p{N}_]\p{M}*")
# backend → ONNX files to try, best first (the graph-optimized fp32 file when the export made one)
ONNX_FILES = {"onnx": ("model_optimized.onnx", "model.onnx"), "onnx-int8": ("model_quantized.onnx",)}
PARITY_FILE = "parity.json"  # written by the export stage: per variant, its file and whether it was accepted
# Padded tokens per forward pass. On CPU, small passes win: their activations stay in cache and short sentences pay
# little padding. Measured on CoNLL-2003 test in requests of 32 (MiniLM, 2 AVX2 cores): onnx-int8 263 → 337 → 344
# sentences/s going from 1024 to 128 to 64 tokens, onnx 178 → 223 from 1024 to 128; torch peaks at 256
# (170 → 198), where its larger per-call overhead is paid back.
BATCH_TOKENS = {"torch": 256, "onnx": 128, "onnx-int8": 64}
# transformers fills a config without id2label with LABEL_0, LABEL_1, ...: a base model, not a fine-tuned tagger
PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")
Context = tuple[Sequence[str], Sequence[str]]


def read_parity(folder: Path | None) -> dict[str, Any] | None:
    """The export's parity record in `folder`; None without one (no export folder, or an export made by hand)."""
    record = folder / PARITY_FILE if folder is not None else None
    if record is None or not record.is_file():
        return None
    return json.loads(record.read_text(encoding="utf-8"))


def accepted_variants(report: Mapping[str, Any]) -> dict[str, str]:
    """The variants a parity record accepted, each with its ONNX file: {"onnx-int8": "model_quantized.onnx", ...}."""
    return {name: row.get("file") for name, row in report.items() if isinstance(row, dict) and row.get("accepted")}


def onnx_file(folder: Path, backend: str) -> Path:
    """The ONNX file to load for `backend`: the best one present that the export's parity check accepted.

    Without a parity record (an export made by hand) the best file present is used; when the record accepts none
    of them, the backend was asked for explicitly, so the best file present is loaded with a warning.
    """
    present = [folder / name for name in ONNX_FILES[backend] if (folder / name).is_file()]
    if not present:
        return folder / ONNX_FILES[backend][-1]  # OnnxBackend names the missing file
    report = read_parity(folder)
    if report is None:
        return present[0]
    accepted = set(accepted_variants(report).values())
    chosen = next((path for path in present if path.name in accepted), None)
    if chosen is None:
        logger.warning(
            "%s: the export's parity check rejected %s; loading it because it was asked for", folder, present[0].name
        )
        return present[0]
    return chosen


class Entity(BaseModel):
    """An entity found in raw text."""

    label: str
    text: str
    start: int
    end: int
    score: float


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the longest sequence with `pad_id`, and the attention mask that hides the padding."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return ids, mask


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Words of raw text with their character offsets: `text[start:end] == word` always holds."""
    return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(text)]


@dataclass
class _Job:
    sentence: int
    window: Window


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
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or BATCH_TOKENS.get(backend.name, 256)
        self.pad_id = tokenizer.pad_token_id or 0

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
    ) -> Predictor:
        """Load a model folder written by the train stage (and, for ONNX backends, the export folder).

        Raises:
            ModelError: the folder lacks labels or preprocessing.json, or the ONNX file is missing.
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
        return cls(engine, tokenizer, prep, batch_size)

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
            PredictError: an empty list, a sentence that is not a list of strings, contexts of another length, or
                a batch size below 1.
        """
        self._check(sentences, contexts)
        if batch_size is not None and batch_size < 1:
            raise PredictError(f"batch_size must be at least 1 (got {batch_size})")
        jobs = self._windows(sentences, contexts if self.prep.document_context else None)
        probs = self._run([j.window.input_ids for j in jobs], batch_size or self.batch_size)
        per_sentence: dict[int, tuple[list[list[int]], list[list[np.ndarray | None]]]] = {}
        for job, p in zip(jobs, probs, strict=True):
            ids, values = per_sentence.setdefault(job.sentence, ([], []))
            ids.append(job.window.word_ids)
            values.append(_aggregate(job.window.word_ids, p, aggregation))
        result = []
        for i, words in enumerate(sentences):
            if not words:
                result.append(np.zeros((0, len(self.labels)), dtype=np.float32))
                continue
            ids, values = per_sentence[i]
            result.append(np.stack(merge_windows(ids, values, len(words))))
        return result

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

    def _windows(self, sentences: Sequence[Sequence[str]], contexts: Sequence[Context] | None) -> list[_Job]:
        """Every sentence's windows, tokenized in a few batch calls (one per tokenizer call is much slower)."""
        present = [i for i, words in enumerate(sentences) if words]
        pieces = dict(zip(present, self.encoder.subwords([list(sentences[i]) for i in present]), strict=True))
        context_pieces: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
        if contexts is not None:
            lefts = self.encoder.subwords([list(contexts[i][0]) for i in present])
            rights = self.encoder.subwords([list(contexts[i][1]) for i in present])
            context_pieces = dict(zip(present, zip(lefts, rights, strict=True), strict=True))
        jobs: list[_Job] = []
        for i in present:
            windows = self.encoder.encode(sentences[i], pieces=pieces[i], context_pieces=context_pieces.get(i))
            jobs += [_Job(i, window) for window in windows]
        return jobs

    # --- raw text ------------------------------------------------------------------------------------------------

    def predict(self, texts: str | Sequence[str], aggregation: Aggregation = "first") -> list[list[Entity]]:
        """Entities in raw text, with character offsets into each original string.

        Raises:
            PredictError: an empty list or an item that is not a string.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or len(texts) == 0:
            raise PredictError("texts: expected a non-empty list of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise PredictError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        words = [split_words(t) for t in texts]
        probs = self.word_probabilities([[w for w, _, _ in ws] for ws in words], aggregation=aggregation)
        return [self._entities(t, ws, p) for t, ws, p in zip(texts, words, probs, strict=True)]

    def _entities(self, text: str, words: list[tuple[str, int, int]], probs: np.ndarray) -> list[Entity]:
        if not words:
            return []
        best = probs.argmax(-1)
        tags = [self.labels[k] for k in best]
        entities = []
        for span in extract_spans(tags):
            start, end = words[span.start][1], words[span.end - 1][2]
            score = float(np.mean([probs[j, best[j]] for j in range(span.start, span.end)]))
            entities.append(Entity(label=span.label, text=text[start:end], start=start, end=end, score=score))
        return entities

    # --- batching ----------------------------------------------------------------------------------------------

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

    def _batches(self, sequences: list[list[int]], batch_size: int) -> list[list[int]]:
        """Indices grouped into batches of similar length: at most `batch_size` sequences and, padding included,
        at most `max_batch_tokens` tokens, so a few long sentences do not make every short one pay for padding."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = len(sequences[i])  # ascending, so the newest is the widest
            if current and (len(current) >= batch_size or (len(current) + 1) * width > self.max_batch_tokens):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run(self, sequences: list[list[int]], batch_size: int) -> list[np.ndarray]:
        """Probabilities per token for each sequence, batched by length to limit padding."""
        out: list[np.ndarray | None] = [None] * len(sequences)
        for batch in self._batches(sequences, batch_size):
            ids, mask = pad_batch([sequences[i] for i in batch], self.pad_id)
            probs = softmax(self.backend.logits(ids, mask).astype(np.float32))
            for row, i in enumerate(batch):
                out[i] = probs[row, : len(sequences[i])]
        return out  # type: ignore[return-value]


def _aggregate(word_ids: Sequence[int], probs: np.ndarray, strategy: Aggregation) -> list[np.ndarray | None]:
    """Per position: the word's aggregated probabilities at its first subword in this window, None elsewhere."""
    values: list[np.ndarray | None] = [None] * len(word_ids)
    i = 0
    while i < len(word_ids):
        w = word_ids[i]
        if w < 0:
            i += 1
            continue
        j = i
        while j < len(word_ids) and word_ids[j] == w:
            j += 1
        block = probs[i:j]
        if strategy == "first":
            values[i] = block[0]
        elif strategy == "average":
            values[i] = block.mean(axis=0)
        elif strategy == "max":
            values[i] = block[block.max(axis=-1).argmax()]
        else:
            raise PredictError(f"aggregation must be first, average or max (got {strategy!r})")
        i = j
    return values
