"""The application factory: `create_app(settings)` builds the app; `app.main:app` serves it."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import kserve, metrics, observability
from app.engine import Engine
from app.grpc_server import GrpcServer
from app.guards import GuardsMiddleware, HeadAsGetMiddleware
from app.http import DOCUMENTED_BODIES
from app.http_errors import install_error_handlers
from app.json_body import BodyDecoder
from app.limits import BodyLimitMiddleware
from app.routes import documented_routes, include_routes
from app.settings import Settings, get_settings
from app.tensors import Limits

logger = logging.getLogger("lenet")

VERSION = "0.1.0"


def _install_openapi(app: FastAPI, token_required: bool) -> None:
    """Add the schemas of bodies that routes read themselves to the OpenAPI components, and
    say whether the bearer token is required (a service without LENET_API_TOKEN takes none)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=documented_routes(app),
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, body_schema in DOCUMENTED_BODIES.items():
                body_schema = dict(body_schema)
                components.update(body_schema.pop("$defs", {}))
                components[name] = body_schema
            if not token_required:
                for operations in schema["paths"].values():
                    for operation in operations.values():
                        if "security" in operation:
                            operation["security"].append({})  # OpenAPI's "or no credentials"
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    engine = Engine(settings)  # here, so an unavailable device fails at start-up
    body_decoder = BodyDecoder(settings.max_body_bytes, settings.max_batch_size)
    # Triton's statistics of the model, fed by every batch and every v2 inference request.
    statistics = kserve.InferenceStatistics()
    engine.batch_observers.append(statistics.observe_batch)
    grpc_server = None
    if settings.grpc_port is not None:
        grpc_server = GrpcServer(engine, settings, statistics, "lenet-serve", VERSION)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        if settings.gc_freeze:
            gc.freeze()
        logger.info(
            "LeNet ready on %s at version %d, step %d", engine.device, engine.version, engine.step
        )
        try:
            if grpc_server is not None:
                await grpc_server.start()
            yield
        finally:
            if grpc_server is not None:
                # HTTP has drained by now; calls in flight get the same grace, then the engine
                # (which they need) closes.
                await grpc_server.stop(settings.timeout_graceful_shutdown)
            body_decoder.close()
            await engine.close()

    app = FastAPI(
        title="lenet-serve",
        version=VERSION,
        description="Serve and train the LeNet of PyTorch's Neural Networks tutorial.",
        lifespan=lifespan,
        docs_url=None,  # app.routes.docs serves both pages from assets in the package
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look up environment variables on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.limits = Limits.from_settings(settings)
    app.state.body_decoder = body_decoder
    app.state.inference_statistics = statistics
    app.state.grpc_server = grpc_server
    # Innermost first.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(GuardsMiddleware, allowed_hosts=settings.allowed_hosts)
    metrics.install(app, engine)  # it also counts what the guards and limits refuse
    # Outermost of all, outside Starlette's error middleware: request ids reach the 500s too.
    observability.install(app, lambda: engine.version, settings.access_log)
    install_error_handlers(app)
    include_routes(app)
    _install_openapi(app, token_required=settings.api_token is not None)
    return app


def __getattr__(name: str) -> Any:
    # `app.main:app` is built on first access, so importing this module has no side effects.
    if name == "app":
        settings = get_settings()
        observability.configure_logging(settings)  # `uvicorn app.main:app` logs as `lenet serve`
        application = create_app(settings)
        globals()["app"] = application
        return application
    raise AttributeError(name)
