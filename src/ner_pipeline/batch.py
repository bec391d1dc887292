"""Batch inference: tag a corpus with a model (a registry version or a model folder) and write one Parquet file.

The corpus is cut into chunks of `chunk_size` texts. Each chunk's output is a cached artifact (stage
`batch-predict`) keyed by the chunk's content, the model's identity (registry name, version and logged-model
source, or a model folder's file hashes), the predictor settings and the code and libraries that decide the
output. So a killed job resumes at the first missing chunk, a rerun with the same model computes nothing (the
model is not even downloaded), and a new production version recomputes every chunk. The output file is the
chunks' tables concatenated, written through a temporary file and a rename.

Loading reuses the server's loader (`serve.loading.load_handle`: registry download, backend choice from the
export's parity record) and tagging is `predict.Predictor.predict`.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ner_pipeline.artifacts import Artifact, ArtifactStore, artifact_key, hash_files
from ner_pipeline.config import PipelineConfig
from ner_pipeline.corpus import Corpus, fingerprint, read_corpus
from ner_pipeline.errors import ModelError
from ner_pipeline.lineage import library_version, module_fingerprint
from ner_pipeline.serve.state import ModelHandle

logger = logging.getLogger(__name__)

STAGE = "batch-predict"
VERSION = "1"
CHUNK_SIZE = 10_000
PROGRESS_STEP = 500  # texts per predictor call inside a chunk: how often the progress bar moves
CHUNK_FILE = "predictions.parquet"
BATCH_EXPERIMENT = "ner-batch-predict"  # the MLflow experiment of batch jobs
# What decides a chunk's output besides the model and settings (the batch stage is not in lineage.STAGE_CODE).
CODE = ("batch", "corpus", "predict", "backends", "preprocessing", "spans", "serve.loading")
LIBRARIES = ("torch", "transformers", "tokenizers", "onnxruntime", "pyarrow")


@dataclass(frozen=True)
class ModelRef:
    """A model to tag with, resolved but not loaded: what to load and what identifies its output."""

    source: str  # a model folder, or models:/NAME/VERSION pinned to the number
    name: str
    version: str | None
    identity: dict[str, Any]
    onnx: str | None = None


@dataclass
class BatchResult:
    """What a batch job did."""

    output: str
    texts: int
    chunks: int
    computed: int
    model_name: str
    model_version: str | None
    input_fingerprint: str
    seconds: float
    entities: dict[str, int] = field(default_factory=dict)
    chunk_keys: list[str] = field(default_factory=list)

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0


def resolve_model(source: str, tracking_uri: str | None, onnx: str | None = None) -> ModelRef:
    """Resolve `models:/NAME@alias`, `models:/NAME/VERSION` or a model folder without downloading or loading it.

    Raises:
        ModelError: a folder that is not there, or a registry URI without a tracking URI.
        RegistryError: the registry has no such version or alias.
    """
    if source.startswith("models:/"):
        from ner_pipeline import registry
        from ner_pipeline.registry.register import REGISTER_TAG

        if tracking_uri is None:
            raise ModelError(f"{source}: a registry URI needs an MLflow tracking URI")
        mv = registry.resolve_version(tracking_uri, source)
        identity = {
            "name": mv.name,
            "version": str(mv.version),
            "source": mv.source,
            "register_key": (mv.tags or {}).get(REGISTER_TAG),
        }
        return ModelRef(f"models:/{mv.name}/{mv.version}", mv.name, str(mv.version), identity)
    from ner_pipeline.serve.loading import public_name

    folder = Path(source)
    if not folder.is_dir():
        raise ModelError(f"{source}: no such model folder (pass a folder or models:/NAME@alias)")
    identity = {"model": _folder_hash(folder), "onnx": _folder_hash(Path(onnx)) if onnx else None}
    return ModelRef(str(folder), public_name(folder), None, identity, onnx)


def _folder_hash(folder: Path) -> str:
    return hash_files(sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")))


def chunk_key(chunk_hash: str, model: ModelRef, settings: dict[str, Any]) -> str:
    """The cache key of one chunk's predictions."""
    config = {
        "chunk": chunk_hash,
        "model": model.identity,
        "predictor": settings,
        "code": {m: module_fingerprint(m) for m in CODE},
        "libraries": {d: library_version(d) for d in LIBRARIES},
    }
    return artifact_key(STAGE, VERSION, config)


