"""`POST /predict`: entities in raw texts, within the configured limits, through the dynamic batcher."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from ner_pipeline.config import ServeConfig
from ner_pipeline.serve.deps import StateDep, require_api_key
from ner_pipeline.serve.schemas import EntityOut, PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    dependencies=[Depends(require_api_key)],
    responses={401: {"description": "API key missing or wrong"}, 413: {"description": "Input too large"}},
)
async def predict(body: PredictRequest, state: StateDep) -> PredictResponse:
    """Entities per text, with character offsets into the text."""
    check_limits(body.texts, state.settings)
    label, results = await state.require_batcher().submit(body.texts, body.aggregation)
    entities = [[EntityOut.model_validate(_entity_dict(e)) for e in ents] for ents in results]
    return PredictResponse(model=label, entities=entities)


def check_limits(texts: list[str], settings: ServeConfig) -> None:
    """413 for more texts per request, or more characters per text, than the settings allow."""
    if len(texts) > settings.max_texts:
        raise HTTPException(413, f"too many texts: {len(texts)} > {settings.max_texts} per request")
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            raise HTTPException(413, f"texts[{i}] has {len(text)} characters; the limit is {settings.max_chars}")


def _entity_dict(entity: Any) -> dict[str, Any]:
    return entity.model_dump() if hasattr(entity, "model_dump") else dict(entity)
