"""KServe v2 over gRPC beside REST (v2 with the binary tensor extension), from tritonclient.

Starts `lenet serve` on 127.0.0.1 with LENET_GRPC_PORT, then, for one image and for 256 images
a request, at 1 and at 16 concurrent clients (threads, one tritonclient each), sends the same
requests over each protocol for a fixed time and prints requests/s and the median latency. The
clients run on the same machine as the server, so on a small one the figures are the pair's, not
the server's alone; the point is the comparison. Everything it sends is bounded in time and count
and goes to 127.0.0.1 only.

Usage: `python bench/grpc_vs_rest.py [--duration 3] [--max-requests 20000]`.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(folder: Path, http_port: int, grpc_port: int) -> subprocess.Popen[bytes]:
    """`lenet serve` with both protocols; returns once GET /readyz answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENET_")}
    env.update(
        LENET_HOST="127.0.0.1",
        LENET_PORT=str(http_port),
        LENET_GRPC_PORT=str(grpc_port),
        LENET_SEED="0",
        LENET_DEVICE=os.environ.get("LENET_DEVICE", "cpu"),
        LENET_CHECKPOINT_DIR=str(folder / "checkpoints"),
        LENET_AUTOSAVE_ON_SHUTDOWN="false",
    )
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"], env=env, stdout=log, stderr=log, cwd=ROOT
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready; see {folder / 'server.log'}")


def grpc_caller(port: int, images: np.ndarray) -> tuple[Callable[[], None], Callable[[], None]]:
    """One gRPC client's request, sent raw (raw_input_contents), and its close."""
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton_grpc.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    outputs = [triton_grpc.InferRequestedOutput("logits")]

    def call() -> None:
        client.infer("lenet", [tensor], outputs=outputs).as_numpy("logits")

    return call, client.close


def rest_caller(port: int, images: np.ndarray) -> tuple[Callable[[], None], Callable[[], None]]:
    """One REST client's request with the binary tensor extension, both ways, and its close."""
    client = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton_http.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    outputs = [triton_http.InferRequestedOutput("logits", binary_data=True)]

    def call() -> None:
        client.infer("lenet", [tensor], outputs=outputs).as_numpy("logits")

    return call, client.close


def measure(
    make: Callable[[], tuple[Callable[[], None], Callable[[], None]]],
    clients: int,
    duration: float,
    max_requests: int,
) -> tuple[float, float]:
    """Requests/s and median latency (ms) of `clients` threads calling for `duration` seconds."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    budget = threading.Semaphore(max_requests)
    start = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def run(index: int) -> None:
        call, close = make()
        try:
            call()  # warm the connection up
            start.wait()
            while time.perf_counter() < stop_at[0] and budget.acquire(blocking=False):
                began = time.perf_counter()
                call()
                latencies[index].append(time.perf_counter() - began)
        finally:
            close()

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(run, index) for index in range(clients)]
        began = time.perf_counter()
        stop_at.append(began + duration + 0.05)
        start.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - began
    every = [latency for per_client in latencies for latency in per_client]
    return len(every) / elapsed, statistics.median(every) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap per measurement")
    args = parser.parse_args()
    http_port, grpc_port = free_port(), free_port()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(Path(folder), http_port, grpc_port)
        try:
            print(f"{'images':>6} {'clients':>7} {'protocol':<12} {'req/s':>9} {'p50 ms':>8}")
            rows = []
            for count in (1, 256):
                images = rng.standard_normal((count, 1, 32, 32)).astype(np.float32)
                for clients in (1, 16):
                    for name, caller, port in (
                        ("gRPC", grpc_caller, grpc_port),
                        ("REST binary", rest_caller, http_port),
                    ):

                        def make(
                            caller: Callable[
                                ..., tuple[Callable[[], None], Callable[[], None]]
                            ] = caller,
                            port: int = port,
                            images: np.ndarray = images,
                        ) -> tuple[Callable[[], None], Callable[[], None]]:
                            return caller(port, images)

                        rate, p50 = measure(make, clients, args.duration, args.max_requests)
                        rows.append((count, clients, name, rate, p50))
                        print(f"{count:>6} {clients:>7} {name:<12} {rate:>9.0f} {p50:>8.2f}")
            print("\n| images | clients | protocol | req/s | p50 ms |\n|---|---|---|---|---|")
            for count, clients, name, rate, p50 in rows:
                print(f"| {count} | {clients} | {name} | {rate:.0f} | {p50:.2f} |")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
