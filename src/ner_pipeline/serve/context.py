"""Request ids: one per request (its X-Request-ID header or a fresh one), on every log line and every response."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record (`%(request_id)s` in the format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestIdMiddleware:
    """Tags each request with its id, logs its outcome and time, and answers unhandled errors without internals.

    A pure ASGI middleware: Starlette's `BaseHTTPMiddleware` runs every request through an extra task and memory
    stream, a cost paid on each request of a busy service.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = Headers(scope=scope).get("X-Request-ID") or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status: int | None = None

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_tagged)
            except Exception:
                logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
                if status is not None:  # the answer has begun: nothing left to replace
                    raise
                await JSONResponse({"detail": "internal error", "request_id": rid}, 500)(scope, receive, send_tagged)
            elapsed = (time.perf_counter() - started) * 1000
            logger.info("%s %s -> %s in %.1f ms", scope["method"], scope["path"], status, elapsed)
        finally:
            request_id_var.reset(token)
