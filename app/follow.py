"""The two background tasks of a cluster: a trainer's `Publisher` and a predictor's `Follower`.

Both run on the event loop and keep the loop free: the weights copy is taken on the engine's
torch thread (`Engine.publication`), serialising, hashing and file I/O run in a worker thread
(`asyncio.to_thread`), and the switch to a new version happens on the torch thread again
(`Engine.adopt_published`), between two batches. The store's layout is `app.store`'s.
"""

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from app.errors import InvalidInput
from app.store import StoreCorrupt, StoredVersion, VersionStore
from app.tasks import cancel_and_wait
from app.tensors import save_weights

if TYPE_CHECKING:
    from app.engine import Engine

logger = logging.getLogger("lenet.follow")


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Publisher:
    """Publishes the trainer's newest version: at start-up, at most every `interval_s` while the
    weights change, and at once after every checkpoint (`request`)."""

    def __init__(self, engine: "Engine", store: VersionStore, interval_s: float) -> None:
        self.engine = engine
        self.store = store
        self.interval_s = interval_s
        self.published: int | None = None
        self._failing = False
        self._requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start publishing in the background (the first publication comes at once)."""
        self._requested = asyncio.Event()
        self._requested.set()
        self._task = asyncio.create_task(self._loop(), name="lenet-publisher")

    def request(self) -> None:
        """Publish the newest version now, without waiting for the interval (on the loop)."""
        self._requested.set()

    async def stop(self) -> None:
        """Stop the background task, then publish what is newest one last time."""
        await cancel_and_wait(self._task)
        self._task = None
        await self.publish_newest()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = float("-inf")
        while True:
            while not self._requested.is_set() and self.engine.current_version == self.published:
                await _first_of(self._requested, self.engine.changes())
            if not self._requested.is_set():  # a change: at most one publication per interval
                remaining = last + self.interval_s - loop.time()
                if remaining > 0:  # a checkpoint (`request`) cuts the wait short
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._requested.wait(), remaining)
            self._requested.clear()
            last = loop.time()
            await self.publish_newest()

    async def publish_newest(self) -> None:
        """Publish the newest version if it is not published yet; a failing store is logged and
        tried again at the next change or interval (the trainer keeps serving)."""
        try:
            entry, tensors = await self.engine.publication()
        except Exception:  # noqa: BLE001 - not ready (shutting down): nothing to publish
            return
        if entry.version == self.published:
            return
        latest = self.engine.store_latest
        if self.published is None and latest is not None and entry.version <= latest:
            # A trainer restarted at an older checkpoint's version: the store's pointer must not
            # go back (its own next versions continue past the store's newest anyway).
            self.published = entry.version
            return
        metadata = {"version": str(entry.version), "step": str(entry.step)}

        def write() -> None:
            data = save_weights(tensors, metadata)
            self.store.publish(
                entry.version, entry.step, entry.created.isoformat(), data, time.time()
            )

        try:
            await asyncio.to_thread(write)
        except OSError as error:
            if not self._failing:
                logger.warning(
                    "could not publish version %d to %s: %s; trying again at each interval",
                    entry.version,
                    self.store.root,
                    error,
                )
            self._failing = True
            return
        self._failing = False
        self.published = entry.version
        self.engine.store_latest = entry.version


class Follower:
    """Polls the store every `interval_s`, loads a newer version beside the served one, checks
    it and has the engine switch to it; never goes back; skips a version that fails its check."""

    def __init__(self, engine: "Engine", store: VersionStore, interval_s: float) -> None:
        self.engine = engine
        self.store = store
        self.interval_s = interval_s
        self.skipped: set[int] = set()
        self._newer_since: float | None = None  # when the oldest newer version seen was published
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start following in the background (the first look comes at once)."""
        self._task = asyncio.create_task(self._loop(), name="lenet-follower")

    async def stop(self) -> None:
        """Stop the background task."""
        await cancel_and_wait(self._task)
        self._task = None

    @property
    def lag_ms(self) -> float:
        """How long ago a version newer than the served one was published (0 when current)."""
        if self._newer_since is None:
            return 0.0
        return max(0.0, (time.time() - self._newer_since) * 1000)

    async def _loop(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval_s)

    async def poll(self) -> None:
        """One look at the store: switch to its newest version if it is newer and sound."""
        try:
            record = await asyncio.to_thread(self.store.read_latest)
        except (OSError, StoreCorrupt) as error:
            self._warn_once(f"cannot read the store's newest version: {error}")
            return
        if record is None:
            return
        self.engine.store_latest = max(self.engine.store_latest or -1, record.version)
        if record.version <= self.engine.current_version:
            self._failing = False
            self._newer_since = None
            return
        if self._newer_since is None:
            self._newer_since = record.published
        if record.version in self.skipped:
            return
        await self._load(record)

    async def _load(self, record: StoredVersion) -> None:
        try:
            data = await asyncio.to_thread(self.store.read_weights, record)
        except FileNotFoundError:
            return  # pruned, or not there yet on a lagging volume: the next poll looks again
        except OSError as error:
            self._warn_once(f"cannot read version {record.version}: {error}")
            return
        except StoreCorrupt as error:
            self._skip(record, str(error))
            return
        try:
            await self.engine.adopt_published(data, record)
        except InvalidInput as error:
            self._skip(record, error.detail)
            return
        self._failing = False
        if self.engine.current_version >= (self.engine.store_latest or -1):
            self._newer_since = None

    def _skip(self, record: StoredVersion, why: str) -> None:
        if len(self.skipped) > 4096:
            self.skipped.clear()  # bounded; a skipped version is never retried for long anyway
        self.skipped.add(record.version)
        logger.warning(
            "skipping version %d from the store: %s; still serving version %d",
            record.version,
            why,
            self.engine.current_version,
        )

    def _warn_once(self, message: str) -> None:
        if not self._failing:
            logger.warning("%s; still serving version %d", message, self.engine.current_version)
        self._failing = True
