"""The application factory: `create_app(settings)` builds the app; `app.main:app` serves it."""

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import metrics
from app.engine import Engine
from app.errors import LenetError, Unauthorized
from app.http import DOCUMENTED_BODIES
from app.limits import BodyLimitMiddleware
from app.routes import checkpoints, health, images, params, predict, training, v2
from app.settings import Settings, get_settings
from app.tensors import Limits

logger = logging.getLogger("lenet")

STATIC_DIR = Path(__file__).parent / "static"
VERSION = "0.1.0"


def _is_v2(request: Request) -> bool:
    return request.url.path == "/v2" or request.url.path.startswith("/v2/")


def _error_response(
    request: Request, status_code: int, detail: Any, headers: Mapping[str, str] | None = None
) -> Response:
    """FastAPI's `{"detail": ...}`, or the KServe protocol's `{"error": "..."}` under /v2."""
    if _is_v2(request):
        body = {"error": detail if isinstance(detail, str) else str(detail)}
    else:
        body = {"detail": detail}
    try:
        content = orjson.dumps(body)
    except TypeError:
        # A validation error can echo input orjson cannot write (bytes of a malformed body,
        # integers past 64 bits); the standard library writes those, as text where it must.
        content = json.dumps(body, default=repr).encode()
    return Response(
        content,
        status_code,
        headers=dict(headers) if headers else None,
        media_type="application/json",
    )


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


def _install_error_handlers(app: FastAPI) -> None:
    async def on_lenet_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, LenetError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
        return _error_response(request, error.status_code, error.detail, headers)

    async def on_validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        errors = [
            {key: value for key, value in item.items() if key != "ctx" and key != "url"}
            for item in error.errors()
        ]
        if _is_v2(request):
            return _error_response(request, 400, "; ".join(str(e.get("msg")) for e in errors))
        return _error_response(request, 422, errors)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        headers = error.headers
        if error.status_code == 405:
            # Starlette's Allow lists only the first route that matched the path; a path served
            # by several routes (GET and PUT /optimizer) must list every method it takes.
            headers = {**(headers or {}), "Allow": _allowed_methods(request, headers)}
        return _error_response(request, error.status_code, error.detail, headers)

    async def on_unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(request, 500, "internal server error")

    app.add_exception_handler(LenetError, on_lenet_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)


def _install_openapi(app: FastAPI) -> None:
    """Add the schemas of bodies that routes read themselves to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            # POST /predict is plain ASGI in front of the router (see app.routes.predict).
            schema["paths"] = {predict.PREDICT_PATH: predict.openapi_path_item(), **schema["paths"]}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, body_schema in DOCUMENTED_BODIES.items():
                body_schema = dict(body_schema)
                components.update(body_schema.pop("$defs", {}))
                components[name] = body_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    engine = Engine(settings)  # here, so an unavailable device fails at start-up

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        logger.info(
            "LeNet ready on %s at version %d, step %d", engine.device, engine.version, engine.step
        )
        try:
            yield
        finally:
            await engine.close()

    app = FastAPI(
        title="lenet-serve",
        version=VERSION,
        description="Serve and train the LeNet of PyTorch's Neural Networks tutorial.",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks look up environment variables on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.limits = Limits.from_settings(settings)
    # Innermost first: POST /predict is served in front of the router, behind the body limit.
    app.add_middleware(predict.PredictEndpoint, engine=engine, limits=app.state.limits)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    metrics.install(app, engine)  # outermost: it also counts what the body limit refuses
    _install_error_handlers(app)
    for router in (
        training.router,
        params.router,
        checkpoints.router,
        health.router,
        images.router,
        v2.router,
        metrics.router,
    ):
        app.include_router(router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return Response(status_code=404)
        return FileResponse(page)

    _install_openapi(app)
    return app


def __getattr__(name: str) -> Any:
    # `app.main:app` is built on first access, so importing this module has no side effects.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
