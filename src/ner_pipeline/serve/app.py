"""The app factory: settings, a model loader and the routers in; the service out, with its lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from ner_pipeline.config import ServeConfig
from ner_pipeline.serve.batcher import Batcher
from ner_pipeline.serve.context import RequestIdMiddleware
from ner_pipeline.serve.guard import RequestGuard
from ner_pipeline.serve.loading import load_handle
from ner_pipeline.serve.routes import demo, ops, predict
from ner_pipeline.serve.state import ModelHandle, ServiceState

logger = logging.getLogger(__name__)


def create_app(
    settings: ServeConfig,
    loader: Callable[[], ModelHandle],
    api_key: str | None = None,
    current_version: Callable[[], str | None] | None = None,
) -> FastAPI:
    """Build the service.

    Args:
        settings: Limits, batching and polling settings.
        loader: Loads the model to serve (called in a worker thread after start-up, and on reload).
        api_key: When set, every route but `/health` and `/ready` requires it in the `X-API-Key` header.
        current_version: Returns the version the alias points at now (enables polling).
    """
    # Swagger UI's script and styles come from the fastapi-offline package, served here: /docs needs no CDN.
    app = FastAPIOffline(
        title="ner-pipeline",
        summary="Named-entity recognition service",
        lifespan=lifespan,
        redoc_url=None,
        static_url="/docs-static",
    )
    app.state.service = ServiceState(settings=settings, loader=loader, current_version=current_version)
    app.add_exception_handler(RequestValidationError, validation_error)
    # Added first, so it runs inside the request-id middleware: its refusals are logged with their id too.
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    for module in (ops, predict, demo):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading the model in the background and start the batcher (and the alias poller); on shutdown stop
    them and free the model. `/health` answers at once; `/ready` once the model is loaded."""
    state: ServiceState = app.state.service
    settings = state.settings
    state.batcher = Batcher(state.require_handle, settings, state.gate)
    tasks = [asyncio.create_task(state.load()), asyncio.create_task(state.batcher.run())]
    if settings.reload_poll_seconds and state.current_version is not None:
        tasks.append(asyncio.create_task(state.poll(settings.reload_poll_seconds)))
    yield
    for task in tasks:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    if state.handle is not None:
        state.handle.close()


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field, without echoing the input back (it may be huge, or not encodable at all)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


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
