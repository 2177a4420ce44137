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
import re
import shutil
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
import yaml

from tests.cluster import HAPROXY_CFG, Balancer, haproxy_binary, render_config, start_balancer
from tests.test_docker_files import (
    BROKEN_COMPOSE,
    CHECK_JSONSCHEMA,
    COMPOSE_BIN,
    VENV_BIN,
    clean_env,
    resolved_config,
)

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)

BROKEN_HAPROXY = "defaults\n    mode http\n    not_a_haproxy_keyword 1\n"


def run(*command: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text; never raises on a non-zero exit."""
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs
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


# --- compose: docker-compose.cluster.yml ---------------------------------------------------------

CLUSTER_FILES = ("docker-compose.yml", "docker-compose.cluster.yml")
STORE_PATH = "/data/store"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cluster's services as Compose resolves the two files, with no .env."""
    folder = tmp_path_factory.mktemp("cluster")
    services: dict[str, Any] = resolved_config(folder, *CLUSTER_FILES)["services"]
    return services


def dockerfile_user() -> str:
    """The runtime stage's USER, uid:gid."""
    users = [
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    return users[-1]


def test_cluster_override_passes_compose_config() -> None:
    """`docker compose -f docker-compose.yml -f docker-compose.cluster.yml config -q` passes."""
    args = [arg for name in CLUSTER_FILES for arg in ("-f", name)]
    result = run(COMPOSE_BIN, *args, "config", "-q", cwd=ROOT, env=clean_env())
    assert result.returncode == 0, result.stderr


def test_compose_config_rejects_a_broken_override(tmp_path: Path) -> None:
    """The same check fails when the override has a key Compose does not know."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "override.yml").write_text(BROKEN_COMPOSE.replace("lenet:", "predictor:"))
    result = run(
        COMPOSE_BIN, "-f", "docker-compose.yml", "-f", "override.yml", "config", "-q",
        cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert result.returncode != 0
    assert "not_a_compose_key" in result.stderr


def test_cluster_override_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    """The override validates against the compose-spec schema, which rejects a broken one."""
    good = run(CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", ROOT / CLUSTER_FILES[1])
    assert good.returncode == 0, good.stdout + good.stderr
    (tmp_path / "broken.yml").write_text(BROKEN_COMPOSE)
    bad = run(CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", tmp_path / "broken.yml")
    assert bad.returncode != 0 and "not_a_compose_key" in bad.stdout


def test_cluster_runs_trainer_predictors_and_haproxy_only(cluster: dict[str, Any]) -> None:
    """The single `lenet` service stays out (profile "single"); the cluster's four come up."""
    assert set(cluster) == {"store-init", "trainer", "predictor", "haproxy"}


def test_predictors_scale(cluster: dict[str, Any]) -> None:
    """--scale predictor=N works: no fixed name, no host port; predictors share one store."""
    predictor = cluster["predictor"]
    assert "container_name" not in predictor
    assert not predictor.get("ports")
    assert predictor["environment"]["LENET_ROLE"] == "predictor"
    assert predictor["deploy"]["replicas"] >= 2
    (store,) = predictor["volumes"]
    assert (store["type"], store["source"], store["target"]) == ("volume", "store", STORE_PATH)
    assert store["read_only"] is True  # predictors only read the store
    # No anonymous volume per container for the image's checkpoint VOLUME: a tmpfs.
    assert predictor["environment"]["LENET_CHECKPOINT_DIR"] in predictor["tmpfs"]


def test_trainer_owns_checkpoints_and_writes_the_store(cluster: dict[str, Any]) -> None:
    """One trainer: its checkpoint volume, the store read-write, reached only via HAProxy."""
    trainer = cluster["trainer"]
    assert trainer["environment"]["LENET_ROLE"] == "trainer"
    assert not trainer.get("ports")
    mounts = {m["source"]: m for m in trainer["volumes"]}
    assert mounts["store"]["target"] == STORE_PATH and not mounts["store"].get("read_only")
    assert mounts["checkpoints"]["target"] == trainer["environment"]["LENET_CHECKPOINT_DIR"]
    assert trainer["depends_on"]["store-init"]["condition"] == "service_completed_successfully"


def test_store_url_names_the_shared_volume(cluster: dict[str, Any]) -> None:
    """Both roles read LENET_STORE_URL=file://<the folder where the named volume is mounted>."""
    for name in ("trainer", "predictor"):
        assert cluster[name]["environment"]["LENET_STORE_URL"] == f"file://{STORE_PATH}"


def test_store_init_hands_the_volume_to_the_image_user(cluster: dict[str, Any]) -> None:
    """A fresh volume belongs to root: store-init chowns it to the Dockerfile's USER, only that."""
    init = cluster["store-init"]
    assert init["command"] == ["chown", dockerfile_user(), STORE_PATH]
    assert init["cap_drop"] == ["ALL"] and init["cap_add"] == ["CHOWN"]
    assert init["volumes"][0]["target"] == STORE_PATH


def test_allowed_hosts_admit_the_names_used(cluster: dict[str, Any]) -> None:
    """Clients (via 127.0.0.1), the healthcheck (127.0.0.1) and HAProxy's checks' Host."""
    checks_host = set(re.findall(r"http-check send hdr Host (\S+)", HAPROXY_CFG.read_text()))
    assert checks_host == {"localhost"}
    for name in ("trainer", "predictor"):
        allowed = set(cluster[name]["environment"]["LENET_ALLOWED_HOSTS"].split(","))
        assert allowed == {"localhost", "127.0.0.1"}


def test_haproxy_service_publishes_on_loopback_with_the_tested_config(
    cluster: dict[str, Any],
) -> None:
    """HAProxy: 127.0.0.1 only, the file the tests run mounted read-only, the same series."""
    haproxy = cluster["haproxy"]
    (port,) = haproxy["ports"]
    assert (port["host_ip"], port["published"]) == ("127.0.0.1", "8080")
    assert str(port["target"]) == haproxy["environment"]["LB_PORT"]
    (mount,) = haproxy["volumes"]
    # Resolved in the repository itself (the fixture's copies sit in a scratch folder).
    args = [arg for name in CLUSTER_FILES for arg in ("-f", name)]
    here = run(COMPOSE_BIN, *args, "config", "--format", "json", cwd=ROOT, env=clean_env())
    assert here.returncode == 0, here.stderr
    (source,) = [v["source"] for v in json.loads(here.stdout)["services"]["haproxy"]["volumes"]]
    assert Path(source) == HAPROXY_CFG
    assert mount["target"] == "/usr/local/etc/haproxy/haproxy.cfg" and mount["read_only"]
    version = re.search(r"HAProxy version (\d+\.\d+)", run(haproxy_binary(), "-v").stdout)
    assert version is not None and haproxy["image"] == f"haproxy:{version[1]}"
    assert haproxy["read_only"] and haproxy["cap_drop"] == ["ALL"]


def test_haproxy_discovery_names_the_compose_services(cluster: dict[str, Any]) -> None:
    """The config's DNS names and port are the services' names and LENET_PORT."""
    text = HAPROXY_CFG.read_text()
    assert "nameserver dns 127.0.0.11:53" in text  # compose's embedded DNS
    port = cluster["predictor"]["environment"]["LENET_PORT"]
    assert cluster["trainer"]["environment"]["LENET_PORT"] == port
    assert f"server-template predictor- 10 predictor:{port} check resolvers docker" in text
    assert f"server trainer trainer:{port} check resolvers docker" in text


def test_lb_port_moves_the_published_port(tmp_path: Path) -> None:
    """LENET_LB_PORT picks the host port; it stays on 127.0.0.1."""
    services = resolved_config(tmp_path, *CLUSTER_FILES, LENET_LB_PORT="9180")["services"]
    (port,) = services["haproxy"]["ports"]
    assert (port["host_ip"], port["published"]) == ("127.0.0.1", "9180")


# --- Kubernetes: deploy/k8s ------------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"
KUBE_VALIDATE = VENV_BIN / "kubernetes-validate"
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
BROKEN_MANIFEST = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  notAField: 1\n"


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource of deploy/k8s by (kind, name)."""
    resources = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            resources[(doc["kind"], doc["metadata"]["name"])] = doc
    return resources


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    """Strict mode fails on a field the schema does not define (plain mode would let it by)."""
    (tmp_path / "broken.yaml").write_text(BROKEN_MANIFEST)
    strict = run(KUBE_VALIDATE, "--strict", tmp_path / "broken.yaml")
    assert strict.returncode != 0
    assert "notAField" in strict.stdout + strict.stderr
    assert run(KUBE_VALIDATE, tmp_path / "broken.yaml").returncode == 0


@pytest.mark.parametrize("version", [None, "1.30.0"], ids=["newest", "1.30"])
def test_manifests_pass_kubernetes_validate_strict(version: str | None, k8s: Any) -> None:
    """Every manifest validates strictly, against the newest schemas and an older release."""
    assert MANIFESTS
    flags = ["-k", version] if version else []
    result = run(KUBE_VALIDATE, "--strict", *flags, *MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(k8s), result.stdout


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml (no offline schema) names exactly the manifests in the folder."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [path.name for path in MANIFESTS]


def pod_spec(k8s: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    """The pod template spec of Deployment `name`."""
    spec: dict[str, Any] = k8s[("Deployment", name)]["spec"]["template"]["spec"]
    return spec


def container_env(pod: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or valueFrom) of the one container's environment."""
    (container,) = pod["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_one_trainer_recreated_with_its_checkpoints(k8s: Any) -> None:
    """replicas 1, Recreate (never two trainers), its checkpoint PVC and the store, read-write."""
    trainer = k8s[("Deployment", "lenet-trainer")]["spec"]
    assert trainer["replicas"] == 1 and trainer["strategy"] == {"type": "Recreate"}
    pod = pod_spec(k8s, "lenet-trainer")
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["checkpoints"]["claimName"] == "lenet-checkpoints"
    assert claims["store"] == {"claimName": "lenet-store"}
    assert k8s[("PersistentVolumeClaim", "lenet-checkpoints")]["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    env = container_env(pod)
    assert env["LENET_ROLE"] == "trainer"
    assert env["LENET_CHECKPOINT_DIR"] == "/data/checkpoints"


def test_the_token_comes_from_a_secret_the_operator_creates(k8s: Any) -> None:
    """No Secret in the files; the trainer needs lenet-api-token, as the documented line makes."""
    assert not [key for key in k8s if key[0] == "Secret"]
    ref = container_env(pod_spec(k8s, "lenet-trainer"))["LENET_API_TOKEN"]["secretKeyRef"]
    assert ref == {"name": "lenet-api-token", "key": "token"}  # not optional: no token, no start
    line = f"create secret generic {ref['name']} --from-literal={ref['key']}="
    assert line in (K8S / "kustomization.yaml").read_text()


def test_predictors_probe_readyz_and_healthz_and_autoscale(k8s: Any) -> None:
    """Readiness on /readyz (no traffic before a version), liveness on /healthz, HPA on CPU."""
    pod = pod_spec(k8s, "lenet-predictor")
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["port"] == container["ports"][0]["name"]
        assert probe["httpGet"]["httpHeaders"] == [{"name": "Host", "value": "localhost"}]
    assert container_env(pod)["LENET_ROLE"] == "predictor"
    assert "replicas" not in k8s[("Deployment", "lenet-predictor")]["spec"]  # the HPA's
    hpa = k8s[("HorizontalPodAutoscaler", "lenet-predictor")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "lenet-predictor"
    }  # fmt: skip
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_the_store_is_shared_read_write_many(k8s: Any) -> None:
    """One RWX claim, mounted at the folder LENET_STORE_URL names; read-only in predictors."""
    assert k8s[("PersistentVolumeClaim", "lenet-store")]["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, read_only in (("lenet-trainer", False), ("lenet-predictor", True)):
        pod = pod_spec(k8s, name)
        (container,) = pod["containers"]
        assert container_env(pod)["LENET_STORE_URL"] == f"file://{STORE_PATH}"
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == STORE_PATH]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == "lenet-store"
        assert mount.get("readOnly", False) is read_only


@pytest.mark.parametrize("name", ["lenet-trainer", "lenet-predictor"])
def test_pods_are_locked_down_with_resources(k8s: Any, name: str) -> None:
    """Non-root as the Dockerfile's user, read-only root, no capabilities, seccomp, limits."""
    pod = pod_spec(k8s, name)
    uid, gid = (int(part) for part in dockerfile_user().split(":"))
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}  # writable scratch
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}


def test_services_select_their_pods(k8s: Any) -> None:
    """Each Service selects its Deployment's pods, on the containers' named port."""
    for name in ("lenet-trainer", "lenet-predictor"):
        service = k8s[("Service", name)]["spec"]
        labels = k8s[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert service["selector"] == labels
        assert service["ports"][0]["targetPort"] == "http"


def ingress_service(ingress: dict[str, Any], path: str) -> str:
    """The Service an Ingress sends `path` to, by the Kubernetes matching rules."""
    best: tuple[int, int, str] | None = None  # (exact?, length, service): the longest wins
    for rule_path in ingress["spec"]["rules"][0]["http"]["paths"]:
        prefix, kind = rule_path["path"], rule_path["pathType"]
        if kind == "Exact":
            matched = path == prefix
        else:  # Prefix: element by element, so /predict matches /predict/image, not /predicts
            parts, wanted = path.strip("/").split("/"), prefix.strip("/").split("/")
            matched = prefix == "/" or parts[: len(wanted)] == wanted
        if matched:
            candidate = (kind == "Exact", len(prefix), rule_path["backend"]["service"]["name"])
            best = max(best, candidate) if best else candidate
    assert best is not None, path
    return best[2]


INGRESS_ROUTES = {
    "/predict": "lenet-predictor",
    "/predict/image": "lenet-predictor",
    "/explain": "lenet-predictor",
    "/v2/models/lenet/infer": "lenet-predictor",
    "/v2/models/lenet/versions/7/infer": "lenet-predictor",
    "/v2/models/lenet/versions/7": "lenet-predictor",  # a GET that predictors serve too
    "/train-step": "lenet-trainer",
    "/loss": "lenet-trainer",
    "/checkpoints": "lenet-trainer",
    "/optimizer": "lenet-trainer",
    "/versions": "lenet-trainer",
    "/v2/models/lenet": "lenet-trainer",
    "/v2/models/lenet/infer/extra": "lenet-trainer",
    "/predictions": "lenet-trainer",
    "/": "lenet-trainer",
}


def test_ingress_routes_by_path(k8s: Any) -> None:
    """Prediction paths to the predictors' Service, the rest to the trainer's."""
    ingress = k8s[("Ingress", "lenet-serve")]
    for path, service in INGRESS_ROUTES.items():
        assert ingress_service(ingress, path) == service, path
    names = {p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert names == {name for kind, name in k8s if kind == "Service"}
