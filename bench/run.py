"""Benchmark lenet-serve against a naive FastAPI app and LitServe, side by side, in one run.

Starts the three servers on 127.0.0.1 (lenet-serve as `lenet serve`; the naive app with uvicorn;
LitServe from its own virtualenv, `.venv-bench`), drives each with wrk for a fixed time per
scenario, interleaving the servers within each round so that they see the same machine, and
prints medians over the rounds, the ratios the project targets, and a markdown table. It also
times the same work done in-process with torch (a forward pass at batch 256, an SGD step at
batch 64), each in a fresh process with torch's default threads, best of several windows, and
checks lenet-serve's memory over 10,000 predictions. Every server and reference computes on
--device (LENET_DEVICE, else auto: CUDA when torch sees a GPU), and the report says which.

Usage: `python bench/run.py [--rounds 3] [--duration 5] [--markdown results.md]`; see --help.
Everything it sends is bounded in time or count and goes to 127.0.0.1 only. Without wrk, a
Python load generator stands in (--load python; the report says so: it saturates sooner).
"""

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.lenet import Net, build_net, inference_forward  # noqa: E402

SEED = 0
LUA = ROOT / "bench" / "post.lua"
LITSERVE_APP = ROOT / "bench" / "litserve_app.py"
MEMORY_GROWTH_LIMIT = 0.10
REFERENCE_WINDOWS = 3  # timed windows per in-process reference; the best one counts
SERVER_ORDER = ("lenet", "naive", "litserve", "lenet-torch-default")


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A server process under test and the URL of its health check."""

    name: str
    command: list[str]
    env: dict[str, str]
    ready_path: str
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL on 127.0.0.1."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        """Start the process and wait until its health check answers 200."""
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so stop() can end LitServe's worker processes too
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def rss_mib(self) -> float:
        """Resident memory of the server's main process, in MiB."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024


def base_env(**extra: str) -> dict[str, str]:
    """The environment for a server: ours without LENET_ variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENET_")}
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- payloads


def json_body(images: np.ndarray, **extra: Any) -> bytes:
    """`{"inputs": nested arrays}`: float32 pixels written as a client's `tolist()` writes them."""
    inputs = images[0, 0].tolist() if images.shape[0] == 1 else images.tolist()
    return json.dumps({"inputs": inputs, **extra}).encode()


def base64_body(images: np.ndarray, **extra: Any) -> bytes:
    """`{"tensor": {"shape", "dtype", "data"}}`: the raw little-endian float32 bytes."""
    tensor = {
        "shape": list(images.shape),
        "dtype": "float32",
        "data": base64.b64encode(images.astype("<f4").tobytes()).decode(),
    }
    return json.dumps({"tensor": tensor, **extra}).encode()


def make_payloads(folder: Path) -> dict[str, Path]:
    """Write every request body to `folder`; names are `<endpoint>_<form>_<images>`."""
    rng = np.random.default_rng(SEED)
    one = rng.random((1, 1, 32, 32), dtype=np.float32)
    many = rng.random((256, 1, 32, 32), dtype=np.float32)
    train = rng.random((64, 1, 32, 32), dtype=np.float32)
    targets = rng.integers(0, 10, 64).tolist()
    bodies = {
        "predict_json_1": json_body(one),
        "predict_b64_1": base64_body(one),
        "predict_json_256": json_body(many),
        "predict_b64_256": base64_body(many),
        "train_json_64": json_body(train, targets=targets),
        "train_b64_64": base64_body(train, targets=targets),
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_bytes(body)
    return paths


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Run:
    """One wrk run: requests per second and latency percentiles in milliseconds."""

    rps: float
    p50_ms: float
    p99_ms: float


def wrk(
    url: str, body: Path | None, connections: int, duration: float, warm_up: bool = False
) -> Run:
    """POST `body` (GET when None) to `url` over `connections` keep-alive connections for
    `duration` seconds (a warm-up may see no request finish in time)."""
    command = [
        "wrk",
        "-t1",  # one wrk thread is ample for these rates and leaves the other core to the server
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        url,
        "--",
        str(body) if body is not None else "",
    ]
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in output.stdout.splitlines() if x.startswith("RESULT ")), None)
    if output.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed on {url}:\n{output.stdout}\n{output.stderr}")
    result = json.loads(line[len("RESULT ") :])
    failures = result["socket_errors"] + result["non_2xx"] + result["timeouts"]
    if failures or (result["requests"] == 0 and not warm_up):
        raise RuntimeError(f"{url} with {body} at c={connections}: {result}")
    return Run(
        rps=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
    )


