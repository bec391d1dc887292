"""Dependencies the routes declare: the service state, the served model and the batcher.

They are coroutines: FastAPI runs a plain-function dependency in its thread pool, a thread hop per dependency
per request, which a busy service pays on every request.

The API key is checked by `guard.RequestGuard` before a route is reached; `api_key_scheme` only declares it in
the OpenAPI schema, so `/docs` offers it under "Authorize".
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from ner_pipeline.serve.batcher import Batcher
from ner_pipeline.serve.guard import API_KEY_HEADER
from ner_pipeline.serve.state import ModelHandle, ServiceState


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_handle(state: StateDep) -> ModelHandle:
    """The model being served; 503 until it is loaded."""
    return state.require_handle()


HandleDep = Annotated[ModelHandle, Depends(get_handle)]


async def get_batcher(state: StateDep) -> Batcher:
    """The batcher; 503 until the model is loaded and while a batching lane restarts."""
    return state.require_batcher()


BatcherDep = Annotated[Batcher, Depends(get_batcher)]
api_key_scheme = Security(
    APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Required when the service has a key.")
)
