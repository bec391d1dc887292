"""The evaluation report: scores per split as flat metrics, JSON and Markdown, the sentences with the most wrong
entities, and the files the evaluate stage writes (report.json, report.md, errors.jsonl, two plots)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import write_json_atomic
from ner_pipeline.config import EvaluateConfig
from ner_pipeline.plots import plot_confusion, plot_f1_by_type
from ner_pipeline.spans import Span, extract_spans

Tags = list[list[str]]


@dataclass
class EvalReport:
    """Scores per split (as `evaluate.score_split` returns them) plus the sentences behind the errors."""

    splits: dict[str, dict[str, Any]]
    worst: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""

    def flat_metrics(self) -> dict[str, float]:
        """validation_f1, test_f1, test_f1_strict, ..., test_f1_<TYPE>: what MLflow and the registry record."""
        out: dict[str, float] = {}
        for split, s in self.splits.items():
            out[f"{split}_f1"] = s["conlleval"]["f1"]
            out[f"{split}_f1_strict"] = s["strict"]["f1"]
            out[f"{split}_precision"] = s["conlleval"]["precision"]
            out[f"{split}_recall"] = s["conlleval"]["recall"]
            out[f"{split}_token_accuracy"] = s["token_accuracy"]
            out[f"{split}_span_f1"] = s["span_f1"]
            out[f"{split}_f1_ci_low"] = s["f1_ci"]["low"]
            out[f"{split}_f1_ci_high"] = s["f1_ci"]["high"]
            for entity, v in s["conlleval"]["per_type"].items():
                out[f"{split}_f1_{entity}"] = v["f1"]
        return {k: round(float(v), 6) for k, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "splits": self.splits}

    def to_markdown(self) -> str:
        lines = [f"# Evaluation{f' of {self.model}' if self.model else ''}", ""]
        for split, s in self.splits.items():
            lines += _split_markdown(split, s)
        return "\n".join(lines)


def _split_markdown(split: str, s: dict[str, Any]) -> list[str]:
    """The Markdown section of one split: headline scores, then a row per type with its error buckets."""
    conll, strict, ci = s["conlleval"], s["strict"], s["f1_ci"]
    lines = [
        f"## {split} ({s['sentences']:,} sentences)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| F1 (conlleval) | {conll['f1']:.4f} |",
        f"| {ci['confidence']:.0%} bootstrap CI | {ci['low']:.4f} – {ci['high']:.4f} |",
        f"| precision / recall | {conll['precision']:.4f} / {conll['recall']:.4f} |",
        f"| F1 (strict IOB2) | {strict['f1']:.4f} |",
        f"| span F1 (type ignored) | {s['span_f1']:.4f} |",
        f"| token accuracy | {s['token_accuracy']:.4f} |",
        "",
        "| type | precision | recall | F1 | support | boundary | type err | missed | spurious |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entity, v in sorted(conll["per_type"].items()):
        e = s["errors"].get(entity, {})  # a type without errors has no buckets
        lines.append(
            f"| {entity} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} "
            f"| {e.get('boundary', 0)} | {e.get('type', 0)} | {e.get('missed', 0)} | {e.get('spurious', 0)} |"
        )
    if s["unknown_types"]:
        lines += ["", f"Gold types the model does not know (counted as misses): {', '.join(s['unknown_types'])}"]
    lines.append("")
    return lines


def worst_sentences(tokens: list[list[str]], gold: Tags, pred: Tags, limit: int) -> list[dict[str, Any]]:
    """The sentences whose predicted spans differ most from gold (false positives plus false negatives)."""

    def show(spans: list[Span], words: list[str]) -> list[dict[str, Any]]:
        return [
            {"label": s.label, "start": s.start, "end": s.end, "text": " ".join(words[s.start : s.end])} for s in spans
        ]

    scored = []
    for i, (words, g, p) in enumerate(zip(tokens, gold, pred, strict=True)):
        gs, ps = set(extract_spans(g)), set(extract_spans(p))
        wrong = len(gs ^ ps)
        if wrong:
            scored.append((wrong, i, words, sorted(gs), sorted(ps)))
    scored.sort(key=lambda r: (-r[0], r[1]))
    return [
        {"index": i, "wrong_spans": n, "tokens": words, "gold": show(gs, words), "predicted": show(ps, words)}
        for n, i, words, gs, ps in scored[:limit]
    ]


def write_report(
    report: EvalReport, folder: Path, tokens: list[list[str]], gold: Tags, pred: Tags, cfg: EvaluateConfig
) -> None:
    """Write report.json, report.md, errors.jsonl and the two plots (for the last split scored)."""
    folder.mkdir(parents=True, exist_ok=True)
    report.worst = worst_sentences(tokens, gold, pred, cfg.worst_sentences)
    write_json_atomic(folder / "report.json", report.to_dict())
    (folder / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    with (folder / "errors.jsonl").open("w", encoding="utf-8") as handle:
        for row in report.worst:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    plot_confusion(gold, pred, folder / "confusion_matrix.png")
    plot_f1_by_type(report.splits, folder / "f1_by_type.png")
