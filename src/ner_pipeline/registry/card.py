"""Model cards: a Hugging Face-style README.md for each registered version, rendered from its upstream artifacts.

The card is built only from what the stages recorded (manifests and stats of the ingest, train, evaluate and
export artifacts), so its numbers are the version's real ones. At registration it is written as `README.md` into
the logged model and its short form becomes the version's description in the MLflow UI; `ner-pipeline models
card NAME[/VERSION|@alias]` prints it back.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ner_pipeline.artifacts import Artifact
from ner_pipeline.errors import RegistryError
from ner_pipeline.registry.tags import type_scores

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# Languages of the data sets the pipeline knows by name; any other source's language is not recorded anywhere.
SOURCE_LANGUAGES = {"conll2003": "en", "wnut16": "en", "wnut17": "en"}


def _config(artifact: Artifact | None) -> dict[str, Any]:
    """The config a stage recorded in its manifest (empty when it recorded none)."""
    return dict((artifact.manifest.get("config") or {}) if artifact else {})


def _data_name(ingest: Artifact | None) -> str:
    config = _config(ingest)
    path = config.get("path")
    return str(Path(path).name if path else config.get("source") or "unknown")


def _label_counts(ingest: Artifact | None) -> dict[str, dict[str, int]]:
    """Entities per type per split, from the ingest stats."""
    stats = ingest.stats if ingest else {}
    return {s: dict(v.get("entities", {})) for s, v in stats.items() if isinstance(v, dict) and "entities" in v}


def front_matter(name: str, base: str, ingest: Artifact | None, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML header of a Hugging Face model card, with a model-index of the test metrics."""
    data = _data_name(ingest)
    language = SOURCE_LANGUAGES.get(data.lower())
    results = [
        {"type": key, "value": round(float(metrics[stat]), 4), "name": label}
        for key, stat, label in (
            ("f1", "test_f1", "Test F1 (conlleval)"),
            ("f1", "test_f1_strict", "Test F1 (strict IOB2)"),
            ("precision", "test_precision", "Test precision"),
            ("recall", "test_recall", "Test recall"),
        )
        if stat in metrics
    ]
    header: dict[str, Any] = {
        **({"language": [language]} if language else {}),
        "license": "other",
        "library_name": "transformers",
        "pipeline_tag": "token-classification",
        "tags": ["token-classification", "ner", "ner-pipeline", "onnx"],
        "datasets": [data],
        "base_model": base,
        "metrics": ["f1", "precision", "recall"],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "token-classification", "name": "Named entity recognition"},
                        "dataset": {"name": data, "type": data, "split": "test"},
                        "metrics": results,
                    }
                ],
            }
        ],
    }
    return header


def render_card(name: str, version: str, upstream: Mapping[str, Artifact], base_model: str | None = None) -> str:
    """The full model card of version `version` of `name` (Markdown with YAML front matter).

    Args:
        upstream: The version's artifacts by stage: `train` and `evaluate` needed; `ingest` and `export` used.
        base_model: The base model reference (default: the train artifact's recorded config).
    """
    ingest, train, evaluation, export = (upstream.get(s) for s in ("ingest", "train", "evaluate", "export"))
    metrics = evaluation.stats if evaluation else {}
    train_config = _config(train)
    base = base_model or str(train_config.get("model", {}).get("name_or_path", "unknown"))
    head = yaml.safe_dump(front_matter(name, base, ingest, metrics), sort_keys=False, allow_unicode=True)
    sections = [
        f"---\n{head}---\n",
        f"# {name} (version {version})\n",
        f"A named-entity recogniser fine-tuned from `{base}` by ner-pipeline.\n",
        _data_section(ingest),
        _config_section(train_config),
        _metrics_section(metrics),
        _export_section(export),
        _limits_section(ingest, metrics),
        _usage_section(name, version),
    ]
    return "\n".join(sections)


