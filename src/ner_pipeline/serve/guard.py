"""The door: API key and body size checked from the headers alone, before one byte of the body is read.

A pure ASGI middleware, so a request without the key, or with a body larger than `serve.max_body_bytes`, is
answered (401, 413) without parsing or even receiving its body. A body sent in chunks, without a Content-Length,
is read only up to the limit.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = frozenset({"/health", "/ready"})  # probes answer without the key
API_KEY_HEADER = "X-API-Key"


class RequestGuard:
    """Refuses requests without the API key (every path but the probes) and bodies over the size limit."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if "content-length" not in headers and "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_limited(receive)
            if body is None:
                await _error(413, f"request body over {self.max_body_bytes} bytes")(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _refusal(self, path: str, headers: Headers) -> JSONResponse | None:
        if self.api_key and path not in OPEN_PATHS:
            key = headers.get(API_KEY_HEADER, "")
            if not secrets.compare_digest(key.encode(), self.api_key.encode()):
                return _error(401, f"missing or wrong API key (header {API_KEY_HEADER})")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error(400, "Content-Length is not a number")
            if int(length) > self.max_body_bytes:
                return _error(413, f"request body of {length} bytes; the limit is {self.max_body_bytes}")
        return None

    async def _read_limited(self, receive: Receive) -> bytes | None:
        """The chunked body, or None as soon as it passes the limit (the rest is never read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _error(status: int, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": API_KEY_HEADER} if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _replay(body: bytes, original: Receive) -> Receive:
    """A receive that hands over the body already read, then waits on the connection as the original does."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive
