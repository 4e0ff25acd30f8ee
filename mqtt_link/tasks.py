"""Stopping the tasks a resource owns, reliably."""

from __future__ import annotations

import asyncio

# How long to wait for a cancelled task before cancelling it again.
_RECANCEL_S = 0.5


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has finished.

    One cancel is not always enough on Python 3.11: `asyncio.wait_for` (used inside aiomqtt and
    the standard library) swallows a cancellation that arrives just as its inner future
    completes, and the task carries on. So cancel again until the task is done.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_S)
    if not task.cancelled() and task.exception() is not None:
        # Surface a crash that happened before the cancel, rather than hide it.
        raise task.exception()  # type: ignore[misc]
