"""Prometheus metrics: GET /metrics, a request-timing middleware and the engine's own numbers.

Each app has its own `CollectorRegistry`, so tests (and anything else) can build many apps in one
process. Requests are labelled by their route template (`/checkpoints/{checkpoint_id}/restore`),
never by the raw path, so the number of series stays bounded whatever clients send. The engine is
read at scrape time by a collector; the batcher reports each batch through
`engine.batch_observers`. The registry also holds the standard `process_*` and `python_*`
collectors, and no metric writes a `_created` series (see `disable_created_metrics` below).
"""

from collections.abc import Iterator
from time import perf_counter

from fastapi import FastAPI
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine import Engine

# The label of requests that no route handled: unknown paths, and bodies refused before routing.
UNROUTED = "<unrouted>"
# nginx's "client closed request": the client went away before its answer started.
CLIENT_CLOSED = 499
# Clients can send any token as a method; anything else is labelled OTHER_METHOD.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# `_created` series double the counters and histograms for a timestamp Prometheus does not use.
# prometheus_client only turns them off process-wide; this process exports nothing else.
disable_created_metrics()  # type: ignore[no-untyped-call]


class EngineCollector(Collector):
    """Reads the engine's version, step, refused steps and last loss at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        """One sample of each engine metric, as it is now."""
        engine = self.engine
        yield GaugeMetricFamily(
            "lenet_model_version", "Version of the served weights.", value=engine.version
        )
        yield GaugeMetricFamily(
            "lenet_model_step", "Optimizer steps the served weights have had.", value=engine.step
        )
        yield CounterMetricFamily(
            "lenet_train_steps_refused",
            "Optimizer steps refused and rolled back since start-up: a non-finite loss, "
            "gradient or weight, or a device failure mid-step.",
            value=engine.steps_refused,
        )
        loss = GaugeMetricFamily("lenet_train_last_loss", "Loss of the latest training step.")
        if engine.last_loss is not None:  # no sample until a step was taken
            loss.add_metric([], engine.last_loss)
        yield loss
        # In a cluster: a predictor's lag behind the store, and the newest version there (seen
        # by a predictor, published by a trainer); lenet_model_version is the served one.
        yield GaugeMetricFamily(
            "lenet_follow_lag_seconds",
            "How long ago a version newer than the served one was published (0 when current).",
            value=engine.lag_ms / 1000,
        )
        store = GaugeMetricFamily(
            "lenet_store_version", "Newest version seen in (or published to) the version store."
        )
        if engine.store_latest is not None:
            store.add_metric([], engine.store_latest)
        yield store
        yield GaugeMetricFamily(
            "lenet_model_ready",
            "1 when the model answers and its weights are finite.",
            value=1 if engine.ready and engine.weights_finite else 0,
        )


class Metrics:
    """The metrics of one app, in their own registry."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lenet_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lenet_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "lenet_batch_images",
            "Images in each forward pass of the prediction batcher.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "lenet_batch_queue_wait_seconds",
            "Time each prediction request waited in the batcher's queue.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request and its duration."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            # Bounded like the labels themselves; skips prometheus-client's label lookup.
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, images: int, waits: list[float], compute_s: float) -> None:
        """A batch observer (see `app.batching`): its size and each request's queue wait."""
        self.batch_images.observe(images)
        for wait in waits:
            self.queue_wait.observe(wait)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request, or UNROUTED."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNROUTED


class MetricsMiddleware:
    """Times every HTTP request (pure ASGI: no per-request objects beyond one closure)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        # An exception that escapes before an answer started becomes a 500 further out.
        status = 500
        answered = False
        gone = False

        async def watching_receive() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                gone = True
            return message

        async def send_with_status(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
            await send(message)

        try:
            await self.app(scope, watching_receive, send_with_status)
        except Exception:
            # A client that left mid-body is not an error: the app's failure to read the rest
            # (Starlette's ClientDisconnect, say) is dropped here, before it is logged as a 500.
            if not gone:
                raise
        finally:
            if gone:
                status = CLIENT_CLOSED  # whatever the app answered into the closed connection
            # The router fills in scope["route"] while it handles the request.
            method = scope["method"] if scope["method"] in _METHODS else OTHER_METHOD
            self.metrics.observe_request(
                method, route_template(scope), status, perf_counter() - started
            )


def install(app: FastAPI, engine: Engine) -> Metrics:
    """Give `app` its metrics: the registry, the middleware and the batch observer."""
    metrics = Metrics(engine)
    app.state.metrics = metrics
    engine.batch_observers.append(metrics.observe_batch)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
