"""Start the real service (`lenet serve`, i.e. uvicorn) on a free port of 127.0.0.1 for tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


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
    env: dict[str, str] = field(repr=False)

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

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
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(log_dir: Path, wait: bool = True, **settings: object) -> LiveServer:
    """Start `lenet serve` with LENET_<KEY>=value for each keyword; wait until ready."""
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
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path, env)
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