def default_loader(model: ModelRef, backend: str, tracking_uri: str | None) -> ModelHandle:
    """Load the model as the server does (`serve.loading.load_handle`)."""
    from ner_pipeline.serve.loading import load_handle

    return load_handle(model.source, backend, tracking_uri, onnx=model.onnx)


Loader = Callable[[ModelRef, str, str | None], ModelHandle]


def run_batch(
    source: str,
    model_source: str,
    output: str,
    store: ArtifactStore,
    tracking_uri: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    backend: str = "auto",
    onnx: str | None = None,
    text_field: str = "text",
    tracker: Any | None = None,
    progress: bool = True,
    loader: Loader = default_loader,
) -> BatchResult:
    """Tag every text of `source` and write `output` (Parquet), reusing every chunk already computed.

    Args:
        source: Corpus file or folder, local or an fsspec URL (see `corpus.read_corpus`).
        model_source: `models:/NAME@alias`, `models:/NAME/VERSION` or a model folder.
        output: The Parquet file to write (local path or fsspec URL).
        store: The artifact store holding chunk outputs.
        tracking_uri: MLflow URI for registry models.
        chunk_size: Texts per cached chunk.
        backend: auto (the export's accepted default), torch, onnx or onnx-int8.
        onnx: The export folder of a model-folder source.
        text_field: JSONL field / Parquet column with the text.
        tracker: An open `tracking.Tracker` to log the job to, or None.
        progress: Show a progress bar (stderr).
        loader: Loads the model (tests wrap the predictor here).
    """
    if chunk_size < 1:
        raise ModelError(f"chunk_size must be at least 1 (got {chunk_size})")
    started = time.perf_counter()
    corpus = read_corpus(source, text_field)
    model = resolve_model(model_source, tracking_uri, onnx)
    settings = {"backend": backend, "aggregation": "first", "step": PROGRESS_STEP}
    spans = [(i, min(i + chunk_size, len(corpus))) for i in range(0, len(corpus), chunk_size)]
    hashes = [fingerprint(corpus.ids[a:b], corpus.texts[a:b]) for a, b in spans]
    keys = [chunk_key(h, model, settings) for h in hashes]
    tagger = _LazyModel(model, backend, tracking_uri, loader)
    artifacts: list[Artifact] = []
    try:
        with _progress_bar(len(corpus), progress) as bar:
            for (a, b), key in zip(spans, keys, strict=True):
                chunk = Corpus(corpus.ids[a:b], corpus.texts[a:b])
                artifacts.append(
                    store.build(STAGE, key, lambda folder, c=chunk: _tag_chunk(folder, c, tagger, model, bar))
                )
                if artifacts[-1].cached:
                    bar.update(b - a)
    finally:
        tagger.close()
    write_output([a.path / CHUNK_FILE for a in artifacts], output)
    result = BatchResult(
        output=output,
        texts=len(corpus),
        chunks=len(spans),
        computed=sum(not a.cached for a in artifacts),
        model_name=model.name,
        model_version=model.version,
        input_fingerprint=hashlib.sha256("".join(hashes).encode()).hexdigest(),
        seconds=time.perf_counter() - started,
        entities=dict(sum((Counter(a.stats.get("entities", {})) for a in artifacts), Counter())),
        chunk_keys=keys,
    )
    logger.info(
        "%s: %d texts, %d/%d chunks computed, %.1f texts/s -> %s",
        source, result.texts, result.computed, result.chunks, result.texts_per_s, output,
    )  # fmt: skip
    if tracker is not None:
        log_job(tracker, result, source, model_source, settings, chunk_size)
    return result


class _LazyModel:
    """Loads the model on the first chunk that needs it, so a fully cached job downloads nothing."""

    def __init__(self, model: ModelRef, backend: str, tracking_uri: str | None, loader: Loader) -> None:
        self.model, self.backend, self.tracking_uri, self.loader = model, backend, tracking_uri, loader
        self.handle: ModelHandle | None = None

    def predict(self, texts: list[str]) -> list[list[Any]]:
        if self.handle is None:
            self.handle = self.loader(self.model, self.backend, self.tracking_uri)
            logger.info("loaded %s on %s", self.handle.label, self.handle.info.backend)
        return self.handle.predictor.predict(texts)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _tag_chunk(folder: Path, chunk: Corpus, tagger: _LazyModel, model: ModelRef, bar: Any) -> dict[str, Any]:
    import pyarrow.parquet as pq

    started = time.perf_counter()
    entities: list[list[dict[str, Any]]] = []
    for i in range(0, len(chunk), PROGRESS_STEP):
        part = chunk.texts[i : i + PROGRESS_STEP]
        entities += [[e.model_dump() for e in row] for row in tagger.predict(part)]
        bar.update(len(part))
    table = chunk_table(chunk, entities, model)
    pq.write_table(table, folder / CHUNK_FILE)
    counts = Counter(e["label"] for row in entities for e in row)
    return {"texts": len(chunk), "entities": dict(sorted(counts.items())), "seconds": time.perf_counter() - started}


