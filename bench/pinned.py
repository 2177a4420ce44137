"""Pinned predictions (`version`, outside the batcher) against batched ones, in process:
`--requests` single-image predictions, `--concurrency` at a time.

    .venv/bin/python bench/pinned.py [--requests 2000] [--concurrency 64]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch

from app.engine import Engine
from app.settings import Settings


async def measure(requests: int, concurrency: int, folder: Path) -> dict[str, float]:
    engine = Engine(
        Settings(device="cpu", seed=0, checkpoint_dir=folder, autosave_on_shutdown=False,
                 torch_threads=1)
    )  # fmt: skip
    await engine.start()
    image = torch.zeros(1, 1, 32, 32)
    results = {}
    try:
        for name, version in (("batched", None), ("pinned", engine.version)):
            gate = asyncio.Semaphore(concurrency)

            async def one(version: int | None = version, gate: asyncio.Semaphore = gate) -> None:
                async with gate:
                    await engine.predict(image, version=version)

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(requests)))
            results[name] = requests / (time.perf_counter() - started)
    finally:
        await engine.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rates = asyncio.run(measure(args.requests, args.concurrency, Path(folder)))
    for name, rate in rates.items():
        print(f"{name}: {rate:.0f} predictions/s at concurrency {args.concurrency}")  # noqa: T201


if __name__ == "__main__":
    main()
