"""PredictionBatcher: how requests are gathered into forward passes, and how answers go back."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from app.batching import PredictionBatcher

# A bound on every wait in these tests, so that a broken batcher fails instead of hanging; no
# test asserts on speed.
BOUND_S = 30


def images(n: int, value: float) -> torch.Tensor:
    """`n` images (n, 1, 32, 32) filled with `value`, so each request is recognisable."""
    return torch.full((n, 1, 32, 32), value)


class Recorder:
    """A batch runner that records each batch, can be held, and answers with a version."""

    def __init__(self) -> None:
        self.batches: list[list[torch.Tensor]] = []
        self.version = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self, batch: list[torch.Tensor]) -> list[tuple[int, list[float]]]:
        self.batches.append(batch)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        # One forward pass computes the whole batch from one version of the weights.
        self.version += 1
        whole = torch.cat(batch)
        answers, start = [], 0
        for part in batch:
            end = start + part.shape[0]
            answers.append((self.version, whole[start:end, 0, 0, 0].tolist()))
            start = end
        return answers

    def sizes(self) -> list[int]:
        """Images in each batch run so far."""
        return [sum(part.shape[0] for part in batch) for batch in self.batches]


def run(
    test: Callable[[PredictionBatcher[Any], Recorder], Awaitable[None]],
    max_images: int = 64,
    max_wait_s: float = 0.0,
) -> None:
    """Run `test` against a started batcher, and stop it afterwards."""

    async def main() -> None:
        recorder = Recorder()
        batcher: PredictionBatcher[Any] = PredictionBatcher(recorder, max_images, max_wait_s)
        batcher.start()
        try:
            await asyncio.wait_for(test(batcher, recorder), BOUND_S)
        finally:
            await batcher.stop()

    asyncio.run(main())


async def wait_until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until `condition` holds."""
    while not condition():
        await asyncio.sleep(0.001)


def test_a_lone_request_runs_at_once_without_waiting_for_company() -> None:
    async def test(batcher: PredictionBatcher[Any], recorder: Recorder) -> None:
        # The wait is an hour, but nobody else is arriving, so the batch must not wait for it.
        version, values = await batcher.submit(images(2, 7.0))
        assert (version, values) == (1, [7.0, 7.0])
        assert recorder.sizes() == [2]

    run(test, max_wait_s=3600)


def test_requests_that_queue_while_the_model_is_busy_share_one_forward_pass() -> None:
    async def test(batcher: PredictionBatcher[Any], recorder: Recorder) -> None:
        recorder.gate = asyncio.Event()
        first = asyncio.create_task(batcher.submit(images(1, 0.0)))
        await recorder.started.wait()  # the first batch is computing, alone
        rest = [asyncio.create_task(batcher.submit(images(1, float(i)))) for i in range(1, 6)]
        await wait_until(lambda: batcher.queued == 5)
        recorder.gate.set()
        answers = await asyncio.gather(first, *rest)
        assert recorder.sizes() == [1, 5]
        assert answers[0] == (1, [0.0])
        # Each waiter gets its own rows, all from the second forward pass's version.
        assert answers[1:] == [(2, [float(i)]) for i in range(1, 6)]

    run(test)


def test_a_batch_never_exceeds_max_images_and_an_oversized_request_leads_the_next() -> None:
    async def test(batcher: PredictionBatcher[Any], recorder: Recorder) -> None:
        recorder.gate = asyncio.Event()
        first = asyncio.create_task(batcher.submit(images(1, 0.0)))
        await recorder.started.wait()
        sizes = [2, 1, 3, 4, 1]
        tasks = [
            asyncio.create_task(batcher.submit(images(n, float(i + 1))))
            for i, n in enumerate(sizes)
        ]
        await wait_until(lambda: batcher.queued == len(sizes))
        recorder.gate.set()
        answers = await asyncio.gather(first, *tasks)
        # Greedy in arrival order, at most 4 images a pass; [3] does not fit after [2, 1].
        assert recorder.sizes() == [1, 3, 3, 4, 1]
        for (_, values), n, i in zip(answers[1:], sizes, range(1, 6), strict=True):
            assert values == [float(i)] * n
        assert [version for version, _ in answers] == [1, 2, 2, 3, 4, 5]

    run(test, max_images=4)


