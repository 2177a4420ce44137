"""Lag from a trainer's step to the predictors serving it, with real processes and a store
folder: one trainer, two predictors, default intervals (publish 100 ms, poll 100 ms).

For each of `--steps` steps the lag is the time from the step's answer to each predictor's
answer to `POST /predict` with `min_version` set to that step's version (which answers as soon
as the predictor serves it). Steps are spaced `--gap-ms` apart, so each is published on its own.

    .venv/bin/python bench/lag.py [--steps 200] [--gap-ms 150]
"""

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server import start_test_server  # noqa: E402

TRAIN = {"inputs": np.zeros((4, 32, 32)).tolist(), "targets": [1, 2, 3, 4]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        store = (root / "store").as_uri()
        trainer = start_test_server(root / "t", role="trainer", store_url=store, torch_threads=1)
        predictors = [
            start_test_server(root / f"p{i}", role="predictor", store_url=store, torch_threads=1)
            for i in range(2)
        ]
        lags: list[float] = []
        try:
            clients = [p.client() for p in predictors]
            with trainer.client() as http:
                for _ in range(args.steps):
                    version = http.post("/train-step", json=TRAIN).json()["version"]
                    stepped = time.perf_counter()
                    body = {"inputs": np.zeros((32, 32)).tolist(), "min_version": version}

                    def follow(client: httpx.Client, stepped: float = stepped,
                               body: dict = body) -> None:  # fmt: skip
                        answer = client.post("/predict", json=body)
                        assert answer.status_code == 200, answer.text
                        lags.append((time.perf_counter() - stepped) * 1000)

                    threads = [threading.Thread(target=follow, args=(c,)) for c in clients]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(10)
                    time.sleep(args.gap_ms / 1000)
        finally:
            for server in [trainer, *predictors]:
                server.stop(signal.SIGKILL)
    values = np.asarray(lags)
    print(  # noqa: T201
        f"{len(values)} step->served lags over {args.steps} steps, 2 predictors: "
        f"p50 {np.percentile(values, 50):.1f} ms, p99 {np.percentile(values, 99):.1f} ms, "
        f"max {values.max():.1f} ms"
    )


if __name__ == "__main__":
    main()
