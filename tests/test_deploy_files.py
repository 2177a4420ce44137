"""The deployment files of issue 11 (one trainer, N predictors, a version store), checked here.

HAProxy: `haproxy -c` on deploy/haproxy/haproxy.cfg (after showing that it rejects a broken
file), then the same file run on 127.0.0.1 in front of tiny http.server processes: routing, the
/readyz gate, and a predictor killed mid-load losing no request. Compose: the cluster override
through the real Compose binary and the compose-spec schema. Kubernetes: deploy/k8s through
kubernetes-validate in strict mode, after showing it rejects an unknown field.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import HAPROXY_CFG, Balancer, haproxy_binary, render_config, start_balancer

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)

BROKEN_HAPROXY = "defaults\n    mode http\n    not_a_haproxy_keyword 1\n"


def run(*command: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text; never raises on a non-zero exit."""
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=60, **kwargs
    )


def haproxy_check(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`haproxy -c` in zero-warning mode (-dW): a warning fails the check too."""
    return run(haproxy_binary(), "-dW", "-c", "-f", path, env={**os.environ, **env})


# --- tiny backends -------------------------------------------------------------------------------


class _FakeHandler(BaseHTTPRequestHandler):
    """Answers every request with JSON naming the server; /readyz as the server is told."""

    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn does, so a kill cuts live requests
    server: "_FakeServer"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/readyz":
            # Like LENET_ALLOWED_HOSTS=localhost,...: a check without that Host fails.
            ok = self.server.ready and self.headers.get("Host") == "localhost"
            self._send(200 if ok else 503, {"ready": ok})
            return
        if self.path == "/drop":
            self.server.dropped += 1
            self.close_connection = True
            self.connection.shutdown(2)  # gone before answering, as a crashed server is
            return
        time.sleep(self.server.delay)
        self._send(
            200,
            {
                "server": self.server.name,
                "method": self.command,
                "path": self.path,
                "body_bytes": len(body),
                "host": self.headers.get("Host"),
                "forwarded_for": self.headers.get("X-Forwarded-For"),
                "dropped": self.server.dropped,
            },
        )

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _answer  # noqa: N815 (the names http.server calls)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    name = ""
    ready = True
    delay = 0.0
    dropped = 0


def fake_backend_main(name: str, ready: bool, delay: float) -> None:
    """Serve on a free port of 127.0.0.1 and print it; the entry point of a fake subprocess."""
    server = _FakeServer(("127.0.0.1", 0), _FakeHandler)
    server.name, server.ready, server.delay = name, ready, delay
    print(server.server_address[1], flush=True)  # noqa: T201 (the parent reads the port)
    server.serve_forever()


@dataclass
class Fake:
    """A fake backend process."""

    name: str
    process: subprocess.Popen[str]
    url: str

    def kill(self) -> None:
        """SIGKILL: the process dies with whatever requests it holds."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def fakes() -> Iterator[Any]:
    """A factory of fake backends (subprocesses on 127.0.0.1), all killed after the test."""
    started: list[Fake] = []

    def start(name: str, ready: bool = True, delay: float = 0.0) -> Fake:
        code = (
            "from tests.test_deploy_files import fake_backend_main; "
            f"fake_backend_main({name!r}, {ready!r}, {delay!r})"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        port = int(process.stdout.readline())
        fake = Fake(name, process, f"http://127.0.0.1:{port}")
        started.append(fake)
        return fake

    yield start
    for fake in started:
        if fake.process.poll() is None:
            fake.kill()
        assert fake.process.stdout is not None
        fake.process.stdout.close()


@pytest.fixture
def balancers(tmp_path: Path) -> Iterator[Any]:
    """A factory of HAProxy instances (tests.cluster), all stopped after the test."""
    started: list[Balancer] = []

    def start(trainer: Fake, predictors: list[Fake], wait: bool = True) -> Balancer:
        folder = tmp_path / f"haproxy-{len(started)}"
        balancer = start_balancer(trainer.url, [p.url for p in predictors], folder, wait=wait)
        started.append(balancer)
        return balancer

    yield start
    for balancer in started:
        balancer.stop()


# --- haproxy -c ----------------------------------------------------------------------------------


def test_haproxy_check_rejects_a_broken_config(tmp_path: Path) -> None:
    """The checker can fail: an unknown keyword is an error."""
    (tmp_path / "broken.cfg").write_text(BROKEN_HAPROXY)
    result = haproxy_check(tmp_path / "broken.cfg")
    assert result.returncode != 0
    assert "not_a_haproxy_keyword" in result.stdout + result.stderr


def test_haproxy_check_fails_on_a_warning(tmp_path: Path) -> None:
    """Zero-warning mode: a server name that does not resolve is a warning, and fails."""
    (tmp_path / "warn.cfg").write_text(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n"
        "    timeout server 1s\nbackend b\n    server s no-such-host.invalid:1\n"
    )
    result = haproxy_check(tmp_path / "warn.cfg")
    assert result.returncode != 0, result.stdout + result.stderr


def test_haproxy_config_is_valid() -> None:
    """The deployed file, as compose runs it (DNS discovery, 0.0.0.0:8080), has no warning."""
    result = haproxy_check(HAPROXY_CFG, LB_ADDR="0.0.0.0", LB_PORT="8080")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout


def test_rendered_config_changes_only_the_discovery_lines(tmp_path: Path) -> None:
    """tests.cluster's config is the deployed one but for the server lines, and valid too."""
    rendered = render_config(
        "http://127.0.0.1:9001", ["http://127.0.0.1:9002", "http://127.0.0.1:9003"]
    )
    original = HAPROXY_CFG.read_text().splitlines()
    lines = rendered.splitlines()
    removed = [line.strip() for line in original if line not in lines]
    added = [line.strip() for line in lines if line not in original]
    assert removed == [
        "server-template predictor- 10 predictor:8000 check resolvers docker init-addr none",
        "server trainer trainer:8000 check resolvers docker init-addr none",
    ]
    assert added == [
        "server predictor-1 127.0.0.1:9002 check",
        "server predictor-2 127.0.0.1:9003 check",
        "server trainer 127.0.0.1:9001 check",
    ]
    (tmp_path / "rendered.cfg").write_text(rendered)
    result = haproxy_check(tmp_path / "rendered.cfg", LB_ADDR="127.0.0.1", LB_PORT="8080")
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(ValueError, match="loopback"):
        render_config("http://10.0.0.1:8000", ["http://127.0.0.1:1"])


# --- haproxy, running ----------------------------------------------------------------------------

PREDICTOR_ROUTES = [
    ("POST", "/predict"),
    ("POST", "/predict/image"),
    ("POST", "/explain"),
    ("POST", "/v2/models/lenet/infer"),
    ("POST", "/v2/models/lenet/versions/7/infer"),
    ("POST", "/predict?min_version=3"),
]
TRAINER_ROUTES = [
    ("POST", "/train-step"),
    ("POST", "/loss"),
    ("POST", "/checkpoints"),
    ("PUT", "/optimizer"),
    ("GET", "/predict"),
    ("GET", "/healthz"),
    ("GET", "/versions"),
    ("GET", "/v2/models/lenet"),
    ("GET", "/v2/models/lenet/versions/7"),
    ("POST", "/v2/models/lenet/versions/7/infer/extra"),
    ("POST", "/predictions"),
    ("GET", "/"),
]


@pytest.mark.slow
def test_routes_reach_their_backend(fakes: Any, balancers: Any) -> None:
    """Predict routes go to a ready predictor (all of them in turn), the rest to the trainer."""
    trainer = fakes("trainer")
    ready = [fakes("predictor-a"), fakes("predictor-b")]
    unready = fakes("predictor-unready", ready=False)  # a predictor with no version yet
    balancer = balancers(trainer, [*ready, unready], wait=False)
    balancer.wait_up(predictors=2)
    with httpx.Client(base_url=balancer.url, timeout=10) as client:
        served: Counter[str] = Counter()
        for _ in range(4):
            for method, path in PREDICTOR_ROUTES:
                answer = client.request(method, path, content=b'{"inputs": []}')
                assert answer.status_code == 200, (method, path, answer.text)
                assert answer.json()["path"] == path
                served[answer.json()["server"]] += 1
        assert set(served) == {"predictor-a", "predictor-b"}  # never the unready one
        for method, path in TRAINER_ROUTES:
            answer = client.request(method, path)
            assert answer.status_code == 200, (method, path, answer.text)
            assert answer.json()["server"] == "trainer", (method, path)
        seen = client.post("/predict", content=b"{}").json()
        # The client's Host reaches the service unchanged (LENET_ALLOWED_HOSTS sees it), and
        # its address as X-Forwarded-For.
        assert seen["host"] == balancer.url.removeprefix("http://")
        assert seen["forwarded_for"] == "127.0.0.1"
        status = client.get("/lb-healthz")
        assert (status.status_code, status.text) == (200, "predictors 2 trainer 1\n")


@pytest.mark.slow
def test_no_ready_predictor_means_503_for_predictions_only(fakes: Any, balancers: Any) -> None:
    """With no predictor ready, predictions are 503 and the trainer's routes still work."""
    trainer = fakes("trainer")
    balancer = balancers(trainer, [fakes("predictor-unready", ready=False)], wait=False)
    balancer.wait_up(predictors=0)
    with httpx.Client(base_url=balancer.url, timeout=10) as client:
        assert client.post("/predict", content=b"{}").status_code == 503
        assert client.get("/lb-healthz").status_code == 503
        assert client.post("/train-step", content=b"{}").json()["server"] == "trainer"


@pytest.mark.slow
def test_a_trainer_request_that_got_no_answer_is_not_replayed(fakes: Any, balancers: Any) -> None:
    """A training request may have been applied: the trainer backend never replays it."""
    trainer = fakes("trainer")
    balancer = balancers(trainer, [fakes("predictor-a")])
    with httpx.Client(base_url=balancer.url, timeout=10) as client:
        assert client.post("/drop", content=b"{}").status_code == 502
        assert client.post("/train-step", content=b"{}").json()["dropped"] == 1  # seen once
    (dropped,) = [r for r in balancer.requests() if r.path == "/drop"]
    assert (dropped.backend, dropped.retries) == ("trainer", 0)


@pytest.mark.slow
def test_killing_a_predictor_mid_load_loses_no_request(fakes: Any, balancers: Any) -> None:
    """200 predictions from 8 clients; one of two predictors is SIGKILLed mid-way; all answer."""
    total, workers, kill_after = 200, 8, 60
    trainer = fakes("trainer")
    doomed, survivor = fakes("predictor-a", delay=0.02), fakes("predictor-b", delay=0.02)
    balancer = balancers(trainer, [doomed, survivor])
    body = json.dumps({"inputs": [[0.5] * 28] * 28}).encode()  # one MNIST-sized image, ~4 KB
    statuses: list[int | str] = []
    servers: Counter[str] = Counter()
    lock = threading.Lock()
    done = threading.Event()
    queue = iter(range(total))

    def client_loop() -> None:
        with httpx.Client(base_url=balancer.url, timeout=30) as client:
            while True:
                with lock:
                    if next(queue, None) is None:
                        return
                try:
                    answer = client.post(
                        "/predict", content=body, headers={"Content-Type": "application/json"}
                    )
                    outcome: int | str = answer.status_code
                    server = answer.json()["server"] if answer.status_code == 200 else None
                except httpx.HTTPError as error:
                    outcome, server = type(error).__name__, None
                with lock:
                    statuses.append(outcome)
                    if server:
                        servers[server] += 1
                    if len(statuses) == kill_after:
                        done.set()

    threads = [threading.Thread(target=client_loop) for _ in range(workers)]
    for thread in threads:
        thread.start()
    assert done.wait(60)
    doomed.kill()
    for thread in threads:
        thread.join(120)
    # HAProxy's log is best effort: a line two threads write at once may be dropped (its
    # DroppedLogs counter), so the log gives a lower bound of the retries, not every request.
    time.sleep(0.5)
    logged = [r for r in balancer.requests() if r.path == "/predict"]
    retried = [r for r in logged if r.retries > 0]
    log.info(
        "kill test: sent %d, answered 200: %d, lost %d; haproxy logged %d, %d of them retried "
        "(redispatched %d); served by %s",
        len(statuses),
        statuses.count(200),
        len(statuses) - statuses.count(200),
        len(logged),
        len(retried),
        sum(r.redispatched for r in retried),
        dict(servers),
    )
    assert len(statuses) == total
    assert statuses == [200] * total, Counter(statuses)
    assert servers["predictor-a"] >= kill_after // 4  # it did carry load before it died
    assert total * 0.9 <= len(logged) <= total and all(r.status == 200 for r in logged)
    # The kill cut requests in flight: the retries were exercised, and each went elsewhere.
    assert retried, balancer.log()
    assert all(r.server == "predictor-2" for r in retried)
    assert "predictors/predictor-1 is DOWN" in balancer.log()
