"""Operations: liveness, readiness, what is served, and a reload without dropping requests."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ner_pipeline.serve.deps import BatcherDep, HandleDep, StateDep, api_key_scheme
from ner_pipeline.serve.schemas import Health, ModelInfo

router = APIRouter(tags=["ops"])
NOT_READY = {503: {"description": "The model is not loaded (yet), or a batching lane is restarting."}}


@router.get("/health", response_model=Health, responses={503: {"description": "The model failed to load for good."}})
async def health(state: StateDep, response: Response) -> Health:
    """The process is alive: answers while the model loads (`loading`), 503 when it can never load it."""
    if state.handle is not None:
        return Health(status="ok")
    if state.load_failure is not None:
        response.status_code = 503
        return Health(status="failed")
    return Health(status="loading")


@router.get("/ready", response_model=Health, responses=NOT_READY)
async def ready(batcher: BatcherDep) -> Health:
    """The model is loaded and the batching lanes run: requests are served."""
    return Health(status="ready")


@router.get("/model", response_model=ModelInfo, dependencies=[api_key_scheme], responses=NOT_READY)
async def model_info(handle: HandleDep) -> ModelInfo:
    """Name, version, alias, metrics, labels and backend of the model being served."""
    return handle.info


@router.post("/admin/reload", response_model=ModelInfo, dependencies=[api_key_scheme])
async def admin_reload(state: StateDep) -> ModelInfo:
    """Load the model again (e.g. after `production` moved) and swap it in without dropping requests."""
    return (await state.reload()).info
