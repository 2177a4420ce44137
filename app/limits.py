"""Body size limit and body deadline, enforced before parsing (pure ASGI, so they cost nothing
per request).

A declared Content-Length over the limit is refused with 413 before a byte of the body is read;
a malformed one is 400; a body that arrives without a length (chunked) is counted as it streams
and refused with 413 the moment it passes the limit. A body exactly at the limit is accepted.
A body that has not arrived whole within `timeout_s` (LENET_BODY_TIMEOUT_S) of the end of the
headers is 408 and the connection closes, so that a slow or stalled client holds neither a
connection nor the server's shutdown for longer than that.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, PayloadTooLarge, RequestTimeout
from app.http_errors import send_error

# The connection cannot be reused: the body the client is still sending was never read.
_CLOSE = {"Connection": "close"}


class BodyLimitMiddleware:
    """Refuse request bodies larger than `max_bytes` (LENET_MAX_BODY_BYTES) or slower than
    `timeout_s` (LENET_BODY_TIMEOUT_S)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self) -> str:
        return f"the body is over the limit of {self.max_bytes} bytes (LENET_MAX_BODY_BYTES)"

    def _too_slow(self) -> str:
        return (
            f"the body did not arrive whole within {self.timeout_s:g} s of the headers "
            "(LENET_BODY_TIMEOUT_S)"
        )

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
        # The ASGI call starts when the headers are complete: the deadline counts from there.
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = False
        timed_out = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, body_done, timed_out
            if timed_out:
                raise RequestTimeout(self._too_slow())
            if body_done:
                return await receive()  # waiting for a disconnect has no deadline
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise RequestTimeout(self._too_slow()) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read; the app's handler answers 413.
                    raise PayloadTooLarge(self._too_large())
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return  # past the deadline the answer is ours (below), whatever the app says
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not (timed_out and not started):
                raise
        if timed_out and not started:
            # The app may have turned the error into another answer (FastAPI makes any failed
            # body read a 400): it was dropped, and the 408 goes out with `Connection: close`.
            await send_error(scope, send, RequestTimeout(self._too_slow(), _CLOSE))
