"""POST /explain at one client: what the web page's "inside your drawing" view costs on every
stroke (issue 12), beside POST /predict of the same image, on one real server.

    .venv/bin/python bench/explain.py [--duration 10]
"""

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import wrk  # noqa: E402
from tests.server import start_test_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    image = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        body = root / "one.json"
        body.write_text(json.dumps({"inputs": image.tolist()}))
        server = start_test_server(root / "server", seed=0)
        try:
            for path in ("/explain", "/predict"):
                wrk(f"{server.url}{path}", body, 2, 1)  # warm-up
                result = wrk(f"{server.url}{path}", body, args.duration, 1)
                print(  # noqa: T201
                    f"POST {path}, 1 client: p50 {result['p50_ms']:.2f} ms, "
                    f"p99 {result['p99_ms']:.2f} ms, {result['rps']:,.0f} req/s"
                )
        finally:
            server.stop(signal.SIGKILL)


if __name__ == "__main__":
    main()