def chunk_table(chunk: Corpus, entities: list[list[dict[str, Any]]], model: ModelRef) -> Any:
    """One row per text: id, text, entities (label, start, end, text, score), model name and version."""
    import pyarrow as pa

    entity = pa.struct(
        [("label", pa.string()), ("start", pa.int32()), ("end", pa.int32()), ("text", pa.string()),
         ("score", pa.float64())]
    )  # fmt: skip
    rows = [[{k: e[k] for k in ("label", "start", "end", "text", "score")} for e in row] for row in entities]
    return pa.table(
        {
            "id": pa.array(chunk.ids, pa.string()),
            "text": pa.array(chunk.texts, pa.string()),
            "entities": pa.array(rows, pa.list_(entity)),
            "model_name": pa.array([model.name] * len(chunk), pa.string()),
            "model_version": pa.array([model.version] * len(chunk), pa.string()),
        }
    )


def write_output(chunk_files: list[Path], output: str) -> None:
    """Concatenate the chunks' tables into `output` through a temporary file and a rename."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(output)
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    table = pa.concat_tables([pq.read_table(p) for p in chunk_files]) if chunk_files else None
    try:
        with fs.open(tmp, "wb") as handle:
            if table is not None:
                pq.write_table(table, handle)
            else:
                pq.write_table(chunk_table(Corpus([], []), [], ModelRef("", "", None, {})), handle)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def log_job(
    tracker: Any, result: BatchResult, source: str, model_source: str, settings: dict[str, Any], chunk_size: int
) -> None:
    """Log a job to its MLflow run: input fingerprint, model version, texts/s and entities per type."""
    tracker.log_params(
        {
            "input.source": source,
            "input.fingerprint": result.input_fingerprint,
            "model.source": model_source,
            "model.name": result.model_name,
            "model.version": result.model_version or "-",
            "chunk_size": chunk_size,
            **{f"predictor.{k}": v for k, v in settings.items()},
            "output": result.output,
        }
    )
    tracker.log_metrics(
        {
            "texts": result.texts,
            "texts_per_s": result.texts_per_s,
            "chunks": result.chunks,
            "chunks_computed": result.computed,
            "seconds": result.seconds,
            **{f"entities.{label}": n for label, n in result.entities.items()},
        }
    )


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    """One tqdm bar on stderr for the whole job (disabled: counts silently)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="text", desc="batch-predict", disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()


def run_job(
    cfg: PipelineConfig,
    source: str,
    output: str,
    model_source: str | None = None,
    tags: dict[str, str] | None = None,
    **options: Any,
) -> BatchResult:
    """A batch job as the CLI and the flow run it: the config's artifact store and MLflow store, one run per job.

    Args:
        cfg: The resolved pipeline config (artifacts root, tracking, registry model name).
        source: The corpus.
        output: The Parquet file to write.
        model_source: A model folder or `models:/...`; None: `models:/<registry.model_name>@production`.
        tags: Extra MLflow run tags (e.g. the Prefect flow run id).
        options: Passed to `run_batch` (chunk_size, backend, onnx, text_field, progress).
    """
    import os

    from ner_pipeline import tracking
    from ner_pipeline.modelref import check_model_source

    model_source = model_source or f"models:/{cfg.registry.model_name}@production"
    uri = tracking.resolve_tracking_uri(cfg.tracking, os.environ)
    # A model that cannot load fails here in one line, before an MLflow run is opened for the job.
    check_model_source(model_source, options.get("backend", "auto"), options.get("onnx"), uri)
    tracker = None
    if cfg.tracking.enabled:
        run_name = f"batch-{Path(source.rstrip('/')).name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        tracker = tracking.start_job_run(
            uri, BATCH_EXPERIMENT, cfg.tracking.artifact_location, run_name, {"job": STAGE, **(tags or {})}
        )
    from ner_pipeline.pipeline import open_store

    store = open_store(cfg)
    try:
        result = run_batch(source, model_source, output, store, uri, tracker=tracker, **options)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if tracker is not None:
        tracker.end("FINISHED")
    return result
