"""The cost per training step of keeping versions in memory, in process: 1000 steps with
LENET_KEEP_VERSIONS=16 against 1, and the clone each step takes on its own.

    .venv/bin/python bench/resident_cost.py [--steps 1000] [--repeats 3]
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import torch

from app.engine import Engine
from app.settings import Settings


async def run(keep: int, steps: int, folder: Path) -> tuple[float, float]:
    """Seconds for `steps` training steps, and for `steps` resident clones alone."""
    engine = Engine(
        Settings(device="cpu", seed=0, keep_versions=keep, checkpoint_dir=folder,
                 autosave_on_shutdown=False, torch_threads=1)
    )  # fmt: skip
    await engine.start()
    images = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(8)
    try:
        for _ in range(20):  # warm-up
            await engine.train_step(images, targets, "cross_entropy", None)
        started = time.perf_counter()
        for _ in range(steps):
            await engine.train_step(images, targets, "cross_entropy", None)
        training = time.perf_counter() - started

        def clones() -> float:
            begun = time.perf_counter()
            for _ in range(steps):
                {name: p.detach().clone() for name, p in engine.model.named_parameters()}
            return time.perf_counter() - begun

        cloning = await engine._run(clones)
    finally:
        await engine.close()
    return training, cloning


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[int, list[float]] = {16: [], 1: []}
    clone_times = []
    for _ in range(args.repeats):
        for keep in (16, 1):
            with tempfile.TemporaryDirectory() as folder:
                training, cloning = asyncio.run(run(keep, args.steps, Path(folder)))
            results[keep].append(training)
            clone_times.append(cloning)
    for keep, times in results.items():
        per_step = statistics.median(times) / args.steps * 1e6
        print(f"keep {keep:2d}: {args.steps} steps in {statistics.median(times):.3f} s "  # noqa: T201
              f"(median of {args.repeats}), {per_step:.1f} us per step")  # fmt: skip
    clone = statistics.median(clone_times) / args.steps * 1e6
    print(f"the resident clone alone: {clone:.1f} us per step")  # noqa: T201


if __name__ == "__main__":
    main()
