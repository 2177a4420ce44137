"""Request ids, logs and traces: what ties one request's answer, log lines and spans together.

`ObservabilityMiddleware` wraps the whole app, Starlette's error middleware included, so every
answer carries `X-Request-ID` (500s, 404s and the body limit's 413s too). The id is the client's
when it is sane (at most 128 of `[A-Za-z0-9._-]`), otherwise a fresh uuid4 hex; it lives in a
context variable for the request, and `RequestIdFilter` writes it into every log record. The same
middleware writes the one access log line per request (`LENET_ACCESS_LOG`) and, when the
standard `OTEL_*` variables ask for traces and the `otel` extra is installed, one server span.

Traces are on when OTEL_SDK_DISABLED is not "true" and either OTEL_TRACES_EXPORTER is set to
something other than "none", or it is unset and OTEL_SERVICE_NAME is set (the exporter then
defaults to "otlp", as the OpenTelemetry specification says). A tracer provider set before the
app starts (by `opentelemetry-instrument`, or a test) is used as it is; otherwise one is built
from the SDK with the exporters that OTEL_TRACES_EXPORTER names.
"""

import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib.metadata import entry_points
from time import perf_counter
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

try:  # the `otel` extra; the service runs without it
    from opentelemetry import propagate as otel_propagate
    from opentelemetry import trace as otel_trace
except ImportError:  # pragma: no cover - exercised where the extra is absent
    otel_trace = None  # type: ignore[assignment]
    otel_propagate = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import Tracer

logger = logging.getLogger("lenet.observability")
access_logger = logging.getLogger("lenet.access")

P = ParamSpec("P")
T = TypeVar("T")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("lenet_request_id", default=None)


