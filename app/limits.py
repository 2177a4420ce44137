"""Body size limit, enforced before parsing (pure ASGI, so it costs nothing per request).

A declared Content-Length over the limit is refused with 413 before a byte of the body is read;
a malformed one is 400; a body that arrives without a length (chunked) is counted as it streams
and refused with 413 the moment it passes the limit. A body exactly at the limit is accepted.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, PayloadTooLarge
from app.http_errors import send_error

# The connection cannot be reused: the body the client is still sending was never read.
_CLOSE = {"Connection": "close"}


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
                await send_error(scope, send, BadRequest("malformed Content-Length header", _CLOSE))
                return
            # Compared by length first: int() refuses texts past 4300 digits (a 500, not a 413).
            digits = text.lstrip("0") or "0"
            if len(digits) > len(str(self.max_bytes)) or int(digits) > self.max_bytes:
                await send_error(scope, send, PayloadTooLarge(self._too_large(), _CLOSE))
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
