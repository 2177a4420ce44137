"""The event loop's background tasks (the batcher, the publisher, the follower): one way to
stop one."""

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: "asyncio.Task[Any] | None") -> None:
    """Cancel `task`, when there is one, and wait until it has finished; the CancelledError it
    ends with stays here."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