def _data_section(ingest: Artifact | None) -> str:
    if ingest is None:
        return "## Training data\n\nNot recorded (no ingest artifact).\n"
    stats = ingest.stats
    counts = _label_counts(ingest)
    splits = list(counts)
    types = sorted({t for c in counts.values() for t in c})
    lines = [
        "## Training data\n",
        f"- Source: `{_data_name(ingest)}` ({_config(ingest).get('source', '?')})",
        f"- Fingerprint: `{stats.get('fingerprint', '?')}` (test split `{stats.get('test_fingerprint', '?')}`)",
        f"- Ingest artifact: `{ingest.key}`",
        "",
        "| split | sentences | tokens | " + " | ".join(types) + " |",
        "|---|---|---|" + "---|" * len(types),
    ]
    for split in splits:
        row = [str(stats[split].get("sentences", "")), str(stats[split].get("tokens", ""))]
        row += [str(counts[split].get(t, 0)) for t in types]
        lines.append(f"| {split} | " + " | ".join(row) + " |")
    lines.append(f"\nLabel set: {', '.join(types) or 'none'} ({stats.get('labels', '?')} IOB2 tags).\n")
    return "\n".join(lines)


def _config_section(train_config: Mapping[str, Any]) -> str:
    if not train_config:
        return "## Training config\n\nNot recorded.\n"
    dumped = yaml.safe_dump(dict(train_config), sort_keys=True).strip()
    return f"## Training config\n\n```yaml\n{dumped}\n```\n"


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    lines = ["## Evaluation\n", "| split | F1 (conlleval) | F1 (strict) | precision | recall | bootstrap interval |"]
    lines.append("|---|---|---|---|---|---|")
    for split in ("validation", "test"):
        if f"{split}_f1" not in metrics:
            continue
        cells = [_num(metrics.get(f"{split}_{k}")) for k in ("f1", "f1_strict", "precision", "recall")]
        ci = f"{_num(metrics.get(f'{split}_f1_ci_low'))} – {_num(metrics.get(f'{split}_f1_ci_high'))}"
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {ci} |")
    per_type = type_scores(metrics)
    validation = type_scores(metrics, "validation_f1_")
    if per_type:
        lines += ["", "Per-type F1:", "", "| type | validation F1 | test F1 |", "|---|---|---|"]
        lines += [f"| {t} | {_num(validation.get(t))} | {_num(f)} |" for t, f in sorted(per_type.items())]
    return "\n".join(lines) + "\n"


def _export_section(export: Artifact | None) -> str:
    if export is None:
        return "## ONNX variants\n\nNone shipped (no export artifact): PyTorch only.\n"
    parity_path = export.path / "parity.json"
    report = json.loads(parity_path.read_text(encoding="utf-8")) if parity_path.is_file() else {}
    lines = ["## ONNX variants\n", "| variant | file | F1 | F1 delta vs PyTorch | max logit diff | accepted |"]
    lines.append("|---|---|---|---|---|---|")
    for variant, row in report.items():
        if isinstance(row, dict) and "accepted" in row:
            cells = [row.get("file", "-"), _num(row.get("f1")), _num(row.get("f1_delta")),
                     _num(row.get("max_abs_logit_diff")), "yes" if row["accepted"] else "no"]  # fmt: skip
            lines.append(f"| {variant} | " + " | ".join(str(c) for c in cells) + " |")
    lines.append(f"\nServing default: `{report.get('default', export.stats.get('default', 'torch'))}`; parity "
                 f"checked on {report.get('sentences', '?')} validation sentences.\n")  # fmt: skip
    return "\n".join(lines)


def _limits_section(ingest: Artifact | None, metrics: Mapping[str, Any]) -> str:
    data = _data_name(ingest)
    language = SOURCE_LANGUAGES.get(data.lower(), "not recorded (that of the training data)")
    types = sorted({t for c in _label_counts(ingest).values() for t in c}) or sorted(type_scores(metrics))
    return (
        "## Intended use and limits\n\n"
        f"- Intended use: tagging {', '.join(types) or 'the trained'} entities in text like the training data.\n"
        f"- Domain: that of `{data}`; expect lower scores on other domains (social media, legal, biomedical).\n"
        f"- Languages: {language}.\n"
        f"- Entity types: only {', '.join(types) or 'those of the training data'}; anything else is tagged O.\n"
        "- Scores above are on the data set's own test split; the bootstrap interval shows their sampling spread.\n"
    )


