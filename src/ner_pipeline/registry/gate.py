"""The promotion gate's statistics: is the challenger better than production, or is the difference noise?

Both versions are scored on the same test sentences (their predictions, stored at registration or, for a
production version without them, computed at gate time) and compared with a paired bootstrap: sentence indices
are resampled with replacement, both models' micro F1 (seqeval, conlleval mode unless the metric says strict) is
computed on the same resample, and the percentile interval of the difference is what the gate judges. Resampling
pairs the two models sentence by sentence, so a hard test set lowers both scores together and does not widen the
interval of their difference the way two separate intervals would.

Per-sentence entity counts are computed once; a resample only sums them, which gives exactly the micro scores
seqeval computes on the resampled sentences (a test checks this) at a fraction of the cost.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ner_pipeline.config import RegistryConfig
from ner_pipeline.errors import ArtifactError, NerPipelineError
from ner_pipeline.predictions import PredictedSentence, file_sha256, read_predictions, sentences_fingerprint
from ner_pipeline.registry.tags import (
    PREDICTIONS_FINGERPRINT_TAG,
    PREDICTIONS_PATH_TAG,
    PREDICTIONS_SHA_TAG,
    version_metrics,
)

logger = logging.getLogger(__name__)

Tags = Sequence[Sequence[str]]

# Metric name → (seqeval mode, score); every one of them is better when higher (config checks the direction).
METRICS: dict[str, tuple[str, str]] = {
    "test_f1": ("conlleval", "f1"),
    "test_f1_strict": ("strict", "f1"),
    "test_precision": ("conlleval", "precision"),
    "test_recall": ("conlleval", "recall"),
}
# Where the register stage logs a version's test predictions in its MLflow run (under the evaluate key).
PREDICTIONS_ARTIFACT_DIR = "evaluation"


@dataclass
class Comparison:
    """Challenger against production on the same sentences: the difference and its paired bootstrap interval.

    `delta`, `low` and `high` are improvements: challenger minus production, sign flipped for a metric that is
    better when lower, so positive always means better.
    """

    metric: str
    candidate: float
    production: float
    delta: float
    low: float
    high: float
    confidence: float
    samples: int
    sentences: int
    type_drops: dict[str, float] = field(default_factory=dict)  # type → production F1 minus challenger F1
    production_source: str = "stored"  # or "run at gate time"

    def interval(self) -> str:
        """`+0.0123 [+0.0040, +0.0210] 95%`: the difference and its interval, as history shows it."""
        return f"{self.delta:+.4f} [{self.low:+.4f}, {self.high:+.4f}] {self.confidence:.0%}"

    def numbers(self) -> dict[str, Any]:
        """What the audit trail records (plain JSON values)."""
        return {
            f"candidate_{self.metric}": round(self.candidate, 6),
            f"production_{self.metric}": round(self.production, 6),
            "delta": round(self.delta, 6),
            "delta_low": round(self.low, 6),
            "delta_high": round(self.high, 6),
            "confidence": self.confidence,
            "samples": self.samples,
            "sentences": self.sentences,
            "production_predictions": self.production_source,
        }


# --- counting --------------------------------------------------------------------------------------------------


def sentence_entities(tags: Sequence[str], mode: str = "conlleval") -> set[tuple[str, int, int]]:
    """seqeval's entities of one sentence as (type, start, end): conlleval mode, or strict IOB2."""
    if mode == "strict":
        from seqeval.scheme import IOB2, Entities

        return {(e.tag, e.start, e.end) for e in Entities([list(tags)], IOB2).entities[0]}
    from seqeval.metrics.sequence_labeling import get_entities

    return set(get_entities(list(tags)))


