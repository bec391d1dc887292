"""From the model's token outputs to one probability row per word, and from word labels to entity spans, in numpy.

The predictor runs a request's windows in length-sorted batches; here every token of every window sits in one flat
array (`TokenLayout`), so reading the words back is a handful of array operations instead of loops per token:

- a word is read at its first subword (`first`), or from all its subwords (`average`, `max`), in each window
  that holds it;
- when a long sentence's windows overlap, the window where the word's first subword sits farthest from the
  content edges wins (ties: the earlier window), the choice `preprocessing.merge_windows` makes for training and
  evaluation;
- entities are read from IOB2 labels as seqeval (and so conlleval and `spans.extract_spans`) reads them: `B-X`
  starts one, a stray `I-X` (after `O` or another type) starts one too, and no entity crosses a sentence.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ner_pipeline.errors import PredictError
from ner_pipeline.spans import split_tag

Aggregation = Literal["first", "average", "max"]


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass
class TokenLayout:
    """Every token of a request's windows, flattened in the order the windows are run.

    Attributes:
        word: Per token, the word it belongs to, numbered over all sentences of the request; -1 for special
            tokens and document context.
        window: Per token, the index of its window in encoding order (which breaks ties between windows).
        distance: Per token, how far it sits from the nearer edge of its window's content.
        first: Per token, whether it is a word's first subword in its window.
    """

    word: np.ndarray
    window: np.ndarray
    distance: np.ndarray
    first: np.ndarray

    @classmethod
    def build(
        cls, word_ids: Sequence[Sequence[int]], run_order: Sequence[int], word_offsets: Sequence[int]
    ) -> TokenLayout:
        """Lay out windows given by their per-token word ids (-1: no word), run in `run_order`.

        Args:
            word_ids: Per window (encoding order), the index of each token's word in its sentence, or -1.
            run_order: Window indices in the order their tokens were run (and their outputs concatenated).
            word_offsets: Per window (encoding order), the number of words of the request before its sentence.
        """
        lengths = np.fromiter((len(word_ids[j]) for j in run_order), dtype=np.int64, count=len(run_order))
        total = int(lengths.sum())
        local = np.fromiter(itertools.chain.from_iterable(word_ids[j] for j in run_order), np.int64, count=total)
        window = np.repeat(np.asarray(run_order, dtype=np.int64), lengths)
        position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        valid = local >= 0
        previous = np.concatenate(([-1], local[:-1]))
        first = valid & ((local != previous) | (position == 0))
        # A window's content is one run of valid tokens (context and specials sit outside it): its edges are the
        # first and last valid positions of the window.
        runs = np.flatnonzero(valid)
        new_run = np.concatenate(([True], window[runs[1:]] != window[runs[:-1]])) if len(runs) else np.zeros(0, bool)
        starts = np.flatnonzero(new_run)
        sizes = np.diff(np.append(starts, len(runs)))
        low = np.repeat(position[runs[starts]], sizes)
        high = np.repeat(position[runs[np.append(starts[1:], len(runs)) - 1]], sizes)
        distance = np.full(total, -1, dtype=np.int64)
        distance[runs] = np.minimum(position[runs] - low, high - position[runs])
        offsets = np.asarray(word_offsets, dtype=np.int64)
        word = np.where(valid, offsets[window] + local, -1)
        return cls(word=word, window=window, distance=distance, first=first)


def word_rows(layout: TokenLayout, logits: np.ndarray, n_words: int, aggregation: Aggregation) -> np.ndarray:
    """Label probabilities per word (n_words x n_labels) from the logits of every token in `layout`.

    Raises:
        PredictError: an unknown aggregation strategy.
        ValueError: some word appears in no window (a bug in windowing).
    """
    if aggregation == "first":
        at = np.flatnonzero(layout.first)
        values = softmax(logits[at].astype(np.float32))
    elif aggregation in ("average", "max"):
        at, values = _subword_blocks(layout, logits, aggregation)
    else:
        raise PredictError(f"aggregation must be first, average or max (got {aggregation!r})")
    word, distance, window = layout.word[at], layout.distance[at], layout.window[at]
    order = np.lexsort((window, -distance, word))  # per word: the most central occurrence, then the earliest window
    ranked = word[order]
    keep = np.concatenate(([True], ranked[1:] != ranked[:-1])) if len(ranked) else np.zeros(0, bool)
    if int(keep.sum()) != n_words:
        missing = sorted(set(range(n_words)) - set(ranked.tolist()))
        raise ValueError(f"words {missing[:10]} appear in no window")
    return values[order[keep]]


def _subword_blocks(layout: TokenLayout, logits: np.ndarray, aggregation: Aggregation) -> tuple[np.ndarray, np.ndarray]:
    """Per word and window: where its first subword is, and the mean of its subwords' probabilities (`average`)
    or the probabilities of its most confident subword (`max`)."""
    valid = np.flatnonzero(layout.word >= 0)
    probs = softmax(logits[valid].astype(np.float32))
    block_starts = np.flatnonzero(layout.first[valid])
    if aggregation == "average":
        counts = np.diff(np.append(block_starts, len(valid)))[:, None]
        return valid[block_starts], np.add.reduceat(probs, block_starts, axis=0) / counts
    block = np.cumsum(layout.first[valid]) - 1
    best = np.lexsort((-probs.max(axis=-1), block))  # by block, most confident first (stable: ties keep order)
    return valid[block_starts], probs[best[block_starts]]


@dataclass
class LabelScheme:
    """A label list read once for span extraction: each label's entity type (-1 for O) and whether it is B-."""

    types: list[str]
    type_of: np.ndarray
    begins: np.ndarray

    @classmethod
    def of(cls, labels: Sequence[str]) -> LabelScheme:
        parsed = [split_tag(label) for label in labels]
        types = sorted({t for _, t in parsed if t is not None})
        type_of = np.array([-1 if t is None else types.index(t) for _, t in parsed], dtype=np.int64)
        begins = np.array([prefix == "B" for prefix, _ in parsed], dtype=bool)
        return cls(types, type_of, begins)


def entity_spans(
    scheme: LabelScheme, best: np.ndarray, sentence_start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entities in the word labels of many sentences laid end to end.

    Args:
        scheme: The model's labels.
        best: Per word, the chosen label id.
        sentence_start: Per word, whether it opens a sentence (an entity never continues across one).

    Returns:
        Per entity: its first word, its last word (inclusive) and its type index into `scheme.types`.
    """
    kind = scheme.type_of[best]
    member = kind >= 0
    previous = np.concatenate(([-1], kind[:-1]))
    previous[sentence_start] = -1
    start = member & (scheme.begins[best] | (previous != kind))
    continues = member & ~start
    end = member & ~np.append(continues[1:], False)
    firsts = np.flatnonzero(start)
    return firsts, np.flatnonzero(end), kind[firsts]
