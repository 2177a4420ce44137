"""Dynamic batching of predictions.

Requests that arrive while the model is busy are gathered and pushed through one forward pass.
There is no fixed wait: a lone request is run at once, and batches form by themselves under load,
because requests queue up while the previous batch is computing. The optional short wait
(`max_wait_s`) only applies when more predictions are already being read off the network, so it
never delays a request that has nobody to wait for.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from app.tasks import cancel_and_wait

ResultT = TypeVar("ResultT")

# Told after each batch: the images in it, how long each request waited in the queue, and how
# long the batch's forward pass took (seconds).
BatchObserver = Callable[[int, list[float], float], None]
# Runs a list of image batches as one forward pass; answers one result per batch, in order.
BatchRunner = Callable[[list[torch.Tensor]], Awaitable[list[ResultT]]]


@dataclass
class _Pending(Generic[ResultT]):
    images: torch.Tensor
    future: asyncio.Future[ResultT] = field(repr=False)
    enqueued: float = 0.0


class PredictionBatcher(Generic[ResultT]):
    """Gathers concurrent prediction requests into batches of at most `max_images` images."""

    def __init__(
        self,
        run_batch: BatchRunner[ResultT],
        max_images: int,
        max_wait_s: float,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_images = max_images
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[ResultT]] = asyncio.Queue()
        self._arriving = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task that forms and runs batches."""
        self._task = asyncio.create_task(self._loop(), name="lenet-batcher")

    async def stop(self) -> None:
        """Stop the background task; queued and in-flight requests get a CancelledError."""
        await cancel_and_wait(self._task)
        self._task = None
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one being computed)."""
        return self._queue.qsize()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a prediction request as being read, so a forming batch may wait for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def submit(self, images: torch.Tensor) -> ResultT:
        """Queue `images` (N, 1, 32, 32) and wait for their result."""
        if self._task is None:
            raise RuntimeError("batcher is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds, which would
        # round every short wait to zero.
        self._queue.put_nowait(_Pending(images, future, time.perf_counter()))
        return await future

    async def _gather(self) -> list[_Pending[ResultT]]:
        first = await self._queue.get()
        batch, count = [first], first.images.shape[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while count < self._max_images:
            if self._queue.empty():
                # Wait only for requests already on their way; otherwise run what we have.
                remaining = deadline - loop.time()
                if self._arriving == 0 or remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                nxt = self._queue.get_nowait()
            if count + nxt.images.shape[0] > self._max_images:
                # Too big to join: it leads the next batch instead.
                self._requeue_front(nxt)
                break
            batch.append(nxt)
            count += nxt.images.shape[0]
        return batch

    def _requeue_front(self, item: _Pending[ResultT]) -> None:
        rest = []
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        self._queue.put_nowait(item)
        for other in rest:
            self._queue.put_nowait(other)

    async def _loop(self) -> None:
        while True:
            batch = await self._gather()
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            started = time.perf_counter()
            try:
                results = await self._run_batch([item.images for item in live])
            except asyncio.CancelledError:
                # Stopped mid-batch: its waiters must not hang on futures nobody will resolve.
                for item in live:
                    item.future.cancel()
                raise
            except Exception as error:  # noqa: BLE001 - each waiter gets the error
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            if self._on_batch is not None:
                waits = [started - item.enqueued for item in live]
                computed = time.perf_counter() - started
                self._on_batch(sum(item.images.shape[0] for item in live), waits, computed)
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