def _request_bytes(path: str, body: bytes | None) -> bytes:
    """One keep-alive HTTP/1.1 request: a JSON POST of `body`, or a GET when it is None."""
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """Read one response off `reader`; its status line and headers (the body is drained)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return head


async def _python_load(
    port: int, path: str, body: bytes | None, connections: int, duration: float, warm_up: bool
) -> Run:
    """wrk's measurement in asyncio, for machines without wrk: `connections` keep-alive
    connections sending one request after another for `duration` seconds."""
    request = _request_bytes(path, body)
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(request)
                head = await _answer(reader)
                latencies.append(time.perf_counter() - sent)
                failures += not head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    if warm_up and not failures and not latencies:
        return Run(0.0, 0.0, 0.0)
    if failures or not latencies:
        raise RuntimeError(f"{path} at c={connections}: {failures} failures, {len(latencies)} ok")
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return Run(rps=len(latencies) / elapsed, p50_ms=float(p50), p99_ms=float(p99))


def load(
    tool: str,
    server: "Server",
    path: str,
    body: Path | None,
    connections: int,
    duration: float,
    warm_up: bool = False,
) -> Run:
    """One measured run with `tool` (wrk, or the Python stand-in)."""
    if tool == "wrk":
        return wrk(server.url + path, body, connections, duration, warm_up)
    data = body.read_bytes() if body is not None else None
    return asyncio.run(_python_load(server.port, path, data, connections, duration, warm_up))


async def _post_many(port: int, path: str, body: bytes, count: int, connections: int) -> None:
    """Send `count` POSTs over keep-alive connections; fail on anything but 200."""
    request = _request_bytes(path, body)
    shares = [count // connections + (i < count % connections) for i in range(connections)]

    async def worker(share: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(share):
                writer.write(request)
                head = await _answer(reader)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {head[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker(share) for share in shares))


# ----------------------------------------------------------------------------- in-process


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], None], seconds: float, device: torch.device) -> float:
    """Calls of `fn` per second over the best of REFERENCE_WINDOWS windows of `seconds` each,
    after a warm-up; the device's queue is drained at both ends of every window."""
    for _ in range(5):
        fn()
    best = 0.0
    for _ in range(REFERENCE_WINDOWS):
        _synchronize(device)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            calls += 1
        _synchronize(device)
        best = max(best, calls / (time.perf_counter() - start))
    return best


def _forward_rate(
    forward: Callable[[Net, torch.Tensor], torch.Tensor],
    batch: int,
    seconds: float,
    device: torch.device,
) -> float:
    """Images per second of `forward(model, x)` at `batch`, under inference_mode, inputs on the
    device."""
    model = build_net(SEED).to(device)
    images = torch.rand(batch, 1, 32, 32, device=device)

    def run() -> None:
        with torch.inference_mode():
            forward(model, images)

    return _rate(run, seconds, device) * batch


def inprocess_forward_rate(batch: int, seconds: float, device: torch.device) -> float:
    """Images per second of `model(x)`."""
    return _forward_rate(Net.__call__, batch, seconds, device)


def inprocess_pooled_forward_rate(batch: int, seconds: float, device: torch.device) -> float:
    """The same with `inference_forward(model, x)`, the formulation the service predicts with
    (the same values; a faster pooling): torch at its best for this network."""
    return _forward_rate(inference_forward, batch, seconds, device)


