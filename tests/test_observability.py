"""Request ids, logs, the standard Prometheus collectors and OpenTelemetry traces."""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import observability
from app.main import create_app
from app.observability import RequestIdFilter, configure_logging, tracing_requested
from tests.conftest import SEED, TEST_DEVICE, image_batch
from tests.server import start_test_server

HEX_ID = re.compile(r"[0-9a-f]{32}")
TOKEN = "observability-token"
TRAIN_BODY = {"inputs": image_batch(3).tolist(), "targets": [1, 2, 3]}
# What a folder the service would have written looks like, with metadata that does not read.
BROKEN_CHECKPOINT = "20200101T000000000000Z-v1-deadbeef"


# ------------------------------------------------------------------------------ request ids


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("client-id.1_A", "client-id.1_A"),
        ("x" * 128, "x" * 128),
        ("x" * 129, None),  # too long: replaced
        ("has space", None),
        ("semi;colon", None),
        ("", None),
        (None, None),  # absent: made
    ],
)
def test_request_id_is_taken_when_sane_and_made_otherwise(
    client: TestClient, sent: str | None, echoed: str | None
) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    response = client.get("/healthz", headers=headers)
    assert response.status_code == 200
    answer = response.headers["x-request-id"]
    if echoed is None:
        assert HEX_ID.fullmatch(answer), answer
    else:
        assert answer == echoed
    assert response.headers.get_list("x-request-id") == [answer]  # exactly one


def test_every_answer_carries_the_request_id(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_token=TOKEN, max_body_bytes=2048)
    cases = {
        "404 unknown path": lambda h: client.get("/no/such/page", headers=h),
        "405 method": lambda h: client.delete("/predict", headers=h),
        "401 token": lambda h: client.post("/reset", json={}, headers=h),
        "422 body": lambda h: client.post("/predict", json={"inputs": "x"}, headers=h),
        "413 body limit": lambda h: client.post(
            "/predict", content=b"0" * 4096, headers={**h, "content-type": "application/json"}
        ),
        "400 v2": lambda h: client.post("/v2/models/lenet/infer", json={}, headers=h),
    }
    for index, (case, call) in enumerate(cases.items()):
        request_id = f"case-{index}"
        response = call({"X-Request-ID": request_id})
        assert response.status_code == int(case[:3]), (case, response.text)
        assert response.headers["x-request-id"] == request_id, case


