"""FastAPI service for the production model: dynamic batching, limits, API key, hot reload and a demo page.

The model is loaded once in the lifespan and reached through a dependency. Requests are queued and batched for a
few milliseconds so concurrent callers share one forward pass, which runs in a worker thread so the event loop
never blocks. `POST /admin/reload` (or polling the alias) loads the new model beside the old one and swaps the
reference: requests already batched finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from ner_pipeline.config import ServeConfig

logger = logging.getLogger(__name__)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record (`%(request_id)s` in the format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


# --- API models ------------------------------------------------------------------------------------------------


class EntityOut(BaseModel):
    label: str = Field(description="Entity type, e.g. PER.")
    text: str = Field(description="The exact substring of the input.")
    start: int = Field(description="Start character offset into the input text.")
    end: int = Field(description="End character offset (exclusive).")
    score: float = Field(description="Model confidence in [0, 1].")


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="Raw texts to tag.")
    aggregation: Literal["first", "average", "max"] = Field(
        "first", description="How subword scores combine into a word's label (as in Hugging Face pipelines)."
    )


class PredictResponse(BaseModel):
    model: str = Field(description="name/version (or folder) of the model that answered.")
    entities: list[list[EntityOut]]


class ModelInfo(BaseModel):
    name: str
    version: str | None = None
    alias: str | None = None
    source: str
    backend: str
    labels: list[str]
    metrics: dict[str, float] = {}


class Health(BaseModel):
    status: str


# --- model handle and batching --------------------------------------------------------------------------------


@dataclass
class ModelHandle:
    """A loaded predictor and what the service reports about it."""

    predictor: Any  # ner_pipeline.predict.Predictor: predict(texts, aggregation=...) -> list[list[Entity]]
    info: ModelInfo
    workdir: Path | None = None  # the download of a registry model, ours to delete

    @property
    def label(self) -> str:
        return f"{self.info.name}/{self.info.version}" if self.info.version else self.info.name

    def close(self) -> None:
        """Delete the downloaded files; the loaded model stays usable (it is in memory)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


@dataclass
class _Job:
    texts: list[str]
    aggregation: str
    future: asyncio.Future[tuple[str, list[list[Any]]]]
    request_id: str = "-"


