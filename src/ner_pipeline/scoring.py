"""Word-level validation scores during training: the Trainer's `compute_metrics` and its logits reducer.

Training picks its best checkpoint and stops early on these numbers, so they are the word-level seqeval scores the
evaluate stage reports, not subword or per-window ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ner_pipeline.preprocessing import IGNORE, merge_windows


@dataclass
class WordScorer:
    """Turns window-level predictions of a split into word-level seqeval scores (the Trainer's compute_metrics).

    Only the first subword of each word is scored, in the window where it has the most context, so the numbers
    are the word-level ones evaluate reports, not subword or per-window ones.
    """

    word_ids: list[list[int]]
    labels: list[list[int]]
    groups: list[list[int]]  # window rows per sentence, in order
    names: list[str]

    @classmethod
    def from_split(cls, split: Any, names: list[str]) -> WordScorer:
        """Scorer for the rows of a tokenized split, in whatever order they are stored."""
        rows: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for row, (sentence, window) in enumerate(zip(split["sentence_id"], split["window"], strict=True)):
            rows[sentence].append((window, row))
        # Windows in sentence order, so merge_windows breaks ties the same way however the rows are sorted.
        groups = [[row for _, row in sorted(rows[s])] for s in sorted(rows)]
        return cls(split["word_ids"], split["labels"], groups, names)

    def words(self, per_token: Sequence[Sequence[int]]) -> tuple[list[list[str]], list[list[str]]]:
        """Gold and predicted word labels, one list per sentence."""
        gold, pred = [], []
        for rows in self.groups:
            n_words = max(max(self.word_ids[r]) for r in rows) + 1
            word_ids = [self.word_ids[r] for r in rows]
            gold_ids = merge_windows(word_ids, [self.labels[r] for r in rows], n_words)
            pred_ids = merge_windows(word_ids, [per_token[r] for r in rows], n_words)
            gold.append([self.names[i] if i != IGNORE else "O" for i in gold_ids])
            pred.append([self.names[i] for i in pred_ids])
        return gold, pred

    def score(self, per_token: Sequence[Sequence[int]]) -> dict[str, float]:
        """Entity precision, recall and F1 (seqeval, conlleval mode) of per-token label ids, one row per window."""
        from ner_pipeline.evaluate import entity_scores

        gold, pred = self.words(per_token)
        scores = entity_scores(gold, pred, mode="conlleval")
        return {k: scores[k] for k in ("precision", "recall", "f1")}

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        # Rows arrive in dataset order (see trainer_class), right-padded with -100 past each window's length.
        return self.score([row.tolist() for row in np.asarray(eval_pred.predictions)])


def argmax_logits(logits: Any, labels: Any) -> Any:
    """Keep label ids instead of logits between evaluation batches (num_labels times less memory)."""
    return logits.argmax(dim=-1)
