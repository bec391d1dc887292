"""Evaluate stage: entity-level scores, confidence interval, error analysis, plots and reports.

Scores are seqeval's: `conlleval` mode (seqeval's default, the number papers report) and `strict` IOB2 mode, with
per-type precision/recall/F1/support and token accuracy. Beyond those: span-only F1 (boundaries right, type
ignored), a bootstrap confidence interval for F1 over sentences, and error buckets per type. The stage predicts
each split with the model folder's own preprocessing; `report` writes the results and `plots` draws them.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key
from ner_pipeline.config import EvaluateConfig
from ner_pipeline.errors import DataError
from ner_pipeline.predictions import PREDICTIONS_FILE, write_predictions
from ner_pipeline.report import EvalReport, Tags, write_report
from ner_pipeline.spans import OUTSIDE, check_tag, entity_type, extract_spans

logger = logging.getLogger(__name__)

STAGE = "evaluate"
VERSION = "2"  # 2: the test predictions are stored (predictions.jsonl)
Mode = Literal["conlleval", "strict"]


# --- scores --------------------------------------------------------------------------------------------------


def entity_scores(gold: Tags, pred: Tags, mode: Mode = "conlleval") -> dict[str, Any]:
    """Entity-level precision, recall, F1 overall (micro) and per type, with seqeval.

    Args:
        gold: Gold IOB2 tags per sentence.
        pred: Predicted tags per sentence, same shape.
        mode: `conlleval` (seqeval default: a stray I- starts an entity, like conlleval.pl) or `strict` (IOB2
            scheme: only well-formed entities count).
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    kwargs: dict[str, Any] = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in report.items()
        if not name.endswith(" avg")
    }
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "support": int(micro["support"]),
        "per_type": per_type,
    }


def token_accuracy(gold: Tags, pred: Tags) -> float:
    """Share of words whose predicted tag equals the gold tag (B-/I- included)."""
    total = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
    return right / total if total else 0.0


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def span_f1(gold: Tags, pred: Tags) -> float:
    """F1 over entity boundaries alone: a predicted span counts if a gold span has the same start and end."""
    tp = fp = fn = 0
    for g, p in zip(gold, pred, strict=True):
        gs = {(s.start, s.end) for s in extract_spans(g)}
        ps = {(s.start, s.end) for s in extract_spans(p)}
        tp += len(gs & ps)
        fp += len(ps - gs)
        fn += len(gs - ps)
    return _f1(tp, fp, fn)


