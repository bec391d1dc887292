"""Request ids: one per request (its X-Request-ID header or a fresh one), on every log line and every response."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record (`%(request_id)s` in the format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


async def request_id_middleware(request: Request, call_next: Callable[[Request], Any]) -> Any:
    """Tag the request with its id, log its outcome and time, and answer unhandled errors without internals."""
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
