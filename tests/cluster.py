"""HAProxy in front of a trainer and predictors on 127.0.0.1, for tests.

`start_balancer(trainer_url, predictor_urls, log_dir)` renders deploy/haproxy/haproxy.cfg (the
file that docker-compose.cluster.yml mounts) with explicit addresses in place of its two
"discovery" lines, starts Debian's `haproxy` on a free port of 127.0.0.1, and waits until every
server passes its /readyz check. Everything else (routing, checks, retries, timeouts) is the
deployed file, unchanged.
"""

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.server import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"

# The lines of haproxy.cfg that find the servers through compose's DNS.
_PREDICTOR_DISCOVERY = re.compile(r"^(\s*)server-template predictor- .*$", re.MULTILINE)
_TRAINER_DISCOVERY = re.compile(r"^(\s*)server trainer .*$", re.MULTILINE)

# One request as `option httplog` logs it, with what the tests need from it.
_HTTPLOG = re.compile(
    r"^\S+ \[[^\]]+\] (?P<frontend>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+)"
    r" \S+ (?P<status>-?\d+) \S+ \S+ \S+ \S+"
    r" \d+/\d+/\d+/\d+/(?P<redispatched>\+?)(?P<retries>\d+) \d+/\d+"
    r' "(?P<method>\S+) (?P<path>\S+)',
    re.MULTILINE,
)


@dataclass(frozen=True)
class LoggedRequest:
    """One request in HAProxy's log: where it went and how many times it was retried."""

    backend: str
    server: str
    status: int
    retries: int
    redispatched: bool
    method: str
    path: str


def _address(url: str) -> str:
    """host:port of an http URL on a loopback address (the only kind tests may use)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"expected http://HOST:PORT, got {url!r}")
    if not ipaddress.ip_address(parts.hostname).is_loopback:
        raise ValueError(f"tests run servers on loopback addresses only, not {url!r}")
    return f"{parts.hostname}:{parts.port}"


def render_config(
    trainer_url: str, predictor_urls: Sequence[str], template: Path = HAPROXY_CFG
) -> str:
    """haproxy.cfg with explicit servers in place of its DNS discovery lines, nothing else."""
    if not predictor_urls:
        raise ValueError("at least one predictor")
    text = template.read_text()
    if len(_PREDICTOR_DISCOVERY.findall(text)) != 1 or len(_TRAINER_DISCOVERY.findall(text)) != 1:
        raise ValueError(f"{template} should have one predictor and one trainer discovery line")
    addresses = [_address(url) for url in predictor_urls]
    text = _PREDICTOR_DISCOVERY.sub(
        lambda m: "\n".join(
            f"{m[1]}server predictor-{number} {address} check"
            for number, address in enumerate(addresses, start=1)
        ),
        text,
    )
    return _TRAINER_DISCOVERY.sub(
        lambda m: f"{m[1]}server trainer {_address(trainer_url)} check", text
    )


@dataclass
class Balancer:
    """A running HAProxy and how to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    config_path: Path
    log_path: Path
    predictors: int

    def log(self) -> str:
        """What HAProxy logged so far (its request log and server state changes)."""
        return self.log_path.read_text(errors="replace")

    def requests(self) -> list[LoggedRequest]:
        """Every request HAProxy has logged, in order."""
        return [
            LoggedRequest(
                backend=m["backend"],
                server=m["server"],
                status=int(m["status"]),
                retries=int(m["retries"]),
                redispatched=m["redispatched"] == "+",
                method=m["method"],
                path=m["path"],
            )
            for m in _HTTPLOG.finditer(self.log())
        ]

    def servers_up(self) -> tuple[int, int]:
        """(predictors, trainers) that pass their checks, from the balancer's /lb-healthz."""
        text = httpx.get(f"{self.url}/lb-healthz", timeout=2).text
        match = re.fullmatch(r"predictors (\d+) trainer (\d+)\n", text)
        if match is None:
            raise RuntimeError(f"unexpected /lb-healthz answer {text!r}")
        return int(match[1]), int(match[2])

    def wait_up(
        self, predictors: int | None = None, trainers: int = 1, timeout: float = 30
    ) -> None:
        """Block until that many servers (default: all) pass their checks, or fail."""
        wanted = (self.predictors if predictors is None else predictors, trainers)
        deadline = time.monotonic() + timeout
        seen: tuple[int, int] | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                seen = self.servers_up()
                if seen == wanted:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"servers up {seen}, wanted {wanted} after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 10) -> int:
        """Stop HAProxy (SIGTERM: a hard stop) and wait; returns its exit status."""
        return stop_process(self.process, signal.SIGTERM, timeout)


def haproxy_binary() -> str:
    """The haproxy executable (`make haproxy` installs Debian's package)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("haproxy is not installed: run `make haproxy`")
    return found


def start_balancer(
    trainer_url: str, predictor_urls: Sequence[str], log_dir: Path, wait: bool = True
) -> Balancer:
    """Start HAProxy on a free port of 127.0.0.1 in front of these servers; wait for all."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = log_dir / "haproxy.cfg"
    config_path.write_text(render_config(trainer_url, predictor_urls))
    log_path = log_dir / "haproxy.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env.update(LB_ADDR="127.0.0.1", LB_PORT=str(port))
    with log_path.open("wb") as log:
        # -db: stay in the foreground, logging to stdout (the config's `log stdout`).
        process = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(config_path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    balancer = Balancer(
        process, f"http://127.0.0.1:{port}", config_path, log_path, len(predictor_urls)
    )
    if wait:
        try:
            balancer.wait_up()
        except BaseException:
            balancer.stop()
            raise
    return balancer
