"""Operations: liveness, readiness, what is served, and a reload without dropping requests."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ner_pipeline.serve.deps import HandleDep, StateDep, require_api_key
from ner_pipeline.serve.schemas import Health, ModelInfo

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/ready", response_model=Health)
async def ready(handle: HandleDep) -> Health:
    """The model is loaded and requests are served."""
    return Health(status="ready")


@router.get("/model", response_model=ModelInfo)
async def model_info(handle: HandleDep) -> ModelInfo:
    """Name, version, alias, metrics, labels and backend of the model being served."""
    return handle.info


@router.post("/admin/reload", response_model=ModelInfo, dependencies=[Depends(require_api_key)])
async def admin_reload(state: StateDep) -> ModelInfo:
    """Load the model again (e.g. after `production` moved) and swap it in without dropping requests."""
    return (await state.reload()).info
