"""Dependencies the routes declare: the service state, the served model and the API key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from ner_pipeline.serve.state import ModelHandle, ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_handle(state: StateDep) -> ModelHandle:
    """The model being served; 503 until the lifespan has loaded it."""
    return state.require_handle()


HandleDep = Annotated[ModelHandle, Depends(get_handle)]
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Check the API key when the service was started with one."""
    expected: str | None = request.app.state.api_key
    if expected and not (key and secrets.compare_digest(key, expected)):
        raise HTTPException(401, "missing or wrong API key (header X-API-Key)")