@dataclass
class MicroBatcher:
    """Collects requests for up to `wait_ms` (or `max_batch` texts) and runs them as one forward pass."""

    handle_ref: Callable[[], ModelHandle]
    max_batch: int
    wait_ms: float
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    batches: int = 0

    async def submit(self, texts: list[str], aggregation: str) -> tuple[str, list[list[Any]]]:
        future: asyncio.Future[tuple[str, list[list[Any]]]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(texts, aggregation, future, request_id_var.get()))
        return await future

    async def run(self) -> None:
        while True:
            first = await self.queue.get()
            jobs = [first]
            size = len(first.texts)
            deadline = time.monotonic() + self.wait_ms / 1000
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
                jobs.append(job)
                size += len(job.texts)
            await self._run_batch(jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        handle = self.handle_ref()  # one model for the whole batch, even if a reload swaps it meanwhile
        by_aggregation: dict[str, list[_Job]] = {}
        for job in jobs:
            by_aggregation.setdefault(job.aggregation, []).append(job)
        for aggregation, group in by_aggregation.items():
            texts = [t for job in group for t in job.texts]
            # Log lines of a batch (ours and the predictor's, in its worker thread) name the requests it serves.
            request_id_var.set(",".join(dict.fromkeys(job.request_id for job in group)))
            logger.debug("batch of %d texts from %d requests on %s", len(texts), len(group), handle.label)
            try:
                results = await asyncio.to_thread(handle.predictor.predict, texts, aggregation=aggregation)
            except Exception as exc:  # answer every waiting request instead of hanging them
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            offset = 0
            for job in group:
                if not job.future.done():
                    job.future.set_result((handle.label, results[offset : offset + len(job.texts)]))
                offset += len(job.texts)


@dataclass
class ServiceState:
    """What the app holds between requests."""

    settings: ServeConfig
    loader: Callable[[], ModelHandle]
    current_version: Callable[[], str | None] | None = None
    handle: ModelHandle | None = None
    batcher: MicroBatcher | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reloads: int = 0

    def require_handle(self) -> ModelHandle:
        if self.handle is None:
            raise HTTPException(503, "model not loaded yet")
        return self.handle

    async def reload(self) -> ModelHandle:
        """Load the model again (e.g. after `production` moved) and swap it in once it is ready."""
        async with self.reload_lock:
            fresh = await asyncio.to_thread(self.loader)
            old = self.handle
            self.handle = fresh
            self.reloads += 1
            logger.info("model reloaded: %s -> %s", old.label if old else "-", fresh.label)
            if old is not None:
                old.close()  # batches still running on it have it in memory
            return fresh

    async def poll(self, every: float) -> None:
        """Reload when the alias points at another version than the one served."""
        request_id_var.set("poll")  # this task's own context: its log lines are not any request's
        while True:
            await asyncio.sleep(every)
            if self.current_version is None or self.handle is None:
                continue
            try:
                latest = await asyncio.to_thread(self.current_version)
            except Exception as exc:  # a registry hiccup must not kill the poller
                logger.warning("alias poll failed: %s", exc)
                continue
            if latest is not None and latest != self.handle.info.version:
                try:
                    await self.reload()
                except Exception:  # keep serving the old model and try again at the next poll
                    logger.exception("reloading version %s failed; still serving %s", latest, self.handle.label)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Check the API key when the service was started with one."""
    expected: str | None = request.app.state.api_key
    if expected and not (key and secrets.compare_digest(key, expected)):
        raise HTTPException(401, "missing or wrong API key (header X-API-Key)")


# --- the app ---------------------------------------------------------------------------------------------------


def create_app(
    settings: ServeConfig,
    loader: Callable[[], ModelHandle],
    api_key: str | None = None,
    current_version: Callable[[], str | None] | None = None,
) -> FastAPI:
    """Build the service.

    Args:
        settings: Limits, batching and polling settings.
        loader: Loads the model to serve (called at start-up and on reload).
        api_key: When set, predict and admin routes require it in the `X-API-Key` header.
        current_version: Returns the version the alias points at now (enables polling).
    """
    state = ServiceState(settings=settings, loader=loader, current_version=current_version)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.handle = await asyncio.to_thread(loader)
        logger.info("serving %s on backend %s", state.handle.label, state.handle.info.backend)
        state.batcher = MicroBatcher(state.require_handle, settings.max_batch_size, settings.batch_wait_ms)
        tasks = [asyncio.create_task(state.batcher.run())]
        if settings.reload_poll_seconds and current_version is not None:
            tasks.append(asyncio.create_task(state.poll(settings.reload_poll_seconds)))
        yield
        for task in tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if state.handle is not None:
            state.handle.close()

    app = FastAPI(title="ner-pipeline", summary="Named-entity recognition service", lifespan=lifespan)
    app.state.service = state
    app.state.api_key = api_key

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Any]) -> Any:
        rid = request.headers.get("X-Request-ID") or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        started = time.perf_counter()
        try:
            try:
                response = await call_next(request)
            except Exception:
                logger.exception("unhandled error on %s %s", request.method, request.url.path)
                response = JSONResponse({"detail": "internal error", "request_id": rid}, status_code=500)
            response.headers["X-Request-ID"] = rid
            elapsed = (time.perf_counter() - started) * 1000
            logger.info("%s %s -> %s in %.1f ms", request.method, request.url.path, response.status_code, elapsed)
        finally:
            request_id_var.reset(token)
        return response

    @app.get("/health", response_model=Health, tags=["ops"])
    async def health() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get("/ready", response_model=Health, tags=["ops"])
    async def ready(state: StateDep) -> Health:
        """The model is loaded and requests are served."""
        state.require_handle()
        return Health(status="ready")

    @app.get("/model", response_model=ModelInfo, tags=["ops"])
    async def model_info(state: StateDep) -> ModelInfo:
        """Name, version, alias, metrics, labels and backend of the model being served."""
        return state.require_handle().info

    @app.post(
        "/predict",
        response_model=PredictResponse,
        tags=["predict"],
        dependencies=[Depends(require_api_key)],
        responses={401: {"description": "API key missing or wrong"}, 413: {"description": "Input too large"}},
    )
    async def predict(body: PredictRequest, state: StateDep) -> PredictResponse:
        """Entities per text, with character offsets into the text."""
        if len(body.texts) > settings.max_texts:
            raise HTTPException(413, f"too many texts: {len(body.texts)} > {settings.max_texts} per request")
        for i, text in enumerate(body.texts):
            if len(text) > settings.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text)} characters; the limit is {settings.max_chars}")
        state.require_handle()
        assert state.batcher is not None
        label, results = await state.batcher.submit(body.texts, body.aggregation)
        entities = [[EntityOut.model_validate(_entity_dict(e)) for e in ents] for ents in results]
        return PredictResponse(model=label, entities=entities)

    @app.post("/admin/reload", response_model=ModelInfo, tags=["ops"], dependencies=[Depends(require_api_key)])
    async def admin_reload(state: StateDep) -> ModelInfo:
        """Load the model again (e.g. after `production` moved) and swap it in without dropping requests."""
        return (await state.reload()).info

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo_page() -> str:
        return files("ner_pipeline").joinpath("static/demo.html").read_text(encoding="utf-8")

    return app


def _entity_dict(entity: Any) -> dict[str, Any]:
    return entity.model_dump() if hasattr(entity, "model_dump") else dict(entity)


# --- loading the model to serve --------------------------------------------------------------------------------


def choose_backend(requested: str, parity: dict[str, Any] | None) -> str:
    """auto → onnx-int8 when its parity check passed, else onnx (optimized or plain) when accepted, else torch."""
    if requested != "auto":
        return requested
    report = parity or {}
    if report.get("onnx-int8", {}).get("accepted"):
        return "onnx-int8"
    if any(report.get(v, {}).get("accepted") for v in ("onnx-optimized", "onnx")):
        return "onnx"
    return "torch"


def load_handle(
    source: str, backend: str, tracking_uri: str | None, onnx: str | None = None, threads: int | None = None
) -> ModelHandle:
    """Load what to serve from a model folder or `models:/NAME@alias`, on the best accepted backend.

    Args:
        source: A model folder or a registry URI (whose logged model carries its ONNX export).
        backend: auto, torch, onnx or onnx-int8.
        tracking_uri: MLflow URI for registry sources.
        onnx: The export folder for a model-folder source (an export artifact), if any.
        threads: Inference threads (None: the runtime's default).
    """
    import tempfile

    # A registry model is downloaded into a folder the handle owns (deleted by `close`, or here on failure).
    workdir = Path(tempfile.mkdtemp(prefix="ner-serve-")) if source.startswith("models:/") else None
    try:
        return _load_handle(source, backend, tracking_uri, onnx, threads, workdir)
    except BaseException:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _load_handle(
    source: str, backend: str, tracking_uri: str | None, onnx: str | None, threads: int | None, workdir: Path | None
) -> ModelHandle:
    import json

    from ner_pipeline.errors import ModelError
    from ner_pipeline.predict import PARITY_FILE, Predictor

    if workdir is not None:
        from ner_pipeline import registry

        if tracking_uri is None:
            raise ModelError(f"{source}: a registry URI needs an MLflow tracking URI")
        fetched = registry.fetch_model(source, tracking_uri, workdir)
        model_dir, onnx_dir = fetched.model_dir, fetched.onnx_dir
        name, version, alias, metrics = fetched.name, fetched.version, fetched.alias, fetched.metrics
    else:
        model_dir = Path(source)
        onnx_dir = Path(onnx) if onnx else None
        name, version, alias, metrics = str(model_dir), None, None, {}
    parity_file = onnx_dir / PARITY_FILE if onnx_dir else None
    parity = json.loads(parity_file.read_text()) if parity_file and parity_file.is_file() else None
    chosen = choose_backend(backend, parity)
    predictor = Predictor.load(model_dir, backend=chosen, onnx_dir=onnx_dir, threads=threads)  # type: ignore[arg-type]
    info = ModelInfo(
        name=name,
        version=version,
        alias=alias,
        source=source,
        backend=chosen,
        labels=predictor.labels,
        metrics={k: v for k, v in metrics.items() if not k.startswith(("validation_f1_", "test_f1_ci"))},
    )
    return ModelHandle(predictor=predictor, info=info, workdir=workdir)


def build_app(
    settings: ServeConfig, source: str, tracking_uri: str | None, api_key: str | None, onnx: str | None = None
) -> FastAPI:
    """The service for `source`, polling its alias for moves when it is a registry alias and polling is on."""
    current_version = None
    if source.startswith("models:/") and "@" in source and tracking_uri:
        from ner_pipeline import registry

        def current_version() -> str | None:
            return str(registry.resolve_version(tracking_uri, source).version)

    return create_app(
        settings,
        loader=lambda: load_handle(source, settings.backend, tracking_uri, onnx, settings.threads),
        api_key=api_key,
        current_version=current_version,
    )
