"""Limits that hold before parsing, against the real server: body size by Content-Length and by
counting a chunked body, malformed lengths, uvicorn's concurrency limit and keep-alive timeout.

Raw sockets, so the test decides exactly what reaches the server and when.
"""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import LiveServer, read_http_response, start_test_server

pytestmark = [pytest.mark.server]

BODY_LIMIT = 65536
CONCURRENCY = 6
KEEP_ALIVE_S = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server with a small body limit, a concurrency limit and a short keep-alive."""
    root: Path = tmp_path_factory.mktemp("limits")
    live = start_test_server(
        root,
        max_body_bytes=BODY_LIMIT,
        limit_concurrency=CONCURRENCY,
        timeout_keep_alive=KEEP_ALIVE_S,
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
