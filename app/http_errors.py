"""The one error path: every error becomes its HTTP answer here.

A domain error (`app.errors.LenetError`) raised anywhere, in a route, a dependency, the tensor
codec, the engine or a body read, reaches the app's exception handlers installed below. The pure
ASGI middlewares in front of the router (body limits, host and header guards) cannot raise into
those handlers, so they call `send_error` with the same error objects and get the same bodies.
Under /v2 the body is the KServe protocol's `{"error": "..."}`, elsewhere FastAPI's
`{"detail": ...}`.
"""

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from app.errors import LenetError, Unauthorized

logger = logging.getLogger("lenet")

JSON_MEDIA_TYPE = "application/json"


def is_v2(path: str) -> bool:
    """Whether `path` belongs to the KServe v2 protocol, whose errors are `{"error"}`."""
    return path == "/v2" or path.startswith("/v2/")


def error_body(path: str, detail: Any) -> bytes:
    """The JSON body of an error answer on `path`."""
    if is_v2(path):
        body: dict[str, Any] = {"error": detail if isinstance(detail, str) else str(detail)}
    else:
        body = {"detail": detail}
    try:
        return orjson.dumps(body)
    except TypeError:
        # A validation error can echo input orjson cannot write (bytes of a malformed body,
        # integers past 64 bits); the standard library writes those, as text where it must.
        return json.dumps(body, default=repr).encode()


def error_headers(error: LenetError) -> dict[str, str]:
    """Headers an error's answer carries (a challenge for 401, `Connection: close` when the
    connection cannot be reused)."""
    headers = dict(error.headers)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_response(
    path: str, status_code: int, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    """An error answer as a Response, for the exception handlers."""
    return Response(
        error_body(path, detail),
        status_code,
        headers=dict(headers) if headers else None,
        media_type=JSON_MEDIA_TYPE,
    )


async def send_error(scope: Scope, send: Send, error: LenetError) -> None:
    """Answer `error` from a pure ASGI middleware, exactly as the exception handlers would."""
    body = error_body(scope.get("path", ""), error.detail)
    headers = [
        (b"content-type", JSON_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode("latin-1"), value.encode("latin-1"))
          for name, value in error_headers(error).items()),
    ]  # fmt: skip
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _allowed_methods(request: Request, headers: Mapping[str, str] | None) -> str:
    """Every method the app documents for the request's path (Starlette's Allow otherwise)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods.update(method.upper() for method in operations)
    if not methods:
        return (headers or {}).get("Allow", "")
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into its answer."""

    async def on_lenet_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, LenetError)
        return error_response(
            request.url.path, error.status_code, error.detail, error_headers(error)
        )

    async def on_validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        errors = [
            {key: value for key, value in item.items() if key != "ctx" and key != "url"}
            for item in error.errors()
        ]
        if is_v2(request.url.path):
            message = "; ".join(str(item.get("msg")) for item in errors)
            return error_response(request.url.path, 400, message)
        return error_response(request.url.path, 422, errors)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        headers = error.headers
        if error.status_code == 405:
            # Starlette's Allow lists only the first route that matched the path; a path served
            # by several routes (GET and PUT /optimizer) must list every method it takes.
            headers = {**(headers or {}), "Allow": _allowed_methods(request, headers)}
        return error_response(request.url.path, error.status_code, error.detail, headers)

    async def on_unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal server error")

    app.add_exception_handler(LenetError, on_lenet_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