def request_id_of(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The request's own X-Request-ID when it is sane, otherwise a new uuid4 hex."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _SANE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------- logs

# Attributes every LogRecord has; anything else on a record was passed as `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's copy of its message with terminal colours
    "taskName",
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id (None outside a request) on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id] message`, `-` for lines outside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        values = dict(vars(record))
        values["request_id"] = values.get("request_id") or "-"
        return self._style._fmt % values


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class _LenetHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The service's one log handler (stderr); a class of its own so it can be replaced."""


def configure_logging(settings: Settings) -> None:
    """Send every log line (ours and uvicorn's) through one stderr handler in LENET_LOG_FORMAT.

    Called by `lenet serve` and when `app.main:app` is built for `uvicorn app.main:app`. Other
    handlers on the root logger (pytest's, a user's) stay. uvicorn's access log is turned off:
    the service writes its own (LENET_ACCESS_LOG), with the request id, route and version."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _LenetHandler)]:
        root.removeHandler(handler)
    handler = _LenetHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True


# ----------------------------------------------------------------------------------- traces

# The tracer of torch calls (`traced`); set by `configure_tracing`, None while traces are off.
_torch_tracer: "Tracer | None" = None


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for traces (the rule in the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_SERVICE_NAME", "").strip())


def _build_tracer_provider(environ: Mapping[str, str]) -> Any:
    """An SDK tracer provider with a batch processor for each exporter OTEL_TRACES_EXPORTER
    names (found by the SDK's own entry points: `console` ships with it, `otlp` with
    opentelemetry-exporter-otlp)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # An explicit attribute would win over OTEL_SERVICE_NAME, so the default is given only alone.
    named = bool(environ.get("OTEL_SERVICE_NAME", "").strip())
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "lenet"}))
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    for name in (part.strip() for part in names.split(",")):
        if not name or name == "none":
            continue
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            logger.warning(
                "OTEL_TRACES_EXPORTER names %r but no installed package provides it "
                "(otlp: pip install opentelemetry-exporter-otlp); its spans are dropped",
                name,
            )
            continue
        exporter_class = next(iter(found)).load()
        provider.add_span_processor(BatchSpanProcessor(exporter_class()))
    return provider


def configure_tracing(environ: Mapping[str, str] | None = None) -> "Tracer | None":
    """The tracer for requests and torch calls, or None when traces are off (see the rule)."""
    global _torch_tracer
    environ = os.environ if environ is None else environ
    _torch_tracer = None
    if not tracing_requested(environ):
        return None
    if otel_trace is None:
        logger.warning(
            "OTEL_* variables ask for traces but OpenTelemetry is not installed: "
            "pip install 'lenet-serve[otel]'; serving without traces"
        )
        return None
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider):  # nobody set one up: we do
        try:
            provider = _build_tracer_provider(environ)
        except ImportError:
            logger.warning("opentelemetry-sdk is not installed; serving without traces")
            return None
        otel_trace.set_tracer_provider(provider)
    _torch_tracer = provider.get_tracer("lenet")
    return _torch_tracer


def _batch_size(args: Sequence[object]) -> int | None:
    """Images in a torch call's first argument: an (N, 1, H, W) tensor or a list of them."""
    if not args:
        return None
    first = args[0]
    shape = getattr(first, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) == 4 else None
    if isinstance(first, list) and first and all(hasattr(item, "shape") for item in first):
        return sum(int(item.shape[0]) for item in first)
    return None


def traced(
    fn: Callable[P, T], args: Sequence[object], version: Callable[[], int]
) -> Callable[P, T]:
    """`fn` inside a span named after it (batch size, and the version it left), or `fn` itself
    while traces are off."""
    tracer = _torch_tracer
    if tracer is None:
        return fn
    name = getattr(fn, "__name__", "torch")
    batch = _batch_size(args)

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with tracer.start_as_current_span(name) as span:
            if batch is not None:
                span.set_attribute("lenet.batch_size", batch)
            try:
                return fn(*args, **kwargs)
            finally:
                span.set_attribute("lenet.version", version())

    return run


# ------------------------------------------------------------------------------- middleware


class ObservabilityMiddleware:
    """Request id, access log line and server span of every HTTP request (pure ASGI)."""

    def __init__(
        self,
        app: ASGIApp,
        version: Callable[[], int],
        access_log: bool,
        tracer: "Tracer | None" = None,
    ) -> None:
        self.app = app
        self.version = version
        self.access_log = access_log
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        token = request_id_var.set(request_id)
        started = perf_counter()
        status = 500  # what an exception that escapes before any answer becomes further out

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            if self.tracer is None:
                await self.app(scope, receive, send_with_request_id)
            else:
                await self._traced(scope, receive, send_with_request_id, request_id, lambda: status)
        finally:
            if self.access_log:
                self._log_access(scope, status, perf_counter() - started)
            request_id_var.reset(token)

    async def _traced(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        status: Callable[[], int],
    ) -> None:
        assert self.tracer is not None and otel_trace is not None and otel_propagate is not None
        method = scope["method"]
        carrier = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        with self.tracer.start_as_current_span(
            method,
            context=otel_propagate.extract(carrier),
            kind=otel_trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "lenet.request_id": request_id},
        ) as span:
            try:
                await self.app(scope, receive, send)
            finally:
                route = _route_template(scope)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status())
                if status() >= 500:
                    span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR))

    def _log_access(self, scope: Scope, status: int, seconds: float) -> None:
        route = _route_template(scope)
        extra: dict[str, Any] = {
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
        }
        # The weights' version when the answer finished, for requests that reached a route.
        if route is not None:
            extra["version"] = self.version()
        access_logger.info(
            "%s %s %d %.1f ms%s",
            extra["method"],
            route or "-",
            status,
            extra["duration_ms"],
            f" version {extra['version']}" if "version" in extra else "",
            extra=extra,
        )


def _route_template(scope: Scope) -> str | None:
    """The path template of the route that handled the request, None when none did."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


def install(app: "FastAPI", version: Callable[[], int], access_log: bool) -> None:
    """Wrap `app`'s whole middleware stack, Starlette's error middleware included, so that the
    500s it renders carry the request id and their traceback's log line names it."""
    tracer = configure_tracing()
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return ObservabilityMiddleware(build(), version, access_log, tracer)

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
