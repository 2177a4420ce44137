"""Limits that hold before parsing, against the real server: body size by Content-Length and by
counting a chunked body, malformed lengths, uvicorn's concurrency limit and keep-alive timeout,
the body and header deadlines, clients that leave mid-body, and shutdown with a half body.

Raw sockets, so the test decides exactly what reaches the server and when.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import LiveServer, free_port, read_http_response, start_test_server

pytestmark = [pytest.mark.server]

BODY_LIMIT = 65536
CONCURRENCY = 6
KEEP_ALIVE_S = 1
BODY_TIMEOUT_S = 2
HEADER_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server with a small body limit, a concurrency limit and a short keep-alive."""
    root: Path = tmp_path_factory.mktemp("limits")
    live = start_test_server(
        root,
        max_body_bytes=BODY_LIMIT,
        limit_concurrency=CONCURRENCY,
        timeout_keep_alive=KEEP_ALIVE_S,
        body_timeout_s=BODY_TIMEOUT_S,
        header_timeout_s=HEADER_TIMEOUT_S,
        log_level="warning",
    )
    yield live
    live.stop()


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send `data`; False once the server has closed its side (it answered already)."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def _predict_body(size: int) -> bytes:
    """A valid /predict JSON body of exactly `size` bytes (trailing whitespace is JSON)."""
    body = json.dumps({"inputs": [[0.25] * 32] * 32}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_sent(
    server: LiveServer,
) -> None:
    for path in ("/predict", "/train-step", "/params/import", "/v2/models/lenet/infer"):
        with server.connect(timeout=10) as sock:
            method = "PUT" if path == "/params/import" else "POST"
            started = time.monotonic()
            sock.sendall(
                _head(
                    method,
                    path,
                    {"Content-Type": "application/json", "Content-Length": str(10**12)},
                )
            )
            # Not one byte of the terabyte follows: the answer can only come from the headers.
            status, headers, body = read_http_response(sock)
            assert status == 413, body
            assert time.monotonic() - started < 5
            message = json.loads(body)
            text = message.get("detail") or message.get("error")
            assert str(BODY_LIMIT) in text and "LENET_MAX_BODY_BYTES" in text
            assert headers["content-type"] == "application/json"


def test_a_chunked_body_that_grows_past_the_limit_is_413(server: LiveServer) -> None:
    with server.connect(timeout=10) as sock:
        sock.sendall(
            _head(
                "POST",
                "/predict",
                {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            )
        )
        chunk = b"[" * 8192
        sent = 0
        # Keep sending well past the limit; the server may answer and close at any point.
        while sent < 4 * BODY_LIMIT and _send_quietly(
            sock, f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        ):
            sent += len(chunk)
        status, _, body = read_http_response(sock)
    assert status == 413, body
    assert str(BODY_LIMIT) in json.loads(body)["detail"]


@pytest.mark.parametrize(
    "content_length", ["abc", "-1", "1e3", "12x", "0x10", " ", "99999999999999999999999999"]
)
def test_a_malformed_content_length_is_400(server: LiveServer, content_length: str) -> None:
    with server.connect(timeout=10) as sock:
        head = _head("POST", "/predict", {"Content-Type": "application/json"})
        head = head[:-2] + f"Content-Length: {content_length}\r\n\r\n".encode()
        _send_quietly(sock, head + b"{}")
        # httptools refuses most of these itself (400, plain text); the app refuses the rest.
        status, _, _ = read_http_response(sock)
    assert status in (400, 413) if content_length.isdigit() else status == 400


def test_two_different_content_lengths_are_400(server: LiveServer) -> None:
    with server.connect(timeout=10) as sock:
        head = _head("POST", "/predict", {"Content-Type": "application/json"})
        _send_quietly(sock, head[:-2] + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
        status, _, _ = read_http_response(sock)
    assert status == 400


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_exactly_at_the_limit_is_accepted_and_one_more_byte_is_not(
    server: LiveServer, chunked: bool
) -> None:
    for size, expected in ((BODY_LIMIT, 200), (BODY_LIMIT + 1, 413)):
        body = _predict_body(size)
        with server.connect(timeout=10) as sock:
            if chunked:
                head = _head(
                    "POST",
                    "/predict",
                    {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                )
                half = len(body) // 2
                payload = b"".join(
                    f"{len(part):x}\r\n".encode() + part + b"\r\n"
                    for part in (body[:half], body[half:])
                )
                _send_quietly(sock, head + payload + b"0\r\n\r\n")
            else:
                head = _head(
                    "POST",
                    "/predict",
                    {"Content-Type": "application/json", "Content-Length": str(len(body))},
                )
                _send_quietly(sock, head + body)
            status, _, answer = read_http_response(sock)
        assert status == expected, (size, chunked, answer[:200])
        if expected == 200:
            assert json.loads(answer)["predictions"]


def test_the_keep_alive_timeout_is_the_setting(server: LiveServer) -> None:
    with server.connect(timeout=10) as sock:
        sock.sendall(_head("GET", "/healthz", {}))
        assert read_http_response(sock)[0] == 200
        started = time.monotonic()
        sock.settimeout(KEEP_ALIVE_S + 10)
        assert sock.recv(1) == b""  # the server closed the idle connection
        waited = time.monotonic() - started
    assert KEEP_ALIVE_S - 0.2 <= waited < KEEP_ALIVE_S + 3


def test_past_the_concurrency_limit_the_answer_is_503(server: LiveServer) -> None:
    # uvicorn counts the connection asking too: with CONCURRENCY - 1 requests in flight (headers
    # sent, body still owed), one more connection makes CONCURRENCY and its request is refused.
    held = [server.connect(timeout=10) for _ in range(CONCURRENCY - 1)]
    try:
        for sock in held:
            sock.sendall(
                _head(
                    "POST", "/predict", {"Content-Type": "application/json", "Content-Length": "2"}
                )
            )
        time.sleep(0.3)  # let the server register every one of them
        with server.connect(timeout=10) as extra:
            extra.sendall(_head("GET", "/healthz", {}))
            status, _, _ = read_http_response(extra)
        assert status == 503
        for sock in held:  # the held requests still complete normally
            sock.sendall(b"{}")
            held_status, _, body = read_http_response(sock)
            assert held_status == 422, body
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # capacity comes back once they are gone
        with server.connect(timeout=10) as sock:
            sock.sendall(_head("GET", "/healthz", {}))
            if read_http_response(sock)[0] == 200:
                return
        time.sleep(0.1)
    pytest.fail("the server did not accept requests again after the held ones closed")


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (reading and dropping what it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/predict", "detail"), ("/train-step", "detail"), ("/v2/models/lenet/infer", "error")],
)
def test_a_body_not_whole_within_the_deadline_is_408_and_the_connection_closes(
    server: LiveServer, path: str, shape: str
) -> None:
    with server.connect(timeout=10) as sock:
        head = {"Content-Type": "application/json", "Content-Length": "1000"}
        sock.sendall(_head("POST", path, head) + b'{"inputs": [')  # and nothing more
        started = time.monotonic()
        status, headers, body = read_http_response(sock)
        waited = time.monotonic() - started
        assert status == 408, body
        assert BODY_TIMEOUT_S - 0.2 <= waited < BODY_TIMEOUT_S + 2, waited
        assert headers["connection"] == "close"
        message = json.loads(body)[shape]
        assert "LENET_BODY_TIMEOUT_S" in message and f"{BODY_TIMEOUT_S} s" in message
        assert _closed_within(sock, 5)


def test_a_never_ending_chunked_body_is_408(server: LiveServer) -> None:
    with server.connect(timeout=10) as sock:
        sock.sendall(
            _head(
                "POST",
                "/train-step",
                {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            )
        )
        started = time.monotonic()
        # A byte every 0.1 s: never idle, never done, always under the size limit.
        while time.monotonic() - started < BODY_TIMEOUT_S + 5 and _send_quietly(
            sock, b"1\r\n \r\n"
        ):
            time.sleep(0.1)
        status, headers, body = read_http_response(sock)
    assert status == 408, body
    assert time.monotonic() - started < BODY_TIMEOUT_S + 3
    assert headers["connection"] == "close"


def test_a_slow_body_that_ends_within_the_deadline_is_served(server: LiveServer) -> None:
    body = _predict_body(8192)
    with server.connect(timeout=10) as sock:
        head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        sock.sendall(_head("POST", "/predict", head))
        for start in range(0, len(body), 1024):  # 8 pieces over about 1.2 s
            time.sleep(0.15)
            sock.sendall(body[start : start + 1024])
        status, _, answer = read_http_response(sock)
    assert status == 200, answer
    assert json.loads(answer)["predictions"]


def test_partial_headers_are_dropped_after_the_header_deadline(server: LiveServer) -> None:
    # As many half-sent requests (and silent connections) as the concurrency limit: without a
    # header deadline they would hold every place forever.
    held = [server.connect(timeout=10) for _ in range(CONCURRENCY)]
    try:
        for index, sock in enumerate(held):
            if index % 2:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        started = time.monotonic()
        for sock in held:
            assert _closed_within(sock, HEADER_TIMEOUT_S + 3 - (time.monotonic() - started))
        waited = time.monotonic() - started
        assert HEADER_TIMEOUT_S - 0.5 <= waited < HEADER_TIMEOUT_S + 2, waited
    finally:
        for sock in held:
            sock.close()
    with server.connect(timeout=10) as sock:
        sock.sendall(_head("GET", "/healthz", {}))
        assert read_http_response(sock)[0] == 200


def _requests_with_status(metrics: str, route: str, status: str) -> float:
    labels = f'route="{re.escape(route)}",status="{status}"'
    pattern = rf"lenet_http_requests_total{{method=\"(?:POST|PUT)\",{labels}}} (\S+)"
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


def test_a_client_that_leaves_mid_body_is_499_and_no_error(server: LiveServer) -> None:
    routes = {
        "/predict": "/predict",
        "/train-step": "/train-step",
        "/v2/models/lenet/infer": "/v2/models/{model_name}/infer",
        "/params/import": "/params/import",
    }
    log_before = len(server.log())
    with server.client() as http:
        before = {
            r: _requests_with_status(http.get("/metrics").text, r, "499") for r in routes.values()
        }
    for path in routes:
        with server.connect(timeout=10) as sock:
            method = "PUT" if path == "/params/import" else "POST"
            head = {"Content-Type": "application/json", "Content-Length": "1000"}
            sock.sendall(_head(method, path, head) + b'{"inputs": [')
            time.sleep(0.2)  # the route is reading the body now
    deadline = time.monotonic() + 10
    with server.client() as http:
        while True:
            metrics = http.get("/metrics").text
            counts = {r: _requests_with_status(metrics, r, "499") for r in routes.values()}
            if (
                all(counts[r] == before[r] + 1 for r in routes.values())
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
    assert counts == {r: before[r] + 1 for r in routes.values()}, metrics
    for route in routes.values():
        assert _requests_with_status(metrics, route, "500") == 0, route
        assert _requests_with_status(metrics, route, "400") == 0, route
    log = server.log()[log_before:]
    assert "Traceback" not in log and "Exception" not in log and "ERROR" not in log, log


def test_sigterm_with_a_half_sent_body_exits_within_the_body_deadline(tmp_path: Path) -> None:
    # `uvicorn app.main:app` with uvicorn's own defaults: no graceful-shutdown timeout, so only
    # the body deadline ends the request that holds the shutdown.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENET_")}
    env.update(
        LENET_DEVICE=os.environ.get("LENET_DEVICE", "cpu"),
        LENET_SEED="0",
        LENET_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        LENET_AUTOSAVE_ON_SHUTDOWN="false",
        LENET_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
    )
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = {"Content-Type": "application/json", "Content-Length": "1000"}
            sock.sendall(_head("POST", "/train-step", head) + b'{"inputs": [')
            time.sleep(0.3)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(BODY_TIMEOUT_S + 8)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {BODY_TIMEOUT_S + 8} s after SIGTERM")
            exited = time.monotonic() - started
            status, _, body = read_http_response(sock)
        assert status == 408, body
        assert exited < BODY_TIMEOUT_S + 5, exited
        assert process.returncode in (0, -signal.SIGTERM), log_path.read_text()
        print(f"exited {exited:.2f} s after SIGTERM")  # noqa: T201
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
