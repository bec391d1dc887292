"""The app factory: settings, a model loader and the routers in; the service out, with its lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from ner_pipeline.config import ServeConfig
from ner_pipeline.serve.batcher import MicroBatcher
from ner_pipeline.serve.context import request_id_middleware
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
        loader: Loads the model to serve (called at start-up and on reload).
        api_key: When set, predict and admin routes require it in the `X-API-Key` header.
        current_version: Returns the version the alias points at now (enables polling).
    """
    app = FastAPI(title="ner-pipeline", summary="Named-entity recognition service", lifespan=lifespan)
    app.state.service = ServiceState(settings=settings, loader=loader, current_version=current_version)
    app.state.api_key = api_key
    app.middleware("http")(request_id_middleware)
    for module in (ops, predict, demo):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model and start the batcher (and the alias poller); on shutdown stop both and free the model."""
    state: ServiceState = app.state.service
    settings = state.settings
    state.handle = await asyncio.to_thread(state.loader)
    logger.info("serving %s on backend %s", state.handle.label, state.handle.info.backend)
    state.batcher = MicroBatcher(state.require_handle, settings.max_batch_size, settings.batch_wait_ms)
    tasks = [asyncio.create_task(state.batcher.run())]
    if settings.reload_poll_seconds and state.current_version is not None:
        tasks.append(asyncio.create_task(state.poll(settings.reload_poll_seconds)))
    yield
    for task in tasks:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    if state.handle is not None:
        state.handle.close()


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
