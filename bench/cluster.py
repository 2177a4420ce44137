"""Predictions per second through HAProxy with 1, 2 and 3 predictors, against one process
without HAProxy, in the same run (issue 11): real processes on 127.0.0.1, the repository's own
HAProxy configuration (deploy/haproxy/haproxy.cfg, rendered by tests/cluster.py), wrk with one
32x32 image per request as JSON, 16 connections.

On one 2-core machine more predictors cannot add throughput (they share the cores); what this
measures is the cost of the extra hop, and how evenly HAProxy spreads the load.

    .venv/bin/python bench/cluster.py [--duration 10] [--connections 16] [--rounds 2]
"""

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import start_balancer  # noqa: E402
from tests.server import LiveServer, start_test_server  # noqa: E402


def wrk(url: str, body: Path, duration: int, connections: int) -> dict[str, float]:
    """One wrk run against POST `url`; requests/s and latency percentiles in ms."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
        "-s", str(ROOT / "bench" / "post.lua"),
        url, "--", str(body),
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    bad = result["socket_errors"] + result["non_2xx"] + result["timeouts"]
    if bad:
        raise RuntimeError(f"{bad} failed requests against {url}: {result}")
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    image = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        body = root / "one.json"
        body.write_text(json.dumps({"inputs": image.tolist()}))
        store = (root / "store").as_uri()
        servers: list[LiveServer] = []
        try:
            # One torch thread each: four servers, HAProxy and wrk share two cores here, and
            # idle OpenMP workers spinning on them starve the others.
            single = start_test_server(root / "single", seed=0, torch_threads=1)
            trainer = start_test_server(
                root / "trainer", role="trainer", store_url=store, seed=0, torch_threads=1
            )
            predictors = [
                start_test_server(
                    root / f"p{i}", role="predictor", store_url=store, torch_threads=1
                )
                for i in range(3)
            ]
            servers = [single, trainer, *predictors]
            balancers = [
                start_balancer(trainer.url, [p.url for p in predictors[:n]], root / f"lb{n}")
                for n in (1, 2, 3)
            ]
            cases = {"one process, no HAProxy": f"{single.url}/predict"}
            cases.update(
                {
                    f"HAProxy + {n} predictor(s)": f"{b.url}/predict"
                    for n, b in zip((1, 2, 3), balancers, strict=True)
                }
            )
            for url in cases.values():  # warm-up
                wrk(url, body, 2, args.connections)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
            for _ in range(args.rounds):  # interleaved, so every case sees the same machine
                for name, url in cases.items():
                    results[name].append(wrk(url, body, args.duration, args.connections))
            for balancer in balancers:
                balancer.stop()
        finally:
            for server in servers:
                server.stop(signal.SIGKILL)
    baseline = float(np.median([r["rps"] for r in results["one process, no HAProxy"]]))
    header = f"| {args.connections} clients, one JSON image a request"
    print(f"{header} | req/s | vs one process | p50 ms | p99 ms |")  # noqa: T201
    print("|---|---|---|---|---|")  # noqa: T201
    for name, runs in results.items():
        rps = float(np.median([r["rps"] for r in runs]))
        p50 = float(np.median([r["p50_ms"] for r in runs]))
        p99 = float(np.median([r["p99_ms"] for r in runs]))
        print(f"| {name} | {rps:,.0f} | {rps / baseline:.2f}x | {p50:.1f} | {p99:.1f} |")  # noqa: T201


if __name__ == "__main__":
    main()