def sentence_counts(gold: Tags, pred: Tags) -> np.ndarray:
    """Per sentence (tp, fp, fn) of exact entity matches, as conlleval counts them."""
    rows = []
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(extract_spans(g)), set(extract_spans(p))
        rows.append((len(gs & ps), len(ps - gs), len(gs - ps)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def bootstrap_f1(gold: Tags, pred: Tags, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval for micro F1, resampling sentences with replacement.

    Per-sentence counts are computed once; each resample only sums them, so 1,000 resamples take milliseconds.
    """
    counts = sentence_counts(gold, pred)
    if samples <= 0 or len(counts) == 0:
        f1 = _f1(*counts.sum(axis=0)) if len(counts) else 0.0
        return f1, f1
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), size=(samples, len(counts)))
    totals = counts[picks].sum(axis=1)  # samples x 3
    tp, fp, fn = totals[:, 0], totals[:, 1], totals[:, 2]
    denom = 2 * tp + fp + fn
    f1s = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    alpha = (1 - confidence) / 2
    return float(np.quantile(f1s, alpha)), float(np.quantile(f1s, 1 - alpha))


BUCKETS = ("boundary", "type", "missed", "spurious")


def error_buckets(gold: Tags, pred: Tags) -> dict[str, dict[str, int]]:
    """Count entity errors per type in four buckets; exact matches (same start, end and type) are not errors.

    Spans are read as conlleval reads them (a stray I-X starts an entity). Within a sentence, every gold span G
    that no predicted span matches exactly lands in exactly one bucket, under G's type:
    - boundary: a predicted span of G's type overlaps G (its boundaries differ, or it would be a match);
    - type: otherwise, a predicted span of another type overlaps G; usually with exactly G's boundaries, and
      a span that is wrong in both type and boundaries counts here too;
    - missed: no predicted span overlaps G at all.
    Every predicted span P that matches nothing and overlaps no gold span counts as spurious, under P's type. A
    predicted span that overlaps gold is not counted again: its error is the gold span's boundary or type error
    (one predicted span across two gold spans gives each of them one).

    Returns:
        {type: {"boundary": n, "type": n, "missed": n, "spurious": n}} for every type with at least one error.
    """
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for g_tags, p_tags in zip(gold, pred, strict=True):
        gs, ps = extract_spans(g_tags), extract_spans(p_tags)
        exact = set(gs) & set(ps)
        for g in gs:
            if g in exact:
                continue
            overlapping = [p for p in ps if p.start < g.end and g.start < p.end and p not in exact]
            if any(p.label == g.label for p in overlapping):
                counts[g.label]["boundary"] += 1
            elif overlapping:
                counts[g.label]["type"] += 1
            else:
                counts[g.label]["missed"] += 1
        for p in ps:
            if p not in exact and not any(p.start < g.end and g.start < p.end for g in gs):
                counts[p.label]["spurious"] += 1
    return {t: {b: c[b] for b in BUCKETS} for t, c in sorted(counts.items())}


def score_split(gold: Tags, pred: Tags, cfg: EvaluateConfig, known_types: set[str] | None = None) -> dict[str, Any]:
    """Every number the report shows for one split."""
    conll = entity_scores(gold, pred, "conlleval")
    strict = entity_scores(gold, pred, "strict")
    low, high = bootstrap_f1(gold, pred, cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    gold_types = {s.label for g in gold for s in extract_spans(g)}
    return {
        "sentences": len(gold),
        "conlleval": conll,
        "strict": strict,
        "token_accuracy": token_accuracy(gold, pred),
        "span_f1": span_f1(gold, pred),
        "f1_ci": {"low": low, "high": high, "confidence": cfg.confidence, "samples": cfg.bootstrap_samples},
        "errors": error_buckets(gold, pred),
        "unknown_types": sorted(gold_types - known_types) if known_types is not None else [],
    }


# --- predicting and the stage ------------------------------------------------------------------------------------


@dataclass
class LabelledSplit:
    """Words, gold IOB2 tags and document ids (for document context) of one split."""

    tokens: list[list[str]]
    gold: Tags
    doc_ids: list[int] | None = None


def labelled_split(name: str, sentences: Sequence[Any]) -> LabelledSplit:
    """Accept `readers.Sentence` objects or `(tokens, tags)` pairs; check that every word has a valid tag.

    Raises:
        DataError: a sentence whose token and tag counts differ, or a tag that is not O, B-<type> or I-<type>.
    """
    tokens: list[list[str]] = []
    gold: Tags = []
    doc_ids: list[int] = []
    for i, sentence in enumerate(sentences):
        if hasattr(sentence, "tokens"):
            words, tags, doc = list(sentence.tokens), list(sentence.tags), getattr(sentence, "document_id", i)
            where = getattr(sentence, "origin", "") or f"{name} sentence {i}"
        elif isinstance(sentence, Sequence) and len(sentence) == 2:
            words, tags = list(sentence[0]), list(sentence[1])
            doc, where = i, f"{name} sentence {i}"  # bare pairs carry no documents: each is its own
        else:
            raise DataError(f"{name} sentence {i}: expected a Sentence or a (tokens, tags) pair, got {sentence!r:.80}")
        if len(words) != len(tags):
            raise DataError(f"{where}: {len(words)} tokens but {len(tags)} tags")
        for tag in tags:
            check_tag(tag, where)
        tokens.append(words)
        gold.append(tags)
        doc_ids.append(doc)
    return LabelledSplit(tokens, gold, doc_ids)


def predict_split(predictor: Any, tokens: list[list[str]], doc_ids: Sequence[int] | None = None) -> Tags:
    """Word labels for a split, with its neighbouring sentences as context when the model was trained with it."""
    from ner_pipeline.tokenize import document_neighbours

    if not tokens:
        return []
    contexts = None
    if doc_ids is not None and predictor.prep.document_context:
        contexts = []
        for i in range(len(tokens)):
            before, after = document_neighbours(doc_ids, i)
            contexts.append(([w for b in before for w in tokens[b]], [w for a in after for w in tokens[a]]))
    from tqdm.auto import tqdm

    step = 256  # sentences per call: a progress bar that moves, and the predictor still fills its batches
    tags: Tags = []
    with tqdm(total=len(tokens), desc="evaluate", unit="sent", mininterval=2, leave=False) as bar:
        for start in range(0, len(tokens), step):
            chunk = contexts[start : start + step] if contexts is not None else None
            tags += predictor.predict_words(tokens[start : start + step], contexts=chunk)
            bar.update(len(tokens[start : start + step]))
    return tags


def score_splits(
    predictor: Any, splits: Mapping[str, LabelledSplit], cfg: EvaluateConfig, model: str
) -> tuple[EvalReport, Tags]:
    """Predict and score every split; warn about gold types the model cannot predict.

    Returns:
        The report and the predictions of the last split (the one errors.jsonl and the plots describe).
    """
    known = {entity_type(t) for t in predictor.labels} - {OUTSIDE}
    report = EvalReport(splits={}, model=model)
    pred: Tags = []
    for name, split in splits.items():
        pred = predict_split(predictor, split.tokens, split.doc_ids)
        scores = report.splits[name] = score_split(split.gold, pred, cfg, known)
        logger.info("%s: F1 %.4f (conlleval), %.4f (strict)", name, scores["conlleval"]["f1"], scores["strict"]["f1"])
        if scores["unknown_types"]:
            logger.warning("%s: gold types unknown to the model, counted as misses: %s", name, scores["unknown_types"])
    return report, pred


def evaluate_key(cfg: EvaluateConfig, ingest_key: str, train_key: str) -> str:
    """Key of the evaluate artifact. The train key already commits to the tokenize key (and so to the
    preprocessing the predictor reads from the model folder), so the tokenize key is not repeated here."""
    return artifact_key(STAGE, VERSION, cfg, {"ingest": ingest_key, "train": train_key})


def run_evaluate(
    cfg: EvaluateConfig, ingest_artifact: Artifact, train_artifact: Artifact, store: ArtifactStore
) -> Artifact:
    """Score the trained model on validation and test; write reports and plots; flat metrics as stats.

    Words are predicted with the model folder's own preprocessing (windows, document context), exactly as the
    predictor and the service do, and labels are mapped back word by word.
    """
    from ner_pipeline.ingest import load_splits, read_labels
    from ner_pipeline.predict import Predictor

    key = evaluate_key(cfg, ingest_artifact.key, train_artifact.key)

    def produce(folder: Path) -> dict[str, Any]:
        predictor = Predictor.load(train_artifact.files("model") / "model", batch_size=cfg.batch_size)
        data = load_splits(ingest_artifact, ("validation", "test"))
        names = read_labels(ingest_artifact)
        splits = {
            name: LabelledSplit(
                list(data[name]["tokens"]),
                [[names[i] for i in row] for row in data[name]["ner_tags"]],
                list(data[name]["document_id"]),
            )
            for name in ("validation", "test")
        }
        report, pred = score_splits(predictor, splits, cfg, f"train/{train_artifact.key}")
        test = splits["test"]
        write_report(report, folder, test.tokens, test.gold, pred, cfg)
        # Kept for the promotion gate, which compares two versions sentence by sentence.
        write_predictions(folder / PREDICTIONS_FILE, test.tokens, test.gold, pred, test.doc_ids)
        return report.flat_metrics()

    return store.build(
        STAGE, key, produce, inputs={"ingest": ingest_artifact.key, "train": train_artifact.key}, config=cfg
    )


def evaluate_model(
    model_dir: Path,
    sentences_by_split: Mapping[str, Sequence[Any]],
    cfg: EvaluateConfig,
    out_dir: Path,
    backend: str = "torch",
    onnx_dir: Path | None = None,
) -> EvalReport:
    """Score a model folder on labelled sentences from any source and write the report files to `out_dir`.

    Args:
        model_dir: A model folder written by the train stage (or downloaded from the registry).
        backend, onnx_dir: What runs it (`Predictor.load`); a registered version ships only the variant it serves.
        sentences_by_split: Split name → `readers.Sentence` objects (see `ingest.read_evaluation_data`) or
            `(tokens, tags)` pairs with IOB2 tags. errors.jsonl and the plots describe the last split.
        cfg: Batch size, bootstrap samples and seed, number of sentences in errors.jsonl.
        out_dir: Created if needed.

    Gold types the model does not know are listed in the report (`unknown_types`), logged as a warning, and
    scored as misses: the model cannot predict them, so they lower recall instead of failing the run.

    Raises:
        DataError: no sentences, or a sentence whose tokens and tags disagree.
        ModelError: `model_dir` is not a model folder written by the train stage.
    """
    from ner_pipeline.predict import Predictor

    splits = {name: labelled_split(name, sentences) for name, sentences in sentences_by_split.items()}
    splits = {name: split for name, split in splits.items() if split.tokens}
    if not splits:
        raise DataError(f"nothing to evaluate: no sentences in splits {sorted(sentences_by_split)}")
    predictor = Predictor.load(Path(model_dir), backend=backend, onnx_dir=onnx_dir, batch_size=cfg.batch_size)  # type: ignore[arg-type]
    report, pred = score_splits(predictor, splits, cfg, str(model_dir))
    last = splits[list(splits)[-1]]
    write_report(report, Path(out_dir), last.tokens, last.gold, pred, cfg)
    return report
