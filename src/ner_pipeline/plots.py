"""The figures the stages write: training curves (train), token confusion and F1 by type (evaluate).

Every figure is drawn with matplotlib's non-interactive Agg backend, so plotting works on servers, in worker
threads and under CI without a display, and is saved as a PNG and closed here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ner_pipeline.spans import OUTSIDE, entity_type

DPI = 100


@contextmanager
def figure(path: Path, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """A new figure and its axes (`plt.subplots(**subplots)`); laid out, saved to `path` and closed on exit."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot picks an interactive backend
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Training curves: losses and validation F1 per evaluation."""
    epochs = [r["epoch"] for r in history]
    with figure(path, nrows=1, ncols=2, figsize=(10, 4)) as (_, (left, right)):
        left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
        left.plot(epochs, [r["eval_loss"] for r in history], "s-", label="validation loss")
        left.set_xlabel("epoch")
        left.set_title("Loss")
        left.legend()
        right.plot(epochs, [r["eval_f1"] for r in history], "o-", color="tab:green")
        right.set_xlabel("epoch")
        right.set_title("Validation entity F1 (conlleval)")
        right.set_ylim(0, 1)


def plot_confusion(gold: list[list[str]], pred: list[list[str]], path: Path) -> None:
    """Token-level confusion matrix by entity type (B-/I- merged), rows normalised to gold."""
    pairs = [
        (entity_type(a), entity_type(b)) for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True)
    ]
    names = [*sorted({x for pair in pairs for x in pair} - {OUTSIDE}), OUTSIDE]
    index = {n: i for i, n in enumerate(names)}
    matrix = np.zeros((len(names), len(names)))
    for a, b in pairs:
        matrix[index[a], index[b]] += 1
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(names) + 2)
    with figure(path, figsize=(size + 1, size)) as (fig, ax):
        image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        for i, j in zip(*np.nonzero(matrix), strict=True):
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title("Token confusion (row-normalised)")


def plot_f1_by_type(splits: Mapping[str, dict[str, Any]], path: Path) -> None:
    """Bar chart of per-type F1 (conlleval) for each split, from the evaluate report's scores."""
    types = sorted({t for s in splits.values() for t in s["conlleval"]["per_type"]})
    with figure(path, figsize=(max(5.0, 0.9 * len(types) + 2), 4)) as (_, ax):
        width = 0.8 / max(len(splits), 1)
        for k, (split, s) in enumerate(splits.items()):
            values = [s["conlleval"]["per_type"].get(t, {}).get("f1", 0.0) for t in types]
            ax.bar(np.arange(len(types)) + k * width, values, width, label=split)
        ax.set_xticks(np.arange(len(types)) + width * (len(splits) - 1) / 2, types, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("F1")
        ax.set_title("Entity F1 by type (conlleval)")
        ax.legend()