def _usage_section(name: str, version: str) -> str:
    return (
        "## How to load it\n\n"
        "```bash\n"
        f"ner-pipeline serve --model models:/{name}/{version}\n"
        f'ner-pipeline predict --model models:/{name}/{version} "Angela Merkel visited Paris."\n'
        f"ner-pipeline batch-predict corpus/ -o tags.parquet --model models:/{name}/{version}\n"
        "```\n\n"
        "```python\nimport mlflow\n\n"
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")\n'
        'model.predict(["Angela Merkel visited Paris."])\n```\n'
    )


def _num(value: Any) -> str:
    return f"{float(value):.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def short_card(name: str, version: str, upstream: Mapping[str, Artifact], summary: str) -> str:
    """The version description for the MLflow UI: the one-paragraph summary, per-type test F1, where the card is."""
    metrics = upstream["evaluate"].stats if "evaluate" in upstream else {}
    per_type = ", ".join(f"{t} {f:.3f}" for t, f in sorted(type_scores(metrics).items()))
    low, high = metrics.get("test_f1_ci_low"), metrics.get("test_f1_ci_high")
    ci = f" Test F1 interval {low:.4f}–{high:.4f}." if low is not None and high is not None else ""
    types = f" Per type: {per_type}." if per_type else ""
    where = f"README.md in the logged model (`ner-pipeline models card {name}/{version}`)"
    return f"{summary}{ci}{types} Model card: {where}."


def publish_card(client: Any, record: Mapping[str, Any], card: str, description: str) -> None:
    """Write the card as README.md into the registered version's logged model and set its description.

    Args:
        client: An MlflowClient bound to the registry.
        record: The registration (`name`, `version`, `model_uri` = models:/<logged model id>).
    """
    model_uri = str(record["model_uri"])
    if model_uri.startswith("models:/m-"):  # an MLflow 3 logged model: the card goes beside its MLmodel
        with tempfile.TemporaryDirectory(prefix="ner-card-") as tmp:
            path = Path(tmp) / CARD_FILE
            path.write_text(card, encoding="utf-8")
            client.log_model_artifact(model_uri.removeprefix("models:/"), str(path))
    else:  # a version registered from elsewhere (another run's source): ours to describe, not to write into
        logger.warning(
            "%s version %s: source %s is not a logged model; the card is only its description",
            record["name"],
            record["version"],
            model_uri,
        )
    client.update_model_version(record["name"], str(record["version"]), description=description)
    logger.info("%s version %s: model card written (%d characters)", record["name"], record["version"], len(card))


def read_card(tracking_uri: str, ref: str) -> str:
    """The model card of `NAME/VERSION`, `NAME@alias` or `models:/...`: the logged README.md, else the description.

    Raises:
        RegistryError: no such version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from ner_pipeline.registry.catalog import _resolve_version
    from ner_pipeline.registry.client import existing_client

    uri = ref if ref.startswith("models:/") else f"models:/{ref}"
    client = existing_client(tracking_uri)
    version = _resolve_version(client, uri)
    source = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory(prefix="ner-card-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source.rstrip('/')}/{CARD_FILE}", dst_path=tmp, tracking_uri=tracking_uri
            )
            return Path(local).read_text(encoding="utf-8")
        except (MlflowException, OSError):
            if version.description:
                return version.description
    raise RegistryError(f"{uri}: version {version.version} has no model card (registered before cards existed)")


def write_version_card(
    client: Any, record: Mapping[str, Any], upstream: Mapping[str, Artifact], base_model: str | None, summary: str
) -> str:
    """Render a registered version's card from its upstream artifacts and publish it (`publish_card`).

    A card that cannot be rendered (an upstream record missing a field) is logged as a WARNING, not raised: the
    version stays registered, with the short description `log_and_register` gave it.

    Returns:
        The card ("" when none could be rendered).
    """
    name, version = str(record["name"]), str(record["version"])
    try:
        card = render_card(name, version, upstream, base_model)
        short = short_card(name, version, upstream, summary)
    except (
        AttributeError,
        KeyError,
        TypeError,
        ValueError,
        OSError,
    ) as exc:  # an odd record must not undo a registration
        logger.warning(
            "%s version %s: no model card written, its upstream records are incomplete: %r", name, version, exc
        )
        return ""
    publish_card(client, record, card, short)
    return card