def inprocess_step_rate(batch: int, seconds: float, device: torch.device) -> float:
    """SGD steps per second (zero_grad, forward, cross_entropy, backward, step) at `batch`."""
    model = build_net(SEED).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.rand(batch, 1, 32, 32, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return _rate(step, seconds, device)


# The report's rows for the references (scripts/gpu_check.py reads them back).
REFERENCE_ROWS = {
    "forward": "in-process forward `model(x)`, batch 256",
    "pooled-forward": "in-process `inference_forward(model, x)`, batch 256",
    "step": "in-process SGD step, batch 64",
}
REFERENCES: dict[str, tuple[Callable[[int, float, torch.device], float], int]] = {
    "forward": (inprocess_forward_rate, 256),
    "pooled-forward": (inprocess_pooled_forward_rate, 256),
    "step": (inprocess_step_rate, 64),
}


def reference_in_fresh_process(
    name: str, seconds: float, device: str, threads: int | None
) -> tuple[float, int]:
    """Run one in-process reference in a new Python process (torch's default threads unless
    `threads`), so that nothing of this process (its threads, its servers' clients) weighs on
    it; its rate and the thread count it ran with."""
    command = [sys.executable, str(Path(__file__).resolve()), "--reference", name]
    command += ["--device", device, "--duration", str(seconds)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads:
        command += ["--torch-threads", str(threads)]
    output = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if output.returncode != 0:
        raise RuntimeError(f"reference {name} failed:\n{output.stderr[-3000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    return float(result["rate"]), int(result["threads"])


def run_reference(args: argparse.Namespace) -> int:
    """`--reference NAME`: print one reference's rate as a JSON line (see above)."""
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    measure, batch = REFERENCES[args.reference]
    rate = measure(batch, args.duration, torch.device(args.device))
    print(json.dumps({"rate": rate, "threads": torch.get_num_threads()}))
    return 0


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Scenario:
    """One measured case: a server, an endpoint, a body and a number of connections."""

    key: str
    server: str
    path: str
    payload: str
    connections: int
    images: int = 1


def plan(servers: list[str]) -> list[Scenario]:
    """Every scenario, in the order each round runs them (servers interleaved per case)."""
    scenarios = []
    for connections in (1, 16, 64):
        # The ceiling of the HTTP stack: the same server answering a tiny JSON, no torch.
        scenarios.append(
            Scenario(f"lenet healthz GET c{connections}", "lenet", "/healthz", "", connections, 0)
        )
        for server in servers:
            scenarios.append(
                Scenario(
                    f"{server} predict json c{connections}",
                    server,
                    "/predict",
                    "predict_json_1",
                    connections,
                )
            )
        scenarios.append(
            Scenario(
                f"lenet predict b64 c{connections}",
                "lenet",
                "/predict",
                "predict_b64_1",
                connections,
            )
        )
    for form in ("json", "b64"):
        scenarios.append(
            Scenario(
                f"lenet predict {form} 256 images c1",
                "lenet",
                "/predict",
                f"predict_{form}_256",
                1,
                256,
            )
        )
    for form in ("json", "b64"):
        scenarios.append(
            Scenario(
                f"lenet train-step {form} 64 c1", "lenet", "/train-step", f"train_{form}_64", 1, 64
            )
        )
    return scenarios


def median_run(runs: list[Run]) -> Run:
    """Medians of each number over the rounds."""
    return Run(
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
    )


def resolve_device(name: str) -> str:
    """The device for --device: auto is CUDA when torch sees a GPU; CUDA asked for must exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}, but torch {torch.__version__} sees no CUDA device")
    return name


def cpu_name() -> str:
    """The host CPU's model and core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def device_name(device: str) -> str:
    """What the servers and the in-process references compute on, truthfully: the GPU only when
    the run uses it."""
    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(torch.device(device))
        return (
            f"{device}: {gpu} (torch {torch.__version__}, CUDA {torch.version.cuda}); "
            f"host cpu: {cpu_name()}"
        )
    return f"cpu: {cpu_name()}, torch {torch.__version__}"


@contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    """Start every server, and stop them all on the way out, whatever happens."""
    try:
        for server in servers:
            print(f"starting {server.name} on {server.url}", flush=True)
            server.start()
        yield
    finally:
        for server in servers:
            server.stop()


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of warm-up per case")
    parser.add_argument(
        "--bench-python",
        default=str(ROOT / ".venv-bench" / "bin" / "python"),
        help="python of the virtualenv holding litserve (empty: skip LitServe)",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive FastAPI app")
    parser.add_argument(
        "--no-thread-comparison",
        action="store_true",
        help="skip lenet-serve with torch's default threads",
    )
    parser.add_argument(
        "--device",
        default=os.environ.get("LENET_DEVICE", "auto"),
        help="where every server and reference computes (default: LENET_DEVICE, else auto: "
        "CUDA when torch sees a GPU, else the CPU)",
    )
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk, or a Python stand-in (auto: wrk when installed)",
    )
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=10_000,
        help="predictions sent before the memory check",
    )
    parser.add_argument("--reference", choices=sorted(REFERENCES), help=argparse.SUPPRESS)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch threads for every server (default 0: torch's own default, one per core); "
        "when set, a fourth server runs lenet-serve with torch's default for comparison",
    )
    parser.add_argument("--markdown", type=Path, help="also write the markdown table here")
    return parser.parse_args()


def main() -> int:
    """Run the benchmark; exit 1 if a server fails or the memory check fails."""
    args = parse_args()
    # A SIGTERM (a timeout around the bench) unwinds like an error, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.device = device = resolve_device(args.device)
    if args.reference:
        return run_reference(args)
    if args.load == "auto":
        args.load = "wrk" if shutil.which("wrk") else "python"
    if args.load == "wrk" and shutil.which("wrk") is None:
        print(
            "wrk is not installed (apt-get install -y wrk), or use --load python", file=sys.stderr
        )
        return 1
    work = Path(tempfile.mkdtemp(prefix="lenet-bench-"))
    payloads = make_payloads(work)
    # The same torch threading for every server: torch's default unless --torch-threads says
    # otherwise (on a machine busy with other work, fewer threads than cores can pay off).
    threads = (
        {"OMP_NUM_THREADS": str(args.torch_threads), "LENET_TORCH_THREADS": str(args.torch_threads)}
        if args.torch_threads
        else {}
    )
    quiet = {"LENET_LOG_LEVEL": "warning", **threads}
    servers = {
        "lenet": Server(
            "lenet-serve",
            # `lenet serve` itself, without needing its console script on PATH.
            [sys.executable, "-m", "app.cli", "serve", "--port", "{port}"],
            base_env(
                LENET_SEED=str(SEED),
                LENET_DEVICE=device,
                LENET_CHECKPOINT_DIR=str(work / "checkpoints"),
                LENET_AUTOSAVE_ON_SHUTDOWN="false",
                **quiet,
            ),
            "/readyz",
            work / "lenet.log",
        )
    }
    if not args.no_naive:
        servers["naive"] = Server(
            "naive FastAPI",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.naive_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--workers",
                "1",
                "--log-level",
                "warning",
            ],
            base_env(LENET_SEED=str(SEED), LENET_DEVICE=device, **threads),
            "/openapi.json",
            work / "naive.log",
        )
    if args.bench_python:
        if not Path(args.bench_python).exists():
            print(f"{args.bench_python} is missing: `make bench` builds it", file=sys.stderr)
            return 1
        servers["litserve"] = Server(
            "LitServe",
            [args.bench_python, str(LITSERVE_APP), "{port}"],
            base_env(LENET_SEED=str(SEED), LENET_DEVICE=device, **threads),
            "/health",
            work / "litserve.log",
        )
    if threads and not args.no_thread_comparison:
        # lenet-serve again with torch's default threading, to show what the setting is worth.
        servers["lenet-torch-default"] = Server(
            "lenet-serve, torch default threads",
            servers["lenet"].command,
            {k: v for k, v in servers["lenet"].env.items() if k != "OMP_NUM_THREADS"},
            "/readyz",
            work / "lenet-torch-default.log",
        )

    # The in-process reference gets the better of torch's default and the servers' threads.
    reference_threads = list(dict.fromkeys([None, args.torch_threads or None]))
    print(
        f"device: {device_name(device)}; server torch threads: {args.torch_threads or 'default'}; "
        f"load: {args.load}"
    )
    scenarios = plan(list(servers))
    results: dict[str, list[Run]] = {s.key: [] for s in scenarios}
    reference_rates: dict[str, list[tuple[float, int]]] = {name: [] for name in REFERENCES}
    memory: dict[str, float] = {}
    started = time.monotonic()
    with running(list(servers.values())):
        lenet = servers["lenet"]
        time.sleep(1)
        memory["idle"] = lenet.rss_mib()
        count = args.memory_requests
        print(f"lenet-serve idle RSS {memory['idle']:.1f} MiB; {count} predictions...")
        body = payloads["predict_json_1"].read_bytes()
        asyncio.run(_post_many(lenet.port, "/predict", body, count, 16))
        memory["after"] = lenet.rss_mib()
        print(f"lenet-serve RSS after {count} predictions {memory['after']:.1f} MiB")

        if args.warmup > 0:
            for scenario in scenarios:
                server = servers[scenario.server]
                body_path = payloads.get(scenario.payload)
                load(
                    args.load,
                    server,
                    scenario.path,
                    body_path,
                    scenario.connections,
                    args.warmup,
                    warm_up=True,
                )
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}/{args.rounds}", flush=True)
            # The in-process references run while the servers sit idle, each in a fresh process.
            seconds = args.duration / REFERENCE_WINDOWS
            for name, rates in reference_rates.items():
                rates.append(
                    max(
                        reference_in_fresh_process(name, seconds, device, threads)
                        for threads in reference_threads
                    )
                )
            for scenario in scenarios:
                server = servers[scenario.server]
                body_path = payloads.get(scenario.payload)
                run = load(
                    args.load,
                    server,
                    scenario.path,
                    body_path,
                    scenario.connections,
                    args.duration,
                )
                results[scenario.key].append(run)
                print(
                    f"  {scenario.key:<36} {run.rps:9.1f} req/s  p50 {run.p50_ms:8.2f} ms  "
                    f"p99 {run.p99_ms:8.2f} ms",
                    flush=True,
                )
    medians = {key: median_run(runs) for key, runs in results.items()}
    reference = {
        name: statistics.median(rate for rate, _ in rates)
        for name, rates in reference_rates.items()
    }
    for name, rates in reference_rates.items():
        print(f"in-process {name} (per second, threads): {rates}")
    table = report(
        medians,
        reference,
        memory,
        args,
        time.monotonic() - started,
        "litserve" in servers,
    )
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    growth = memory["after"] / memory["idle"] - 1
    shutil.rmtree(work, ignore_errors=True)
    return 0 if growth <= MEMORY_GROWTH_LIMIT else 1