def test_a_forming_batch_waits_for_a_request_that_is_still_being_read() -> None:
    async def test(batcher: PredictionBatcher[Any], recorder: Recorder) -> None:
        reading = asyncio.Event()

        async def slow_reader() -> Any:
            with batcher.arriving():
                reading.set()
                await asyncio.sleep(0.05)  # its body is still coming in
                request = images(1, 2.0)
            return await batcher.submit(request)

        second = asyncio.create_task(slow_reader())
        await reading.wait()
        first = await batcher.submit(images(1, 1.0))
        assert first == (1, [1.0])
        assert await second == (1, [2.0])
        assert recorder.sizes() == [2]

    run(test, max_wait_s=BOUND_S)


def test_without_a_wait_a_request_still_being_read_is_not_waited_for() -> None:
    async def test(batcher: PredictionBatcher[Any], recorder: Recorder) -> None:
        with batcher.arriving():
            assert await batcher.submit(images(1, 1.0)) == (1, [1.0])
        assert recorder.sizes() == [1]

    run(test, max_wait_s=0.0)


def test_a_failed_forward_pass_reaches_every_waiter_and_the_next_batch_still_runs() -> None:
    async def test(batcher: PredictionBatcher[Any], recorder: Recorder) -> None:
        recorder.gate = asyncio.Event()
        first = asyncio.create_task(batcher.submit(images(1, 0.0)))
        await recorder.started.wait()
        recorder.error = RuntimeError("device lost")
        failing = [asyncio.create_task(batcher.submit(images(1, 1.0))) for _ in range(3)]
        await wait_until(lambda: batcher.queued == 3)
        recorder.gate.set()
        results = await asyncio.gather(first, *failing, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and str(r) == "device lost" for r in results)
        assert recorder.sizes() == [1, 3]
        recorder.error = None
        assert await batcher.submit(images(1, 5.0)) == (1, [5.0])

    run(test)


def test_a_cancelled_waiter_does_not_stop_its_batch() -> None:
    async def test(batcher: PredictionBatcher[Any], recorder: Recorder) -> None:
        recorder.gate = asyncio.Event()
        first = asyncio.create_task(batcher.submit(images(1, 0.0)))
        await recorder.started.wait()
        gone = asyncio.create_task(batcher.submit(images(1, 1.0)))
        kept = asyncio.create_task(batcher.submit(images(1, 2.0)))
        await wait_until(lambda: batcher.queued == 2)
        gone.cancel()  # the client went away while queued
        recorder.gate.set()
        assert await first == (1, [0.0])
        assert await kept == (2, [2.0])
        assert recorder.sizes() == [1, 1]

    run(test)


def test_stop_cancels_the_requests_still_queued() -> None:
    async def main() -> None:
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        batcher: PredictionBatcher[Any] = PredictionBatcher(recorder, 8, 0.0)
        batcher.start()
        running = asyncio.create_task(batcher.submit(images(1, 0.0)))
        await recorder.started.wait()
        queued = asyncio.create_task(batcher.submit(images(1, 1.0)))
        await wait_until(lambda: batcher.queued == 1)
        await asyncio.wait_for(batcher.stop(), BOUND_S)
        for task in (running, queued):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, BOUND_S)

    asyncio.run(main())


def test_submit_before_start_is_an_error() -> None:
    async def main() -> None:
        batcher: PredictionBatcher[Any] = PredictionBatcher(Recorder(), 8, 0.0)
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(images(1, 0.0))

    asyncio.run(main())
