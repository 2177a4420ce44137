"""Start the real service (`lenet serve`, i.e. uvicorn) on a free port of 127.0.0.1 for tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

# The test being set up or run, kept by tests/conftest.py, so that starting a server can check
# that the test carries the `server` marker (`-m "not server"` must skip every one that does).
current_test: list[pytest.Item] = []


def stop_process(process: "subprocess.Popen[bytes]", sig: int, timeout: float) -> int:
    """Send `sig` to `process` unless it has ended, wait `timeout` seconds, then kill it; its
    exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """A running `lenet serve` process and how to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def connect(self, timeout: float = 30) -> socket.socket:
        """A raw TCP connection to the server, for requests httpx will not send."""
        parts = urlsplit(self.url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until GET /readyz answers 200, or fail with the server's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig` and wait for the process to end; returns its exit status."""
        return stop_process(self.process, sig, timeout)


def start_server(log_dir: Path, wait: bool = True, **settings: object) -> LiveServer:
    """Start `lenet serve` with LENET_<KEY>=value for each keyword; wait until ready."""
    for item in current_test:
        if item.get_closest_marker("server") is None:
            raise RuntimeError(f"{item.nodeid} starts uvicorn without @pytest.mark.server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENET_")}
    env.update({f"LENET_{key.upper()}": str(value) for key, value in settings.items()})
    env.setdefault("LENET_DEVICE", os.environ.get("LENET_DEVICE", "cpu"))
    env["LENET_HOST"] = "127.0.0.1"
    env["LENET_PORT"] = str(port)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
    return server


def start_test_server(root: Path, **settings: object) -> LiveServer:
    """A server as tests want one: seeded (0), its checkpoints and logs under `root`, no save on
    shutdown; keywords override or add LENET_ settings."""
    values: dict[str, object] = {
        "seed": 0,
        "checkpoint_dir": root / "checkpoints",
        "autosave_on_shutdown": "false",
    }
    values.update(settings)
    return start_server(root / "logs", **values)


def read_http_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off `sock`: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]