def report(
    medians: dict[str, Run],
    reference: dict[str, float],
    memory: dict[str, float],
    args: argparse.Namespace,
    elapsed: float,
    with_litserve: bool,
) -> str:
    """The results as markdown: throughput and latency per case, then the targets."""
    # The best torch does in-process: the faster of the two forward formulations.
    forward_rate = max(reference["forward"], reference["pooled-forward"])
    step_rate = reference["step"]
    lines = [
        f"Machine: {device_name(args.device)}; every server and reference on `{args.device}`; "
        f"torch threads per server: {args.torch_threads or 'default'}. {args.rounds} rounds x "
        f"{args.duration:g} s per case, medians; "
        f"{'wrk -t1' if args.load == 'wrk' else 'Python load generator (not wrk)'}; "
        f"bench took {elapsed:.0f} s.",
        "",
        "| case | req/s | images/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for scenario in plan([s for s in SERVER_ORDER if f"{s} predict json c1" in medians]):
        run = medians[scenario.key]
        images = f"{run.rps * scenario.images:.0f}" if scenario.images else ""
        lines.append(
            f"| {scenario.key} | {run.rps:.0f} | {images} | {run.p50_ms:.2f} | {run.p99_ms:.2f} |"
        )
    lines += [
        f"| {REFERENCE_ROWS['forward']} | | {reference['forward']:.0f} | | |",
        f"| {REFERENCE_ROWS['pooled-forward']} | | {reference['pooled-forward']:.0f} | | |",
        f"| {REFERENCE_ROWS['step']} | {step_rate:.1f} steps/s | {step_rate * 64:.0f} | | |",
        "",
        "| target | measured | goal | met |",
        "| --- | ---: | ---: | :---: |",
    ]

    def target(name: str, value: float, goal: float, at_most: bool = False) -> None:
        met = value <= goal if at_most else value >= goal
        lines.append(
            f"| {name} | {value:.2f} | {'<=' if at_most else '>='} {goal:g} | "
            f"{'yes' if met else '**no**'} |"
        )

    # The goals of issue 13, each a ratio of two figures of this run.
    json_at = {c: medians[f"lenet predict json c{c}"] for c in (1, 16, 64)}
    if with_litserve:
        for connections in (1, 16, 64):
            theirs = medians[f"litserve predict json c{connections}"]
            target(
                f"/predict 1 image JSON vs LitServe, req/s at {connections} clients",
                json_at[connections].rps / theirs.rps,
                10,
            )
        for connections in (16, 64):
            theirs = medians[f"litserve predict json c{connections}"]
            target(
                f"p99 vs LitServe's p99 at {connections} clients (JSON)",
                json_at[connections].p99_ms / theirs.p99_ms,
                1,
                at_most=True,
            )
    target("p99 / p50 at 16 clients (JSON)", json_at[16].p99_ms / json_at[16].p50_ms, 5, True)
    target("req/s at 64 clients / at 16 (JSON)", json_at[64].rps / json_at[16].rps, 0.9)
    ceiling = medians["lenet healthz GET c16"].rps
    target("req/s at 16 clients (JSON) / GET /healthz's", json_at[16].rps / ceiling, 0.6)
    for form, goal in (("b64", 0.85), ("json", 0.25)):
        served = medians[f"lenet predict {form} 256 images c1"].rps * 256
        target(
            f"one /predict of 256 images ({form}) vs in-process forward",
            served / forward_rate,
            goal,
        )
    for form, goal in (("b64", 0.85), ("json", 0.4)):
        served = medians[f"lenet train-step {form} 64 c1"].rps
        target(f"/train-step of 64 images ({form}) vs in-process step", served / step_rate, goal)
    growth = memory["after"] / memory["idle"] - 1
    lines += [
        "",
        f"Memory: lenet-serve idle RSS {memory['idle']:.1f} MiB, after {args.memory_requests:,} "
        f"predictions {memory['after']:.1f} MiB ({growth:+.1%}; limit +10%: "
        f"{'met' if growth <= MEMORY_GROWTH_LIMIT else 'NOT met'}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
