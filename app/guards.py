"""Guards against hostile clients in front of everything (pure ASGI), and the page's headers.

- `GuardsMiddleware`: request headers over 64 KiB in all are 431; a Host that is not served
  (DNS rebinding: LENET_ALLOWED_HOSTS) is 400; every answer carries
  `X-Content-Type-Options: nosniff`, and the web page (`/`, `/static/...`) its
  Content-Security-Policy and `X-Frame-Options: DENY`.
- `HeadAsGetMiddleware`: HEAD on every GET route, as the GET with the body left out.
- `header_timeout_protocol`: uvicorn's httptools protocol with a deadline for the headers, for
  `lenet serve` (an ASGI app only sees a request once its headers are complete).

Cross-site requests are refused in `app.http.require_token`, beside the token, so that the list
of routes that change anything stays one fact.
"""

import asyncio
import functools
import ipaddress
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, HeadersTooLarge
from app.http_errors import send_error

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
# Served on loopback addresses when LENET_ALLOWED_HOSTS is unset: a page of another site that
# rebinds its name to 127.0.0.1 still sends its own name as the Host.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_HOST = "*"

# The page draws no data URL itself; its favicon is `data:,`.
PAGE_CSP = b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_PAGE_HEADERS = (
    _NOSNIFF,
    (b"content-security-policy", PAGE_CSP),
    (b"x-frame-options", b"DENY"),
)


def _is_page(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


def host_name(value: str) -> str:
    """The name in a Host header, without its port, in lower case (IPv6 keeps its brackets)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    return value.partition(":")[0]


def is_loopback(server: Any) -> bool:
    """Whether the ASGI scope's `server` (host, port) is a loopback address."""
    if not server:
        return False  # a Unix socket: whatever sits in front of it decides
    return _is_loopback_address(str(server[0]))


@functools.lru_cache(maxsize=64)
def _is_loopback_address(address: str) -> bool:
    # Cached: every request asks, and a server listens on a handful of addresses.
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class GuardsMiddleware:
    """Refuse oversized headers (431) and Host names not served (400); add security headers."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    def _served(self, scope: Scope, host: bytes | None) -> bool:
        allowed = self.allowed_hosts
        if allowed is None:
            if not is_loopback(scope.get("server")):
                return True
            allowed = LOOPBACK_HOSTS
        elif allowed == (ANY_HOST,):
            return True
        return host is not None and host_name(host.decode("latin-1")) in allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = 0
        host: bytes | None = None
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4  # as on the wire: "name: value\r\n"
            if name == b"host" and host is None:
                host = value
        if size > MAX_HEADER_BYTES:
            error = HeadersTooLarge(
                f"the request headers are {size} bytes, over the limit of {MAX_HEADER_BYTES}",
                {"Connection": "close"},
            )
            await send_error(scope, send, error)
            return
        if not self._served(scope, host):
            shown = "none" if host is None else repr(host.decode("latin-1")[:200])
            await send_error(
                scope, send, BadRequest(f"Host {shown} is not served here (LENET_ALLOWED_HOSTS)")
            )
            return
        extra = _PAGE_HEADERS if _is_page(scope["path"]) else (_NOSNIFF,)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadAsGetMiddleware:
    """Answer HEAD as the GET of the same path would, without the body (RFC 9110 9.3.2)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        # The scope is changed in place, not copied: the metrics read the route the router
        # writes into it. It says HEAD again before the answer starts, since the server reads
        # it then to send no body (and a Content-Length the body does not match).
        scope["method"] = "GET"

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                scope["method"] = "HEAD"
            elif message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, send_headers_only)
        finally:
            scope["method"] = "HEAD"


def header_timeout_protocol(seconds: float) -> "type[HttpToolsProtocol]":
    """uvicorn's httptools protocol that closes a connection whose request headers are not
    complete within `seconds` of its first byte (or of the connection, for the first request).

    Without it a client that sends half a request line holds its connection, and its place
    under LENET_LIMIT_CONCURRENCY, forever: uvicorn's keep-alive timer stops at the first byte.
    """
    # Imported here: the app itself runs under any server and any of uvicorn's parsers.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            # From here the body deadline (LENET_BODY_TIMEOUT_S) and, between requests, the
            # keep-alive timeout take over.
            self._disarm()
            super().on_headers_complete()

    return HeaderTimeoutProtocol
