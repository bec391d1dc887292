"""What a `data` config section points at: the files of a source, its train/validation/test split files, and
reading it into sentences per split (one file is split by seed; a folder names its splits; the Hub has its own).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from ner_pipeline.config import DataConfig
from ner_pipeline.errors import DataError
from ner_pipeline.readers import JSONL_SUFFIXES, SPLITS, Sentence, read_conll, read_hub, read_jsonl, wnut16_path

# Accepted file names per split, in order of preference (extensions .txt, .conll, .iob or none).
SPLIT_NAMES = {
    "train": ("train", "eng.train"),
    "validation": ("validation", "valid", "dev", "testa", "eng.testa"),
    "test": ("test", "testb", "eng.testb"),
}
CONLL_SUFFIXES = ("", ".txt", ".conll", ".iob", ".bio", ".tsv")


def split_sentences(
    sentences: list[Sentence], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[Sentence]]:
    """Shuffle with `seed` and cut into train/validation/test by `fractions` (deterministic, disjoint).

    Each split keeps the file's order, so neighbouring sentences of a document stay neighbours.
    """
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * len(order))
    n_valid = round(fractions[1] * len(order))
    cuts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }
    return {split: [sentences[i] for i in sorted(idx)] for split, idx in cuts.items()}


def find_split_files(folder: Path, extensions: Iterable[str] = CONLL_SUFFIXES) -> dict[str, Path]:
    """Find train/validation/test files in a folder by their usual names.

    Raises:
        DataError: a split has no file; lists what was looked for.
    """
    extensions = tuple(extensions)
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        candidates = [folder / f"{n}{ext}" for n in names for ext in extensions]
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            tried = ", ".join(f"{n}{{{','.join(extensions)}}}" for n in names)
            raise DataError(f"{folder}: no {split} file (looked for {tried})")
        found[split] = match
    return found


def source_files(cfg: DataConfig) -> list[Path]:
    """The files a file-based source reads (their contents go into the artifact key); none for the Hub."""
    if cfg.source == "wnut16":
        return [wnut16_path()]
    if cfg.source == "hub":
        return []
    path = Path(str(cfg.path))
    if path.is_file():
        return [path]
    if path.is_dir():
        return list(find_split_files(path, JSONL_SUFFIXES if cfg.source == "jsonl" else CONLL_SUFFIXES).values())
    raise DataError(f"data.path: {path} does not exist (source '{cfg.source}')")


def read_source(cfg: DataConfig) -> tuple[dict[str, list[Sentence]], dict[str, str]]:
    """Read the configured source into train/validation/test sentences (tags as found, not yet normalised).

    Returns:
        Sentences per split and, per split, where they came from (for error messages).

    Raises:
        DataError: the path does not exist, a split file is missing, or a file is malformed.
    """
    if cfg.source == "hub":
        return read_hub(cfg)
    files = source_files(cfg)
    reader = read_jsonl if cfg.source == "jsonl" else read_conll
    if len(files) == 1:
        sentences = reader(files[0])
        how = f"{len(sentences)} sentences split {'/'.join(map(str, cfg.split_fractions))} by seed {cfg.split_seed}"
        origin = f"{files[0]} ({how})"
        return split_sentences(sentences, cfg.split_fractions, cfg.split_seed), dict.fromkeys(SPLITS, origin)
    return {s: reader(p) for s, p in zip(SPLITS, files, strict=True)}, {
        s: str(p) for s, p in zip(SPLITS, files, strict=True)
    }


def evaluation_source(data: str, cfg: DataConfig) -> DataConfig:
    """The data section pointed at `data`. A wnut16 section names no path, so the source is read off `data`:
    a folder of JSON Lines, a folder of CoNLL files, else a Hub dataset id."""
    if cfg.source != "wnut16":
        return cfg.model_copy(update={"path": data})
    if data == "wnut16":
        return cfg
    folder = Path(data)
    source = ("jsonl" if any(folder.glob("*.jsonl")) else "conll") if folder.is_dir() else "hub"
    return cfg.model_copy(update={"source": source, "path": data, "scheme": "auto"})
