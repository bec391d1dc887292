"""`POST /predict`: entities in raw texts, within the configured limits, through the batcher."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from ner_pipeline.config import ServeConfig
from ner_pipeline.errors import PredictError
from ner_pipeline.serve.batcher import QueueFull
from ner_pipeline.serve.deps import BatcherDep, StateDep, api_key_scheme
from ner_pipeline.serve.schemas import EntityOut, PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])
RENDER_INLINE_MAX = 200  # entities in an answer rendered on the event loop (about a millisecond)
RETRY_AFTER_S = 1  # a batch takes well under a second; a client told to wait longer would idle the service


@router.post(
    "/predict",
    response_model=PredictResponse,
    dependencies=[api_key_scheme],
    responses={
        401: {"description": "API key missing or wrong"},
        413: {"description": "Too many texts, characters or body bytes"},
        422: {"description": "Malformed body, or text that is not valid Unicode"},
        503: {"description": "Not ready, or the queue is full (see Retry-After)"},
        504: {"description": "No answer within serve.request_timeout_s"},
    },
)
async def predict(body: PredictRequest, state: StateDep, batcher: BatcherDep) -> Response:
    """Entities per text, with offsets in Unicode code points into the text."""
    check_limits(body.texts, state.settings)
    try:
        label, results = await batcher.submit(body.texts, body.aggregation)
    except QueueFull as exc:
        raise HTTPException(503, f"busy: {exc}", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except TimeoutError:
        raise HTTPException(504, f"no answer within {state.settings.request_timeout_s:g} s") from None
    except PredictError as exc:
        raise HTTPException(422, str(exc)) from None
    # A large answer (tens of thousands of entities) is rendered off the event loop, which keeps serving the rest;
    # a small one here, as a thread hop costs more than rendering it.
    if sum(len(entities) for entities in results) > RENDER_INLINE_MAX:
        return Response(await asyncio.to_thread(render, label, results), media_type="application/json")
    return Response(render(label, results), media_type="application/json")


def check_limits(texts: list[str], settings: ServeConfig) -> None:
    """413 for more texts, characters per text or characters per request than the settings allow."""
    if len(texts) > settings.max_texts:
        raise HTTPException(413, f"too many texts: {len(texts)} > {settings.max_texts} per request")
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            raise HTTPException(413, f"texts[{i}] has {len(text)} characters; the limit is {settings.max_chars}")
    total = sum(len(t) for t in texts)
    if total > settings.max_request_chars:
        raise HTTPException(
            413, f"the texts have {total} characters in all; the limit is {settings.max_request_chars} per request"
        )


def render(label: str, results: list[list[Any]]) -> bytes:
    """The JSON of a `PredictResponse`, validated once (the route returns it as is)."""
    entities = [[EntityOut.model_validate(_entity_dict(e)) for e in ents] for ents in results]
    return PredictResponse(model=label, entities=entities).model_dump_json().encode()


def _entity_dict(entity: Any) -> dict[str, Any]:
    return entity.model_dump() if hasattr(entity, "model_dump") else dict(entity)