def sentence_counts(gold: Tags, pred: Tags, mode: str = "conlleval") -> np.ndarray:
    """Per sentence (tp, fp, fn) of exact entity matches: an n x 3 array."""
    rows = []
    for g, p in zip(gold, pred, strict=True):
        gs, ps = sentence_entities(g, mode), sentence_entities(p, mode)
        rows.append((len(gs & ps), len(ps - gs), len(gs - ps)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def score(totals: np.ndarray, kind: str) -> np.ndarray:
    """Micro precision, recall or F1 from (..., 3) summed counts; 0 where undefined (seqeval's zero_division=0)."""
    tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
    denominator = {"precision": tp + fp, "recall": tp + fn, "f1": 2 * tp + fp + fn}[kind]
    numerator = 2 * tp if kind == "f1" else tp
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def type_f1(gold: Tags, pred: Tags) -> dict[str, float]:
    """F1 per entity type (conlleval mode) for every type in gold or predictions."""
    counts: dict[str, Counter[str]] = {}
    for g, p in zip(gold, pred, strict=True):
        gs, ps = sentence_entities(g), sentence_entities(p)
        for kind, spans in (("tp", gs & ps), ("fp", ps - gs), ("fn", gs - ps)):
            for label, _, _ in spans:
                counts.setdefault(label, Counter())[kind] += 1
    return {t: float(score(np.array([c["tp"], c["fp"], c["fn"]]), "f1")) for t, c in sorted(counts.items())}


def paired_bootstrap(
    gold: Tags,
    candidate: Tags,
    production: Tags,
    metric: str = "test_f1",
    direction: str = "higher",
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare two models' predictions of the same sentences with a paired percentile bootstrap.

    Args:
        gold: Gold tags per sentence.
        candidate: The challenger's predicted tags, same shape.
        production: Production's predicted tags, same shape.
        metric: A key of `METRICS`.
        direction: "higher" when a larger metric is better.
        samples: Resamples; confidence: the interval's coverage (0.95: 2.5th to 97.5th percentile); seed: RNG seed.
    """
    mode, kind = METRICS[metric]
    sign = 1.0 if direction == "higher" else -1.0
    cand, prod = sentence_counts(gold, candidate, mode), sentence_counts(gold, production, mode)
    cand_value, prod_value = float(score(cand.sum(axis=0), kind)), float(score(prod.sum(axis=0), kind))
    n = len(cand)
    diffs = np.zeros(0)
    if n and samples > 0:
        rng = np.random.default_rng(seed)
        chunks = []
        for start in range(0, samples, 200):  # bounded memory: 200 x n indices at a time
            picks = rng.integers(0, n, size=(min(200, samples - start), n))
            chunks.append(score(cand[picks].sum(axis=1), kind) - score(prod[picks].sum(axis=1), kind))
        diffs = sign * np.concatenate(chunks)
    delta = sign * (cand_value - prod_value)
    alpha = (1 - confidence) / 2
    low, high = (float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))) if len(diffs) else (delta,) * 2
    return Comparison(metric, cand_value, prod_value, delta, low, high, confidence, samples, n)


def compare(
    rows: Sequence[PredictedSentence], production: Tags, cfg: RegistryConfig, production_source: str = "stored"
) -> Comparison:
    """The gate's comparison of the challenger's rows with production's predictions of the same sentences."""
    gold = [r.gold for r in rows]
    candidate = [r.pred for r in rows]
    result = paired_bootstrap(
        gold, candidate, production, cfg.metric, cfg.metric_direction, cfg.bootstrap_samples, cfg.confidence, cfg.seed
    )
    cand_types, prod_types = type_f1(gold, candidate), type_f1(gold, production)
    result.type_drops = {t: round(f - cand_types.get(t, 0.0), 6) for t, f in prod_types.items()}
    result.production_source = production_source
    return result


def first_version_value(rows: Sequence[PredictedSentence], cfg: RegistryConfig) -> float:
    """The configured metric of a version on its own test predictions (for the first-version threshold)."""
    mode, kind = METRICS[cfg.metric]
    counts = sentence_counts([r.gold for r in rows], [r.pred for r in rows], mode)
    return float(score(counts.sum(axis=0), kind))


# --- stored predictions ------------------------------------------------------------------------------------------


def prediction_tags(path: Path, artifact_path: str) -> dict[str, str]:
    """Version tags naming a predictions file logged at `artifact_path` in the version's run."""
    return {
        PREDICTIONS_PATH_TAG: artifact_path,
        PREDICTIONS_FINGERPRINT_TAG: sentences_fingerprint(read_predictions(path)),
        PREDICTIONS_SHA_TAG: file_sha256(path),
    }


def predictions_folder(evaluate_key: str) -> str:
    """Where in a run a version's test predictions go: under the evaluate key, as one run may hold several."""
    return f"{PREDICTIONS_ARTIFACT_DIR}/{evaluate_key}"


def log_predictions(client: Any, run_id: str, path: Path, evaluate_key: str) -> dict[str, str]:
    """Upload a predictions file to an existing run; return the tags its version must carry.

    The register stage logs the file inside its own run instead (`register.run_register`); this is for attaching
    predictions to a run afterwards.
    """
    folder = predictions_folder(evaluate_key)
    client.log_artifact(run_id, str(path), folder)
    return prediction_tags(path, f"{folder}/{path.name}")


def load_predictions(client: Any, version: Any) -> list[PredictedSentence] | None:
    """The test predictions stored with a model version, or None when it has none.

    Raises:
        ArtifactError: the stored file cannot be downloaded, or its content is not what the version's tags say
            (another file, or other sentences).
    """
    path = (version.tags or {}).get(PREDICTIONS_PATH_TAG)
    if not path or not version.run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="ner-gate-") as tmp:
        try:
            local = Path(client.download_artifacts(version.run_id, path, tmp))
        except Exception as exc:  # MLflow raises several types for a missing artifact or an unreachable store
            raise ArtifactError(
                f"version {version.version}: cannot download {path} of run {version.run_id}: {exc}"
            ) from None
        sha = file_sha256(local)
        rows = read_predictions(local)
    expected_sha = version.tags.get(PREDICTIONS_SHA_TAG)
    if expected_sha and sha != expected_sha:
        raise ArtifactError(f"version {version.version}: {path} has sha256 {sha[:12]}, tagged {expected_sha[:12]}")
    expected_fp = version.tags.get(PREDICTIONS_FINGERPRINT_TAG)
    if expected_fp and sentences_fingerprint(rows) != expected_fp:
        raise ArtifactError(f"version {version.version}: {path} covers other sentences than its tag says")
    return rows


def production_predictions(
    client: Any, tracking_uri: str, production: Any, rows: Sequence[PredictedSentence]
) -> tuple[list[list[str]], str]:
    """Production's predicted tags for the challenger's sentences: stored ones when they cover exactly these
    sentences, else the production model run now (downloaded from the registry).

    Returns:
        (predicted tags per sentence, "stored" or "run at gate time")
    """
    fingerprint = sentences_fingerprint(rows)
    if (production.tags or {}).get(PREDICTIONS_FINGERPRINT_TAG) == fingerprint:
        try:
            stored = load_predictions(client, production)
        except ArtifactError as exc:
            logger.warning("%s; running production at gate time instead", exc)
            stored = None
        if stored is not None:
            return [r.pred for r in stored], "stored"
    logger.info(
        "production version %s has no stored predictions of test set %s: running it now",
        production.version,
        fingerprint[:12],
    )
    return run_version(tracking_uri, production, rows), "run at gate time"


def run_version(tracking_uri: str, version: Any, rows: Sequence[PredictedSentence]) -> list[list[str]]:
    """Download a registered version and predict the rows' words with it, with document context when it has one."""
    from ner_pipeline.evaluate import predict_split
    from ner_pipeline.predict import Predictor
    from ner_pipeline.registry.catalog import fetch_model

    doc_ids = [r.document_id for r in rows]
    with tempfile.TemporaryDirectory(prefix="ner-gate-model-") as tmp:
        fetched = fetch_model(f"models:/{version.name}/{version.version}", tracking_uri, Path(tmp))
        predictor = Predictor.load(fetched.model_dir)
        ids = None if any(d is None for d in doc_ids) else [int(d) for d in doc_ids]  # type: ignore[arg-type]
        return predict_split(predictor, [list(r.tokens) for r in rows], ids)


def stored_or_reason(client: Any, version: Any) -> tuple[list[PredictedSentence] | None, str]:
    """The challenger's stored predictions, or None and the reason the gate cannot judge it."""
    try:
        rows = load_predictions(client, version)
    except NerPipelineError as exc:
        return None, str(exc)
    if rows is None:
        return None, (
            f"version {version.version} has no stored test predictions (tag {PREDICTIONS_PATH_TAG}), so the gate "
            "cannot compare it sentence by sentence: register it again, or promote with --force --reason"
        )
    if not rows:
        return None, f"version {version.version}: its stored test predictions are empty"
    return rows, ""


# --- the verdict ----------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the gate says about a candidate before any alias moves."""

    passed: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    comparison: Comparison | None = None


def judge(client: Any, tracking_uri: str, cfg: RegistryConfig, candidate: Any, current: Any | None) -> Verdict:
    """Decide whether `candidate` may replace `current` (None: no production yet) as production."""
    rows, missing = stored_or_reason(client, candidate)
    if current is None:
        return _judge_first(candidate, rows, cfg)
    if rows is None:
        return Verdict(False, missing)
    try:
        predicted, source = production_predictions(client, tracking_uri, current, rows)
    except NerPipelineError as exc:
        return Verdict(False, f"cannot run production version {current.version} on the test set: {exc}")
    result = compare(rows, predicted, cfg, source)
    numbers = {**result.numbers(), "compared_to": str(current.version)}
    change = f"{cfg.metric} change {result.interval()} against production v{current.version} ({result.sentences} "
    change += f"sentences, production predictions {source})"
    if result.low <= cfg.min_delta:
        return Verdict(False, f"{change}: lower bound not above min_delta {cfg.min_delta}", numbers, result)
    drops = {t: d for t, d in result.type_drops.items() if d > cfg.max_type_drop}
    if drops:
        worst = max(drops, key=lambda t: drops[t])
        numbers[f"drop_{worst}"] = drops[worst]
        limit = cfg.max_type_drop * 100
        why = f"{worst} F1 falls by {drops[worst] * 100:.1f} points (limit {limit:.1f}); {change}"
        return Verdict(False, why, numbers, result)
    return Verdict(True, f"{change}: lower bound above min_delta {cfg.min_delta}", numbers, result)


def _judge_first(candidate: Any, rows: list[Any] | None, cfg: RegistryConfig) -> Verdict:
    """A first version: its own metric must clear `min_first_metric` (an untrained model scores about 0)."""
    value = first_version_value(rows, cfg) if rows else version_metrics(candidate).get(cfg.metric)
    if value is None:
        return Verdict(False, f"version {candidate.version} has no '{cfg.metric}' metric")
    numbers = {cfg.metric: round(value, 6), "min_first_metric": cfg.min_first_metric}
    sign = 1 if cfg.metric_direction == "higher" else -1
    if sign * (value - cfg.min_first_metric) < 0:
        why = (
            f"no production version yet, and {cfg.metric} {value:.4f} is below registry.min_first_metric "
            f"{cfg.min_first_metric}: a model this weak has not learned the task"
        )
        return Verdict(False, why, numbers)
    return Verdict(
        True,
        f"no production version yet; {cfg.metric} {value:.4f} reaches min_first_metric {cfg.min_first_metric}",
        numbers,
    )
