"""Body size limit, enforced before parsing (pure ASGI, so it costs nothing per request).

A declared Content-Length over the limit is refused with 413 before a byte of the body is read;
a malformed one is 400; a body that arrives without a length (chunked) is counted as it streams
and refused with 413 the moment it passes the limit. A body exactly at the limit is accepted.
"""

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge


def error_body(path: str, message: str) -> bytes:
    """An error body in the shape the route family uses: /v2 speaks KServe, the rest FastAPI."""
    key = "error" if path == "/v2" or path.startswith("/v2/") else "detail"
    return orjson.dumps({key: message})


class BodyLimitMiddleware:
    """Refuse request bodies larger than `max_bytes` (LENET_MAX_BODY_BYTES)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"the body is over the limit of {self.max_bytes} bytes (LENET_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if not text.isdigit():
                await self._answer(scope, send, 400, "malformed Content-Length header")
                return
            if int(text) > self.max_bytes:
                await self._answer(scope, send, 413, self._too_large())
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read; the app's handler answers 413.
                    raise PayloadTooLarge(self._too_large())
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    async def _answer(scope: Scope, send: Send, status: int, message: str) -> None:
        body = error_body(scope.get("path", ""), message)
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