@pytest.fixture
def json_logs(make_settings: Any) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The service's logging in JSON, as `lenet serve` sets it up, read back line by line."""
    root = logging.getLogger()
    level = root.level
    configure_logging(make_settings(log_format="json"))
    (handler,) = [h for h in root.handlers if isinstance(h, observability._LenetHandler)]
    buffer = io.StringIO()
    handler.setStream(buffer)  # instead of stderr

    def lines() -> list[dict[str, Any]]:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return [json.loads(line) for line in text.splitlines()]

    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_500_carries_the_request_id_and_its_traceback_line_names_it(
    make_settings: Any, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    app = create_app(make_settings())

    async def broken() -> None:
        raise RuntimeError("a bug")

    # A real route that fails: the error path is Starlette's, outside every app middleware.
    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/broken", headers={"X-Request-ID": "the-500"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert response.headers["x-request-id"] == "the-500"
    errors = [line for line in json_logs() if line["level"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "the-500"
    assert errors[0]["logger"] == "lenet"
    assert "RuntimeError: a bug" in errors[0]["exception"]


def test_lines_logged_on_the_torch_thread_name_their_request(
    client: TestClient, make_settings: Any, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    broken = Path(make_settings().checkpoint_dir) / BROKEN_CHECKPOINT
    broken.mkdir(parents=True)
    (broken / "meta.json").write_text("{}")
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # type: ignore[assignment,method-assign]
    keep.addFilter(RequestIdFilter())
    logging.getLogger().addHandler(keep)
    try:
        json_logs()
        assert client.get("/checkpoints", headers={"X-Request-ID": "listing"}).status_code == 200
    finally:
        logging.getLogger().removeHandler(keep)
    skipped = [line for line in json_logs() if BROKEN_CHECKPOINT in line["message"]]
    assert skipped, "the checkpoint store logs the folder it skips"
    assert {line["request_id"] for line in skipped} == {"listing"}
    threads = {r.threadName for r in records if BROKEN_CHECKPOINT in r.getMessage()}
    assert threads == {"lenet-torch_0"}  # logged on the torch thread, not the event loop's


# ------------------------------------------------------------------------------------- logs


@pytest.mark.server
def test_json_logs_and_one_access_log_from_the_real_server(tmp_path: Path) -> None:
    server = start_test_server(
        tmp_path,
        device=TEST_DEVICE,
        api_token=TOKEN,
        log_format="json",
        access_log="true",
        max_body_bytes=200_000,
    )
    try:
        with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            trained = client.post("/train-step", json=TRAIN_BODY, headers={"X-Request-ID": "t1"})
            assert trained.status_code == 200, trained.text
            assert client.get("/no/such", headers={"X-Request-ID": "t2"}).status_code == 404
            too_large = client.post(
                "/predict",
                content=b"0" * 200_001,
                headers={"X-Request-ID": "t3", "content-type": "application/json"},
            )
            assert too_large.status_code == 413
            assert too_large.headers["x-request-id"] == "t3"
    finally:
        status = server.stop()
    assert status in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    text = server.log()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= line.keys(), line
        assert "color_message" not in line
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # uvicorn's lines too
    assert not any(line["logger"] == "uvicorn.access" for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "lenet.access"}
    train = access["t1"]
    assert train["method"] == "POST"
    assert train["route"] == "/train-step"
    assert train["status"] == 200
    assert train["version"] == trained.json()["version"]
    assert isinstance(train["duration_ms"], float) and train["duration_ms"] > 0
    assert access["t2"]["status"] == 404
    assert access["t2"]["route"] is None
    assert "version" not in access["t2"]  # no route answered: no weights involved
    assert access["t3"]["status"] == 413
    # Lines outside any request (start-up, shutdown) have no request id.
    assert any(line["request_id"] is None and "ready" in line["message"] for line in lines)


@pytest.mark.server
def test_text_logs_name_the_request_and_no_access_log_by_default(tmp_path: Path) -> None:
    server = start_test_server(tmp_path, device=TEST_DEVICE)
    try:
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
    finally:
        server.stop()
    text = server.log()
    assert re.search(r"^\S+ \S+ INFO lenet \[-\] LeNet ready on cpu", text, re.MULTILINE), text
    assert "GET /healthz" not in text  # neither uvicorn's access log nor ours
    assert "lenet.access" not in text


# ---------------------------------------------------------------------------------- metrics


def test_metrics_have_the_standard_collectors_and_no_created_series(client: TestClient) -> None:
    assert client.post("/predict", json={"inputs": image_batch(1).tolist()}).status_code == 200
    text = client.get("/metrics").text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert "process_resident_memory_bytes" in names
    assert "process_cpu_seconds_total" in names
    assert "python_info" in names
    assert "python_gc_collections_total" in names
    assert "lenet_http_requests_total" in names
    assert not [name for name in names if name.endswith("_created")]


# ----------------------------------------------------------------------------------- traces


@pytest.mark.parametrize(
    ("environ", "requested"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "lenet"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "lenet"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": " "}, False),
    ],
)
def test_traces_are_on_only_when_otel_variables_ask(
    environ: dict[str, str], requested: bool
) -> None:
    assert tracing_requested(environ) is requested


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The process's tracer provider, set once, recording into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def finished(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_spans_per_request_and_per_torch_call(
    spans: InMemorySpanExporter,
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "lenet-test")
    client = make_client()
    spans.clear()
    trained = client.post("/train-step", json=TRAIN_BODY, headers={"X-Request-ID": "traced"})
    assert trained.status_code == 200
    assert client.post("/predict", json={"inputs": image_batch(5).tolist()}).status_code == 200
    assert client.get("/v2/models/other").status_code == 404

    (request,) = finished(spans, "POST /train-step")
    assert request.kind == trace.SpanKind.SERVER
    assert request.attributes is not None
    assert request.attributes["http.request.method"] == "POST"
    assert request.attributes["http.route"] == "/train-step"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["lenet.request_id"] == "traced"
    (step,) = finished(spans, "_train_step")
    assert step.parent is not None and step.parent.span_id == request.context.span_id
    assert step.attributes == {"lenet.batch_size": 3, "lenet.version": trained.json()["version"]}
    (forward,) = finished(spans, "_predict_split")  # on the batcher's task: a trace of its own
    assert forward.attributes is not None and forward.attributes["lenet.batch_size"] == 5
    (missing,) = finished(spans, "GET /v2/models/{model_name}")
    assert missing.attributes is not None
    assert missing.attributes["http.response.status_code"] == 404


def test_no_spans_without_otel_variables(
    spans: InMemorySpanExporter,
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    client = make_client()
    spans.clear()
    assert client.post("/train-step", json=TRAIN_BODY).status_code == 200
    assert spans.get_finished_spans() == ()


def test_the_app_runs_without_the_otel_extra(tmp_path: Path) -> None:
    # FastAPI itself needs opentelemetry-api; the extra adds the SDK, hidden here.
    script = f"""
import sys
sys.modules["opentelemetry.sdk"] = None
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
settings = Settings(device="cpu", seed={SEED}, checkpoint_dir={str(tmp_path)!r},
                    autosave_on_shutdown=False)
with TestClient(create_app(settings)) as client:
    assert client.post("/predict", json={{"inputs": [[0.0] * 32] * 32}}).status_code == 200
print("served")
"""
    env = {**os.environ, "OTEL_SERVICE_NAME": "lenet-without-sdk"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "served"
    assert "opentelemetry-sdk is not installed" in done.stderr
